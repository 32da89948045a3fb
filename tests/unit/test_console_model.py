"""What the console's pages compute: per-minute counts, the chart, masking, states, audit path."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from router.config import ProviderConfiguration, Secret
from router.console.audit import AuditLog, default_path
from router.console.chart import per_minute_svg
from router.console.model import _shown, _state, masked_settings, per_minute
from router.models import Direction, LedgerEntry, LedgerState
from router.runtime.pause import STOP_MARK
from router.status import InstanceStatus

NOW = 1_800_000_000.0


def entry(state: LedgerState, seconds_ago: float) -> LedgerEntry:
    return LedgerEntry("box", f"k{seconds_ago}", state, NOW - seconds_ago)


def status(**changes: object) -> InstanceStatus:
    fields: dict[str, object] = dict(
        name="box", direction="Incoming", enabled=True, configured=True, last_poll=NOW,
        last_success=NOW - 10, last_error=None, last_error_at=None, processed=1, backlog=0,
        quarantined=0, lease_holder=None,
    )  # fmt: skip
    fields.update(changes)
    return InstanceStatus(**fields)  # type: ignore[arg-type]


def test_messages_are_counted_in_the_minute_they_last_changed_state() -> None:
    entries = [
        entry(LedgerState.DELIVERED, 5),
        entry(LedgerState.DONE, 30),
        entry(LedgerState.QUARANTINED, 65),
        entry(LedgerState.STAGED, 5),  # not handled yet: not counted
        entry(LedgerState.SENT, 3 * 3600),  # older than the window
    ]
    counts = per_minute(entries, NOW, 60)
    assert len(counts) == 60
    assert sum(a for a, _ in counts) == 2 and sum(b for _, b in counts) == 1
    assert counts[-1][0] + counts[-2][0] == 2  # both within the last two minutes


def test_the_chart_draws_one_rectangle_per_non_empty_bar_part() -> None:
    svg = per_minute_svg([(0, 0), (3, 1), (2, 0)])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<rect") == 3
    assert ">3</text>" not in svg and ">4</text>" in svg  # the scale's top is the peak (3 + 1)


def test_an_empty_chart_is_still_a_chart() -> None:
    assert per_minute_svg([(0, 0)] * 10).count("<rect") == 0


def test_secrets_and_secret_parameters_are_masked_in_the_configuration() -> None:
    cfg = ProviderConfiguration(
        name="box",
        provider_class="imap",
        direction=Direction.INCOMING,
        email_server="mail.example.org",
        email_password=Secret(value="hunter2"),
        parameters={"items": [{"name": "ClientSecret", "value": "s3cret"},
                              {"name": "proxy", "value": "http://u:pw@proxy:3128"},
                              {"name": "folder", "value": "INBOX"}]},
    )  # type: ignore[arg-type]  # fmt: skip
    shown = dict(masked_settings(cfg))
    assert shown["EmailPassword"] == "***"
    assert shown["Parameter ClientSecret"] == "***"
    assert shown["Parameter proxy"] == "http://u:***@proxy:3128"
    assert shown["Parameter folder"] == "INBOX"
    assert "hunter2" not in repr(shown) and "s3cret" not in repr(shown)


def test_a_nested_element_is_shown_with_its_secrets_masked_at_any_depth() -> None:
    class Inner(BaseModel):
        client_secret: str
        url: str

    class Outer(BaseModel):
        name: str
        inner: Inner
        api_token: str | None = None

    value = Outer(name="x", inner=Inner(client_secret="s3", url="https://u:pw@h/"), api_token="t")
    shown = _shown(value)
    assert '"client_secret": "***"' in shown and '"api_token": "***"' in shown
    assert "s3" not in shown and ":pw@" not in shown and '"name": "x"' in shown


def test_an_instance_is_paused_while_a_recorded_stop_is_not_lifted() -> None:
    stopped = status(last_error=f"{STOP_MARK}ProviderAuthError: LOGIN refused", last_error_at=NOW)
    assert _state(stopped, config_since=NOW - 100, now=NOW + 1)[0] == "paused"
    # a configuration written after the stop lifts it: then it shows as a plain error
    assert _state(stopped, config_since=NOW + 1, now=NOW + 2)[0] == "error"


def test_the_states_of_an_instance() -> None:
    assert _state(status(), 0, NOW) == ("ok", None)
    assert _state(status(enabled=False), 0, NOW)[0] == "disabled"
    assert _state(status(lease_holder="console-pause@h:1:2"), 0, NOW)[0] == "paused"
    assert _state(status(lease_holder="h:1:2"), 0, NOW)[0] == "ok"  # a cycle runs
    assert _state(status(last_error="boom", last_error_at=NOW), 0, NOW) == ("error", "boom")
    assert _state(status(configured=False), 0, NOW)[0] == "not configured"


def test_the_audit_log_goes_next_to_a_sqlite_state_store_else_to_the_working_directory(
    tmp_path: Path,
) -> None:
    assert default_path("sqlite:////var/lib/er/state.db") == Path("/var/lib/er/console-audit.jsonl")
    assert default_path("redis://localhost:6379/0") == Path.cwd() / "console-audit.jsonl"


def test_the_audit_log_appends_one_json_object_per_line_readable_only_by_its_owner(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path / "a" / "audit.jsonl")
    log.check_writable()
    log.record("ops", "replay", "ok", instance="box", key="1:2")
    log.record(None, "login", "refused", remote="127.0.0.1", key=None)
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    assert [(x["user"], x["action"], x["outcome"]) for x in lines] == [
        ("ops", "replay", "ok"),
        (None, "login", "refused"),
    ]
    assert lines[0]["instance"] == "box" and "key" not in lines[1]
    assert log.path.stat().st_mode & 0o777 == 0o600
