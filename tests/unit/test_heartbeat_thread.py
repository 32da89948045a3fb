"""The beat thread keeps this process's heartbeat fresh in both runtimes, and survives failures."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import SystemConfiguration
from router.configcheck import load_config
from router.crm.factory import MEMORY_CRMS
from router.errors import StateUnavailable
from router.ledger import leases
from router.ledger.leases import Pulse, process_id
from router.models import LedgerState
from router.providers import memory as memprov
from router.runtime.heartbeat import HeartbeatThread
from router.runtime.schedule import Scheduler
from router.state.base import HeartbeatState, StateStore
from router.state.memory import MemoryStore
from tests.unit.test_incoming_cycle import make_message
from tests.unit.test_standalone import config_xml, instance_xml


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.beats = 0
        self.fail = False

    def beat(self, process: str, ttl: float, remember: float) -> None:
        self.beats += 1
        if self.fail:
            raise StateUnavailable("down")
        super().beat(process, ttl, remember)


@pytest.fixture(autouse=True)
def pulse(monkeypatch: pytest.MonkeyPatch) -> Pulse:
    fresh = Pulse()
    monkeypatch.setattr(leases, "PULSE", fresh)
    return fresh


def test_the_thread_beats_every_interval_until_stopped() -> None:
    store = CountingStore()
    thread = HeartbeatThread.for_store(store, SystemConfiguration, interval=0.02).start()
    time.sleep(0.15)
    thread.stop()
    time.sleep(0.05)
    beats = store.beats
    assert beats >= 4
    assert store.heartbeat_state(process_id()) is HeartbeatState.ALIVE
    time.sleep(0.1)
    assert store.beats == beats


def test_a_failing_store_does_not_end_the_beats(pulse: Pulse) -> None:
    store = CountingStore()
    store.fail = True
    thread = HeartbeatThread.for_store(store, SystemConfiguration, interval=0.02).start()
    time.sleep(0.1)
    store.fail = False
    time.sleep(0.1)
    thread.stop()
    assert store.heartbeat_state(process_id()) is HeartbeatState.ALIVE
    assert not pulse.fenced()


def test_a_source_that_cannot_give_a_store_is_skipped_not_fatal() -> None:
    calls = []

    @contextlib.contextmanager
    def broken() -> Iterator[tuple[StateStore, SystemConfiguration]]:
        calls.append(1)
        raise StateUnavailable("no context yet")
        yield  # pragma: no cover

    thread = HeartbeatThread(broken, interval=0.02).start()
    time.sleep(0.1)
    thread.stop()
    assert len(calls) >= 3


def test_email_router_run_beats_from_its_start(tmp_path: Path) -> None:
    store = MemoryStore()
    config = tmp_path / "router.xml"
    config.write_text(config_xml())
    scheduler = Scheduler(config, store, load_config(config))
    scheduler.run(duration=0.05)
    assert store.heartbeat_state(process_id()) is HeartbeatState.ALIVE


def test_email_router_run_takes_over_a_mailbox_whose_holder_stopped_beating(
    tmp_path: Path,
) -> None:
    # Given a mailbox with mail whose lease (10 minutes) a process on another host holds, and
    # that process's heartbeat has lapsed (it was killed)
    box = f"ghost{uuid.uuid4().hex[:8]}"
    for n in range(3):
        memprov.mailbox(f"{box}@example.com").append(make_message(n))
    MEMORY_CRMS.pop("crm", None)
    store = MemoryStore()
    assert store.acquire_lease(box, "other-host:4242:1", 600) is not None
    store.beat("other-host:4242", 0.05, 3600)
    time.sleep(0.1)
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml(box, period=200)))
    # When email-router run polls it
    Scheduler(path, store, load_config(path)).run(duration=0.5)
    # Then it took the lease over and delivered the mail, without waiting for the lease's TTL
    assert store.count_entries(box) == {LedgerState.DONE: 3}


def test_email_router_run_leaves_a_mailbox_whose_holder_still_beats(tmp_path: Path) -> None:
    box = f"live{uuid.uuid4().hex[:8]}"
    memprov.mailbox(f"{box}@example.com").append(make_message(1))
    store = MemoryStore()
    assert store.acquire_lease(box, "other-host:4242:1", 600) is not None
    store.beat("other-host:4242", 60, 3600)
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml(box, period=200)))
    Scheduler(path, store, load_config(path)).run(duration=0.5)
    assert store.count_entries(box) == {}
    info = store.get_lease(box)
    assert info is not None and info.holder == "other-host:4242:1"
