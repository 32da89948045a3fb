"""Housekeeping purges finished ledger entries past LedgerRetention and nothing in flight."""

from __future__ import annotations

import time

from router.config import Configuration, SystemConfiguration
from router.context import Context
from router.housekeeping import housekeeping
from router.ledger import OUTBOUND
from router.models import LedgerState
from router.state.keys import OUTBOUND as OUTGOING_NAMESPACE
from router.state.memory import MemoryStore


def test_finished_entries_past_retention_go_and_everything_in_flight_stays() -> None:
    store = MemoryStore()
    config = Configuration(system=SystemConfiguration(ledger_retention=3_600_000))
    ctx = Context(config, store)
    for key, state in [
        ("a", LedgerState.DONE),
        ("b", LedgerState.SKIPPED),
        ("c", LedgerState.STAGED),
        ("d", LedgerState.QUARANTINED),
        ("e", LedgerState.DELIVERED),
    ]:
        store.create_entry("box", key, state)
    store.create_entry(OUTBOUND, "out:1", LedgerState.SENT)
    store.create_entry(OUTBOUND, "out:2", LedgerState.SUBMITTED)
    assert housekeeping(ctx).total == 0
    report = housekeeping(ctx, now=time.time() + 7200)
    assert report.purged == {"box": 2, OUTBOUND: 1}
    assert [e.key for e in store.list_entries("box")] == ["c", "d", "e"]
    assert [e.key for e in store.list_entries(OUTBOUND)] == ["out:2"]


def test_the_outbound_namespace_matches_the_send_cycle() -> None:
    assert OUTBOUND == OUTGOING_NAMESPACE
