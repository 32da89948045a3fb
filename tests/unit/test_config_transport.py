"""Transport rules of the configuration, through ``email-router validate`` and the loader.

* the CRM is reached over HTTPS only: an ``http://`` ``<CrmServerUrl>`` or ``<Authority>`` is
  refused before anything is sent, and the HTTP layer itself refuses ``http://`` (also after a
  redirect) so a URL that slipped past the loader never carries the bearer token;
* a password (or XOAUTH2 token) never goes in clear text to a remote mail server unless
  ``<AllowCleartextPassword>true</AllowCleartextPassword>`` says so; loopback hosts stay allowed;
* a file readable by everyone that holds inline secrets gets a warning (not an error);
* a ``File=`` secret is read with a bound: ``/dev/urandom``, a FIFO or a huge file is refused fast.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from router.cli import main
from router.config import Deployment, Secret
from router.configcheck import load_config
from router.crm.dataverse import DataverseAdapter
from router.crm.dataverse_auth import TokenSource
from router.crm.dataverse_http import InsecureUrl, WebApi, make_session
from router.errors import ConfigError, CrmAuthError

LOCAL_DEPLOYMENT = """  <Deployment Name="org">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://org.example.com</CrmServerUrl>
  </Deployment>
"""


def write(
    tmp_path: Path, body: str, *, deployment: str = LOCAL_DEPLOYMENT, mode: int = 0o600
) -> Path:
    """A configuration file: ``deployment`` on lines 2-5, then ``body`` from line 6."""
    path = tmp_path / "router.xml"
    path.write_text(f"<Configuration>\n{deployment}{body}</Configuration>\n", encoding="utf-8")
    path.chmod(mode)
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err.splitlines()


def mailbox(kind: str, server: str, security: str, auth: str = "password", extra: str = "") -> str:
    direction = "Outgoing" if kind == "smtp" else "Incoming"
    return f"""  <ProviderConfiguration Name="box">
    <ProviderClass>{kind}</ProviderClass>
    <Direction>{direction}</Direction>
    <EmailServer>{server}</EmailServer>
    <EmailSecurity>{security}</EmailSecurity>
    <EmailAuthMode>{auth}</EmailAuthMode>
    <EmailUser>alice@example.com</EmailUser>
    <EmailPassword>pw</EmailPassword>{extra}
  </ProviderConfiguration>
"""


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_CONFIG", raising=False)


# -- HTTPS for the CRM ----------------------------------------------------------------------


def deployment(url: str, authority: str = "https://login.example.com/tenant") -> str:
    return f"""  <Deployment Name="org">
    <CrmServerUrl>{url}</CrmServerUrl>
    <Authority>{authority}</Authority>
  </Deployment>
