"""``email-router status``: rows read from the state store, as a table and as JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from router.cli import main
from router.cli.status import InstanceStatus, ago, collect_status, format_table, to_json
from router.config import Configuration, Deployment, ProviderConfiguration
from router.ledger import OUTBOUND
from router.models import Direction, LedgerState
from router.state.memory import MemoryStore
from router.state.sqlite import SqliteStore


def configuration() -> Configuration:
    dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
    inbound = ProviderConfiguration(
        name="sales", provider_class="memory", direction=Direction.INCOMING, deployment="crm"
    )
    outbound = ProviderConfiguration(
        name="relay",
        provider_class="memory-out",
        direction=Direction.OUTGOING,
        deployment="crm",
        enabled=False,
    )
    return Configuration(deployments=(dep,), providers=(inbound, outbound))


def busy_store() -> MemoryStore:
    store = MemoryStore()
    # sales: 2 staged, 1 quarantined, 1 done, a cycle that failed, a lease held
    store.stage("sales", "1", b"raw")
    store.stage("sales", "2", b"raw")
    store.create_entry("sales", "3", LedgerState.QUARANTINED, reason="unparseable")
    store.create_entry("sales", "4", LedgerState.DONE)
    store.record_poll("sales", processed=5)
    store.record_poll("sales", error="ProviderUnavailable: connection refused")
    store.acquire_lease("sales", "host-a:123:1", 60)
    # relay: claimed + retry count as backlog, submitted/sent do not; outbound claims live in
    # the shared "_outbound" namespace and name their instance
    mine, other = {"instance": "relay"}, {"instance": "another-relay"}
    store.create_entry(OUTBOUND, "out:e1", LedgerState.CLAIMED, extra=mine)
    store.create_entry(OUTBOUND, "out:e2", LedgerState.RETRY, extra=mine)
    store.create_entry(OUTBOUND, "out:e3", LedgerState.SENT, extra=mine)
    store.create_entry(OUTBOUND, "out:e4", LedgerState.CLAIMED, extra=other)
    # an instance no longer in the configuration, and the router's own bookkeeping
    store.create_entry("retired", "x", LedgerState.STAGED)
    store.create_entry("_outbound", "e1", LedgerState.SENT)
    store.acquire_lease("sales#deliver", "host-b:1:1", 60)
    return store


def test_status_reports_every_configured_instance_and_the_ones_only_the_store_knows() -> None:
    rows = {r.name: r for r in collect_status(configuration(), busy_store())}
    assert list(rows) == ["sales", "relay", "retired"]
    sales = rows["sales"]
    assert (sales.direction, sales.enabled, sales.configured) == ("Incoming", True, True)
    assert (sales.backlog, sales.quarantined, sales.processed) == (2, 1, 5)
    assert sales.lease_holder == "host-a:123:1"
    assert sales.last_error == "ProviderUnavailable: connection refused"
    assert sales.last_poll is not None and sales.last_success is not None
    relay = rows["relay"]
    assert (relay.direction, relay.enabled, relay.backlog) == ("Outgoing", False, 2)
    assert relay.lease_holder is None and relay.last_poll is None
    assert (rows["retired"].configured, rows["retired"].backlog) == (False, 1)


def test_the_table_has_one_aligned_line_per_instance() -> None:
    now = time.time()
    table = format_table(collect_status(configuration(), busy_store()), now=now)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["INSTANCE", "DIRECTION", "ENABLED"]
    assert len(lines) == 4
    assert lines[1].startswith("sales ")
    assert "host-a:123:1" in lines[1]
    assert "0s ago: ProviderUnavailable: connection refused" in lines[1]
    assert "never" in lines[2]  # relay never polled
    assert "no (not configured)" in lines[3]
    # columns line up: every row's BACKLOG value starts where the header does
    col = lines[0].index("BACKLOG")
    assert [line[col] for line in lines[1:]] == ["2", "2", "1"]


def test_json_output_has_iso_times_and_every_field() -> None:
    docs = json.loads(to_json(collect_status(configuration(), busy_store())))
    assert docs[0]["name"] == "sales"
    assert docs[0]["last_poll"].endswith("+00:00")
    assert set(docs[0]) == set(InstanceStatus.__dataclass_fields__)


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s ago"), (125, "2m ago"), (7300, "2h ago"), (200000, "2d ago")]
)
def test_ages_are_shown_in_the_largest_whole_unit(seconds: int, text: str) -> None:
    assert ago(1000.0, 1000.0 + seconds) == text
    assert ago(None, 0) == "never"


def test_the_status_command_reads_a_sqlite_state_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a state database written by some runtime
    db = tmp_path / "state.db"
    store = SqliteStore(str(db))
    store.stage("sales", "1", b"raw")
    store.record_poll("sales", processed=7)
    store.close()
    config = tmp_path / "router.xml"
    config.write_text(
        """<Configuration>
  <Deployment Name="crm"><Adapter>memory</Adapter><CrmServerUrl>https://c.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="sales">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
  </ProviderConfiguration>
</Configuration>"""
    )
    # When `email-router status --json` runs
    code = main(["status", "--config", str(config), "--state", f"sqlite:///{db}", "--json"])
    # Then it shows what the store holds
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["processed"], row["backlog"]) == ("sales", 7, 1)
