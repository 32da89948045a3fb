"""The console's gate: no page without signing in, no action without the CSRF token, no start
without credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.console.auth import FAILURE_WINDOW, MAX_FAILURES, Throttle, credentials_match
from router.console.settings import ConsoleSettings, Credentials, credentials
from router.errors import ConfigError
from tests.unit.console_world import PASSWORD, USER, build, sign_in, token


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_TEST_MAIL_SECRET", "mail-pw-7f3a9")
    monkeypatch.setenv("CONSOLE_TEST_CRM_SECRET", "crm-secret-b81c")


def test_a_page_without_a_session_redirects_to_the_sign_in_form(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    answer = app.test_client().get("/instances/inbox")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/login?next=/instances/inbox"


def test_an_action_without_a_session_is_refused(tmp_path: Path) -> None:
    app, hub = build(tmp_path)
    client = app.test_client()
    csrf = token(client)  # a token of an anonymous session: CSRF passes, the session does not
    answer = client.post("/instances/inbox/pause", data={"csrf_token": csrf})
    assert answer.status_code == 401
    assert hub.store.get_lease("inbox") is None


def test_a_wrong_password_is_refused_and_audited(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    client = app.test_client()
    answer = client.post(
        "/login", data={"csrf_token": token(client), "username": USER, "password": "guess"}
    )
    assert answer.status_code == 401
    assert "wrong user name or password" in answer.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still not signed in
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"action": "login", "outcome": "refused"' in audit
    assert "guess" not in audit


def test_the_right_credentials_open_the_instances_page(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    client = app.test_client()
    sign_in(client)
    page = client.get("/").get_data(as_text=True)
    assert 'data-instance="inbox"' in page and 'data-instance="outbox"' in page


def test_a_post_without_the_csrf_token_is_refused_with_403(tmp_path: Path) -> None:
    app, hub = build(tmp_path)
    client = app.test_client()
    sign_in(client)
    assert client.post("/instances/inbox/pause").status_code == 403
    assert client.post("/instances/inbox/pause", data={"csrf_token": "x"}).status_code == 403
    assert hub.store.get_lease("inbox") is None


def test_the_sign_in_form_itself_needs_the_csrf_token(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    answer = app.test_client().post("/login", data={"username": USER, "password": PASSWORD})
    assert answer.status_code == 403


def test_signing_in_starts_a_new_csrf_token(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    client = app.test_client()
    before = token(client)
    assert sign_in(client) != before


def test_sign_in_redirects_only_to_a_path_of_the_console(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    client = app.test_client()
    data = {"csrf_token": token(client), "username": USER, "password": PASSWORD}
    answer = client.post("/login", data={**data, "next": "//evil.example/x"})
    assert answer.headers["Location"] == "/"


def test_pages_forbid_scripts_and_framing(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    headers = app.test_client().get("/login").headers
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none' covers it
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"


def test_guessing_passwords_is_stopped_for_a_minute(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    client = app.test_client()
    data = {"csrf_token": token(client), "username": USER}
    answers = [client.post("/login", data={**data, "password": f"guess{n}"}) for n in range(10)]
    assert {a.status_code for a in answers} == {401}
    # Then even the right password waits: the address is refused before any check
    assert client.post("/login", data={**data, "password": PASSWORD}).status_code == 429
    assert '"outcome": "refused: too many attempts"' in (tmp_path / "audit.jsonl").read_text()


def test_the_throttle_forgets_failures_older_than_its_window() -> None:
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        throttle.failed("10.0.0.1")
    assert throttle.blocked("10.0.0.1") and not throttle.blocked("10.0.0.2")
    now[0] = FAILURE_WINDOW + 1
    assert not throttle.blocked("10.0.0.1")


def test_credentials_must_match_in_both_fields() -> None:
    creds = Credentials("ops", "pw")
    assert credentials_match(creds, "ops", "pw")
    assert not credentials_match(creds, "ops", "pw ")
    assert not credentials_match(creds, "Ops", "pw")
    assert not credentials_match(creds, "", "")
    assert "pw" not in repr(creds)


def test_the_console_refuses_to_start_without_a_user_or_a_password(tmp_path: Path) -> None:
    for settings in (
        ConsoleSettings(user="ops"),
        ConsoleSettings(password="pw"),  # type: ignore[arg-type]
        ConsoleSettings(user=" ", password="pw"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError, match="refusing to start the console"):
            credentials(settings)


def test_the_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    creds = credentials(ConsoleSettings(user="ops", password_file=secret))
    assert creds.password == "from-a-file"
    with pytest.raises(ConfigError, match="PASSWORD_FILE"):
        credentials(ConsoleSettings(user="ops", password_file=tmp_path / "missing"))
