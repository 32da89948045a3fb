"""``email-router state show|reset`` against a real SQLite file (and one run against Redis)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from router.cli import main
from router.models import LedgerState
from router.state.base import StateStore
from router.state.keys import Keys
from router.state.sqlite import SqliteStore
from tests.contract.state_helpers import delete_prefix

CONFIG = """<Configuration>
  <Deployment Name="crm"><Adapter>memory</Adapter><CrmServerUrl>https://c.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="sales">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
  </ProviderConfiguration>
  <ProviderConfiguration Name="idle">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
  </ProviderConfiguration>
</Configuration>"""


def fill(store: StateStore, *, keep_lease: bool = False) -> None:
    lease = store.acquire_lease("sales", "host-a:1:2", 60)
    assert lease is not None
    store.set_cursor(lease, {"uidvalidity": 7, "uid": 42})
    store.set_provider_state(lease, {"uidnext": 43})
    if not keep_lease:
        store.release_lease(lease)
    store.stage("sales", "7:41", b"raw")
    store.stage("sales", "7:42", b"raw")
    store.transition("sales", "7:41", [LedgerState.STAGED], LedgerState.DONE)
    store.record_poll("sales", processed=2)
    store.record_poll("retired", error="ProviderAuthError: refused")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[list[str], Path]:
    config = tmp_path / "router.xml"
    config.write_text(CONFIG)
    db = tmp_path / "state.db"
    return ["--config", str(config), "--state", f"sqlite:///{db}"], db


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show_prints_cursor_counters_lease_and_ledger_counts(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    store = SqliteStore(db)
    fill(store, keep_lease=True)
    store.close()
    code, out, _ = run(["state", "show", "sales", *opts], capsys)
    assert code == 0
    assert out.startswith("sales\n")
    assert "held by host-a:1:2 (token 1" in out
    assert '{"uidvalidity":7,"uid":42}' in out and '{"uidnext":43}' in out
    assert "processed:      2" in out
    assert "ledger:         done=1 staged=1" in out


def test_show_all_lists_configured_and_stored_instances_as_json(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    store = SqliteStore(db)
    fill(store)
    store.close()
    code, out, _ = run(["state", "show", "--all", "--json", *opts], capsys)
    assert code == 0
    snaps = {s["instance"]: s for s in json.loads(out)}
    assert list(snaps) == ["sales", "idle", "retired"]
    assert snaps["sales"]["cursor"] == {"uidvalidity": 7, "uid": 42}
    assert snaps["sales"]["ledger"] == {"done": 1, "staged": 1}
    assert snaps["sales"]["lease"] is None
    assert snaps["idle"]["cursor"] is None and snaps["idle"]["ledger"] == {}
    assert snaps["retired"]["counters"]["last_error"] == "ProviderAuthError: refused"


def test_show_of_an_unknown_instance_is_a_usage_error(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    SqliteStore(db).close()  # a store that exists (a missing one is an unreachable store)
    code, _, err = run(["state", "show", "nobody", *opts], capsys)
    assert code == 2 and "nobody" in err


def test_reset_without_yes_changes_nothing(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    store = SqliteStore(db)
    fill(store)
    code, _, err = run(["state", "reset", "sales", *opts], capsys)
    assert code == 2 and "--yes" in err
    assert store.get_cursor("sales") == {"uidvalidity": 7, "uid": 42}
    store.close()


def test_reset_forgets_cursor_and_provider_state_but_keeps_the_ledger(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    store = SqliteStore(db)
    fill(store)
    code, _, _ = run(["state", "reset", "sales", "--yes", *opts], capsys)
    assert code == 0
    assert store.get_cursor("sales") is None and store.get_provider_state("sales") == {}
    assert store.count_entries("sales") == {LedgerState.STAGED: 1, LedgerState.DONE: 1}
    assert store.get_lease("sales") is None
    store.close()


def test_reset_refuses_while_a_worker_holds_the_lease(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    store = SqliteStore(db)
    fill(store, keep_lease=True)
    code, out, _ = run(["state", "reset", "sales", "--yes", *opts], capsys)
    assert code == 1 and "host-a:1:2" in out
    assert store.get_cursor("sales") == {"uidvalidity": 7, "uid": 42}
    store.close()


@pytest.mark.redis
def test_state_option_points_show_and_reset_at_redis(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.state.redis import RedisStore

    prefix = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("ROUTER_KEY_PREFIX", prefix)
    config = tmp_path / "router.xml"
    config.write_text(CONFIG)
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        fill(store)
        opts = ["--config", str(config), "--state", redis_url]
        code, out, _ = run(["state", "show", "sales", "--json", *opts], capsys)
        assert code == 0 and json.loads(out)[0]["provider_state"] == {"uidnext": 43}
        assert run(["state", "reset", "sales", "--yes", *opts], capsys)[0] == 0
        assert store.get_cursor("sales") is None
    finally:
        store.close()
        delete_prefix(redis_url, Keys(prefix))


def test_show_reports_a_damaged_cursor_instead_of_failing(
    setup: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    opts, db = setup
    store = SqliteStore(db)
    fill(store)
    store._conn().execute("UPDATE cursors SET value = '{broken' WHERE instance = 'sales'")
    store.close()
    code, out, _ = run(["state", "show", "sales", *opts], capsys)
    assert code == 0
    assert "cursor:         <damaged: cursor of sales" in out
    assert '{"uidnext":43}' in out
