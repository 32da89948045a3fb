"""The ``email-router`` commands as an operator meets them: subcommands, exit codes, messages.

Exit codes: 0 success, 1 the operation failed (the state store cannot be reached), 2 bad input
(usage, configuration). These tests make the README's table of commands true.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router import quarantine
from router.cli import main
from router.errors import StateUnavailable
from router.models import LedgerEntry, LedgerState
from router.quarantine import QuarantinedItem
from router.report import CycleReport
from router.state.factory import open_store
from router.state.sqlite import SqliteStore

CONFIG = """<Configuration>
  <Deployment Name="crm"><Adapter>memory</Adapter><CrmServerUrl>https://c.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="sales">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
  </ProviderConfiguration>
</Configuration>"""

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"

#: Every command that reads or writes the state store, with its arguments.
STORE_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["state", "show", "--all"],
    ["state", "show", "sales"],
    ["state", "reset", "sales", "--yes"],
    ["quarantine", "list"],
    ["quarantine", "show", "sales", "k1"],
    ["quarantine", "replay", "sales", "k1"],
    ["quarantine", "replay", "--all"],
    ["quarantine", "drop", "sales", "k1", "--yes"],
    ["poll", "sales"],
]

READ_ONLY = [c for c in STORE_COMMANDS if c[0] == "status" or c[1:2] in (["show"], ["list"])]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(CONFIG)
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_every_store_command_exits_1_naming_the_store_when_redis_cannot_be_reached(
    command: list[str], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*command, "--config", str(config), "--state", UNREACHABLE_REDIS], capsys)

    assert code == 1
    assert "state store" in err and "--state" in err and "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_read_only_command_on_a_missing_sqlite_file_exits_1_and_creates_nothing(
    command: list[str], config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "var" / "lib" / "state.db"

    code, _, err = run([*command, "--config", str(config), "--state", f"sqlite:///{db}"], capsys)

    assert code == 1
    assert f"{db}: no such file" in err and "--state" in err
    assert not db.parent.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["state", "show", "--all"],
        ["quarantine", "list"],
        ["poll", "sales"],
        ["send", "sales"],
        ["test-access"],
        ["validate"],
    ],
    ids=" ".join,
)
def test_a_missing_configuration_exits_2_naming_config_and_router_config(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROUTER_CONFIG", raising=False)

    code, _, err = run(command, capsys)

    assert code == 2
    assert "router.xml" in err and "--config" in err and "ROUTER_CONFIG" in err


def test_quarantine_show_help_lists_only_its_own_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["quarantine", "show", "--help"])

    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "quarantine show" in out and "--config" in out and "--state" in out
    assert "--yes" not in out and "--all" not in out and "replay" not in out


@pytest.mark.parametrize(
    "command",
    [
        ["quarantine", "list", "--yes"],
        ["quarantine", "show", "sales", "k1", "--all"],
        ["quarantine", "drop", "sales", "k1", "--all"],
        ["state", "show", "--yes"],
        ["state", "reset", "sales", "--all"],
        ["quarantine", "undo"],
    ],
    ids=" ".join,
)
def test_an_option_where_it_means_nothing_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(command)

    assert done.value.code == 2
    assert "usage: email-router" in capsys.readouterr().err


def test_a_group_without_its_action_prints_its_own_help_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["state"], capsys)

    assert code == 2
    assert "usage: email-router state" in err and "reset" in err


def test_state_show_all_hides_internal_entries_unless_asked(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    for name in ("sales", "retired", "_outbound", "sales#deliver"):
        store.record_poll(name)
    store.close()
    opts = ["--config", str(config), "--state", f"sqlite:///{db}"]

    _, shown, _ = run(["state", "show", "--all", *opts], capsys)
    _, everything, _ = run(["state", "show", "--all", "--internal", *opts], capsys)

    assert _headings(shown) == ["sales", "retired"]
    assert sorted(_headings(everything)) == ["_outbound", "retired", "sales", "sales#deliver"]


def _headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(" ")]


def test_quarantine_replay_all_prints_a_line_per_message_and_a_summary(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "state.db"
    SqliteStore(db).close()
    items = [_item("k1"), _item("k2")]
    monkeypatch.setattr(quarantine, "list_items", lambda ctx, instance=None: items)
    monkeypatch.setattr(
        quarantine,
        "replay",
        lambda ctx, instance, key: CycleReport(instance, delivered=1 if key == "k1" else 0,
                                               quarantined=0 if key == "k1" else 1),
    )  # fmt: skip

    code, out, _ = run(
        ["quarantine", "replay", "--all", "--config", str(config), "--state", f"sqlite:///{db}"],
        capsys,
    )

    lines = out.splitlines()
    assert code == 1  # one message is still quarantined
    assert lines[0].startswith("[1/2] sales/k1: sales: listed 0, staged 0, delivered 1")
    assert lines[1].startswith("[2/2] sales/k2: sales: listed 0, staged 0, delivered 0")
    assert lines[-1] == "replayed 2 message(s): 1 out of quarantine, 1 still quarantined"


def _item(key: str) -> QuarantinedItem:
    entry = LedgerEntry("sales", key, LedgerState.QUARANTINED, 0.0, reason="bad")
    return QuarantinedItem(entry, has_raw=True, size=3)


def test_status_json_into_a_closed_pipe_prints_no_traceback(config: Path, tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    for n in range(600):  # far more JSON than a pipe buffer holds
        store.record_poll(f"old-{n}")
    store.close()
    command = [sys.executable, "-m", "router.cli", "status", "--json", "--config", str(config)]
    command += ["--state", f"sqlite:///{db}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}

    done = subprocess.run(
        f"{subprocess.list2cmdline(command)} | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip

    assert done.stdout == "[\n"
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.returncode == 1


def test_a_read_only_sqlite_store_reads_what_was_written_and_refuses_to_write(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    writer = SqliteStore(db)
    writer.record_poll("sales", processed=2)
    writer.close()

    reader = SqliteStore(db, create=False)
    try:
        assert reader.get_stats("sales").processed == 2
        with pytest.raises(StateUnavailable, match="readonly"):
            reader.record_poll("sales", processed=1)
    finally:
        reader.close()


def test_a_read_only_sqlite_store_that_does_not_exist_is_unavailable_and_not_created(
    tmp_path: Path,
) -> None:
    db = tmp_path / "var" / "state.db"

    with pytest.raises(StateUnavailable, match="no such file"):
        open_store(f"sqlite:///{db}", create=False)
    assert not (tmp_path / "var").exists()