"""


@pytest.mark.parametrize("url", ["http://crm.example.com", "HTTP://crm.example.com/"])
def test_an_http_crm_server_url_is_refused_with_its_line(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "", deployment=deployment(url))

    code, err = validate(path, capsys)

    assert code == 2
    assert err == [
        f"{path}:3: <CrmServerUrl>: must be an https:// URL (http:// would send the bearer "
        f"token in clear text): use the organisation's https:// address (got {url!r})"
    ]


def test_an_http_authority_is_refused_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dep = deployment("https://crm.example.com", "http://login.example.com/tenant")
    path = write(tmp_path, "", deployment=dep)

    code, err = validate(path, capsys)

    assert code == 2
    assert err == [
        f"{path}:4: <Authority>: must be an https:// URL (http:// would send the client secret "
        "in clear text): use https://login.microsoftonline.com/<TenantId> or leave <Authority> "
        "out (got 'http://login.example.com/tenant')"
    ]


def test_a_custom_adapter_may_use_its_own_scheme_but_not_http(tmp_path: Path) -> None:
    body = "<Adapter>tests.support.filecrm:FileCrm</Adapter><CrmServerUrl>file:///x</CrmServerUrl>"
    path = write(tmp_path, "", deployment=f'  <Deployment Name="org">{body}</Deployment>\n')

    assert load_config(path).deployments[0].crm_server_url == "file:///x"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 to anything and remembers every request that arrived."""

    seen: list[str]

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def plain_http() -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server on 127.0.0.1 and the list of requests it received."""
    seen: list[str] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_test_access_refuses_an_http_crm_without_sending_anything(
    plain_http: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = plain_http
    path = write(tmp_path, "", deployment=deployment(url, f"{url}/tenant"))

    code = main(["test-access", "--config", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:3: <CrmServerUrl>: must be an https:// URL" in err
    assert f"{path}:4: <Authority>: must be an https:// URL" in err
    assert seen == []


def test_the_adapter_refuses_an_http_url_that_slipped_past_the_loader(
    plain_http: tuple[str, list[str]],
) -> None:
    url, seen = plain_http
    dep = Deployment.model_construct(  # skips the loader's checks, as a buggy caller would
        name="org",
        adapter="dataverse",
        crm_server_url=url,
        authority=f"{url}/tenant",
        client_id="client",
        client_secret=Secret(value="client-secret"),
    )

    with pytest.raises(CrmAuthError, match=r"refusing http://.*https:// URL"):
        DataverseAdapter.from_deployment(dep).who_am_i()

    assert seen == []


class StaticTokens:
    """A token source for the redirect test (no token endpoint involved)."""

    authority, client_id = "https://login.example.com/t", "client"

    def token(self) -> str:
        return "bearer-token-4711"

    def refresh(self, stale: str | None = None) -> str:
        return self.token()


@pytest.fixture
def redirect_to(plain_http: tuple[str, list[str]], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An HTTPS server that redirects every request to the plain HTTP server; (url, CA path)."""
    target, _ = plain_http
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    class Redirect(http.server.BaseHTTPRequestHandler):
        """Redirects to ``target``; OpenID discovery names a token endpoint on ``target``."""

        def do_GET(self) -> None:
            if self.path.endswith("/openid-configuration"):
                endpoint = f"{target}{self.path.split('/v2.0/')[0]}/oauth2/v2.0"
                doc = {"token_endpoint": f"{endpoint}/token", "issuer": "https://issuer.example"}
                doc["authorization_endpoint"] = f"{endpoint}/authorize"
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                body = b""
                self.send_response(302)
                self.send_header("Location", f"{target}{self.path}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", str(ca_path)
    server.shutdown()
    server.server_close()


def test_a_redirect_to_http_is_refused_and_the_token_never_leaves(
    redirect_to: tuple[str, str], plain_http: tuple[str, list[str]]
) -> None:
    url, ca_path = redirect_to
    api = WebApi(f"{url}/api/data/v9.2/", StaticTokens(), make_session(ca_path, 2))  # type: ignore[arg-type]

    with pytest.raises(CrmAuthError, match="refusing http://"):
        api.call("GET", "WhoAmI", "WhoAmI")

    assert plain_http[1] == []


def test_an_http_token_endpoint_from_discovery_never_gets_the_client_secret(
    redirect_to: tuple[str, str], plain_http: tuple[str, list[str]]
) -> None:
    url, ca_path = redirect_to
    secret = lambda: "client-secret-4711"  # noqa: E731
    tokens = TokenSource(f"{url}/tenant", "client", secret, url, make_session(ca_path, 2))

    with pytest.raises(CrmAuthError, match="https"):  # MSAL or the session: either refuses
        tokens.token()

    assert plain_http[1] == []


def test_the_session_refuses_plain_http_before_connecting(
    plain_http: tuple[str, list[str]],
) -> None:
    url, seen = plain_http

    with pytest.raises(InsecureUrl):
        make_session(None, 2).get(url, headers={"Authorization": "Bearer x"})

    assert isinstance(InsecureUrl("x"), requests.RequestException)
    assert seen == []


# -- no password in clear text to a remote host ------------------------------------------------


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp"])
@pytest.mark.parametrize(("auth", "what"), [("password", "password"), ("xoauth2", "token")])
def test_a_cleartext_password_to_a_remote_host_is_refused_naming_the_setting(
    kind: str, auth: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, mailbox(kind, "mail.example.com", "none", auth))

    code, err = validate(path, capsys)

    assert code == 2
    assert err == [
        f"{path}:10: <EmailSecurity>: none would send the {what} in clear text to "
        "mail.example.com, which is not a loopback address: use ssl or starttls, or add "
        "<AllowCleartextPassword>true</AllowCleartextPassword> if the network to the server "
        "is trusted"
    ]


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp"])
def test_allow_cleartext_password_lets_a_remote_cleartext_login_through(
    kind: str, tmp_path: Path
) -> None:
    allow = "\n    <AllowCleartextPassword>true</AllowCleartextPassword>"
    path = write(tmp_path, mailbox(kind, "mail.example.com", "none", extra=allow))

    assert load_config(path).providers[0].allow_cleartext_password is True


@pytest.mark.parametrize("server", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_a_cleartext_password_to_a_loopback_host_stays_allowed(server: str, tmp_path: Path) -> None:
    path = write(tmp_path, mailbox("imap", server, "none"))

    assert load_config(path).providers[0].email_server == server


@pytest.mark.parametrize(("security", "auth"), [("ssl", "password"), ("starttls", "password")])
def test_tls_to_a_remote_host_needs_no_setting(security: str, auth: str, tmp_path: Path) -> None:
    path = write(tmp_path, mailbox("imap", "mail.example.com", security, auth))

    assert load_config(path).providers[0].email_security == security


def test_a_relay_without_auth_may_be_reached_without_tls(tmp_path: Path) -> None:
    path = write(tmp_path, mailbox("smtp", "relay.example.com", "none", "none"))

    assert load_config(path).providers[0].email_auth_mode == "none"


# -- files readable by everyone that hold inline secrets --------------------------------------


INLINE_SECRETS = """  <Deployment Name="org">
    <CrmServerUrl>https://crm.example.com</CrmServerUrl>
    <ClientId>client</ClientId>
    <ClientSecret>TOP-SECRET-CLIENT-4711</ClientSecret>
  </Deployment>
"""


def test_an_inline_secret_in_a_world_readable_file_is_a_warning_naming_file_and_element(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, mailbox("imap", "mail.example.com", "ssl"), deployment=INLINE_SECRETS)
    path.chmod(0o644)

    code = main(["validate", str(path)])

    out = capsys.readouterr()
    assert code == 0
    fix = f'chmod 600 {path}, or give the secret as Env="VAR" or File="/path" instead'
    assert out.err.splitlines() == [
        f"{path}:5: <ClientSecret>: warning: inline secret in a file readable by everyone "
        f"(mode 0644): {fix}",
        f"{path}:14: <EmailPassword>: warning: inline secret in a file readable by everyone "
        f"(mode 0644): {fix}",
    ]
    assert "OK, 1 instance(s)" in out.out
    assert "TOP-SECRET" not in out.out + out.err


def test_a_state_store_url_with_a_password_counts_as_an_inline_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = "<SystemConfiguration><StateStore>redis://:pw4711@redis:6379/0</StateStore>"
    path = write(tmp_path, f"  {system}</SystemConfiguration>\n", mode=0o604)

    code, err = validate(path, capsys)

    assert code == 0
    assert [line.split(": warning: ")[0] for line in err] == [f"{path}:6: <StateStore>"]
    assert "pw4711" not in "\n".join(err)


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_file_not_readable_by_everyone_gets_no_warning(
    mode: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, mailbox("imap", "mail.example.com", "ssl"), mode=mode)

    code, err = validate(path, capsys)

    assert (code, err) == (0, [])


def test_secrets_from_env_or_file_get_no_warning_in_a_world_readable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_TEST_BOX_PASSWORD", "pw")
    body = mailbox("imap", "mail.example.com", "ssl").replace(
        "<EmailPassword>pw</EmailPassword>", '<EmailPassword Env="ROUTER_TEST_BOX_PASSWORD"/>'
    )
    path = write(tmp_path, body, mode=0o644)

    code, err = validate(path, capsys)

    assert (code, err) == (0, [])


def test_loading_a_world_readable_file_with_inline_secrets_logs_the_warning_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `email-router run`, the Celery worker and beat all start by calling load_config
    path = write(tmp_path, mailbox("imap", "mail.example.com", "ssl"), mode=0o644)

    with caplog.at_level(logging.WARNING, logger="router.config"):
        load_config(path)

    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:13: <EmailPassword>: warning: inline secret in a file readable by everyone "
        f'(mode 0644): chmod 600 {path}, or give the secret as Env="VAR" or File="/path" instead'
    ]


def test_email_router_run_warns_about_the_world_readable_file_on_stderr(tmp_path: Path) -> None:
    # a real process: the warning must reach the handler `run` installs, not pytest's
    body = """  <ProviderConfiguration Name="in">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
  </ProviderConfiguration>
  <SystemConfiguration><StateStore>redis://:pw4711@127.0.0.1:1/0</StateStore>
  </SystemConfiguration>
"""
    path = write(tmp_path, body, mode=0o644)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    command = ["run", "--config", str(path), "--state", state, "--duration", "0.1"]

    done = subprocess.run(
        [sys.executable, "-m", "router.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
    )

    assert done.returncode == 0, done.stderr
    assert f"{path}:10: <StateStore>: warning: inline secret in a file readable by everyone" in (
        done.stderr
    )
    assert "pw4711" not in done.stderr + done.stdout


# -- secret files are read with a bound -----------------------------------------------------------


def secret_file_config(tmp_path: Path, secret: str) -> Path:
    body = mailbox("imap", "mail.example.com", "ssl").replace(
        "<EmailPassword>pw</EmailPassword>", f'<EmailPassword File="{secret}"/>'
    )
    return write(tmp_path, body)


def test_dev_urandom_as_a_secret_file_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = secret_file_config(tmp_path, "/dev/urandom")

    started = time.monotonic()
    code, err = validate(path, capsys)

    assert time.monotonic() - started < 5
    assert code == 2
    assert err == [
        f"{path}:13: <EmailPassword>: secret file '/dev/urandom' is not a regular file: "
        "give a file that holds only the secret"
    ]


def test_a_fifo_as_a_secret_file_is_refused_without_blocking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    path = secret_file_config(tmp_path, str(fifo))

    code, err = validate(path, capsys)

    assert code == 2
    assert err == [f"{path}:13: <EmailPassword>: secret file '{fifo}' is not a regular file: "
                   "give a file that holds only the secret"]  # fmt: skip


def test_a_secret_file_larger_than_64_kib_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big-secret"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    path = secret_file_config(tmp_path, str(big))

    code, err = validate(path, capsys)

    assert code == 2
    assert err == [
        f"{path}:13: <EmailPassword>: secret file '{big}' is larger than 64 KiB: "
        "give a file that holds only the secret"
    ]


def test_a_secret_file_of_exactly_64_kib_is_read_at_runtime(tmp_path: Path) -> None:
    exact = tmp_path / "secret"
    exact.write_bytes(b"y" * (64 * 1024))

    assert Secret(file=str(exact)).get_secret_value() == "y" * (64 * 1024)


def test_reading_dev_urandom_at_runtime_is_a_config_error_not_a_memory_error() -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        Secret(file="/dev/urandom").get_secret_value()
