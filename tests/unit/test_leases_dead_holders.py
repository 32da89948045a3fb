"""Dead lease holders are freed at once, live ones never; a process without heartbeat fences itself.

The rule (``router.ledger.leases``): a cycle that finds its lease taken asks whether the holder's
heartbeat lapsed; if so it releases that lease by compare-and-set on the token and takes it.
The memory store with a hand-moved clock stands in for Redis here (the contract suite proves the
backends alike).
"""

from __future__ import annotations

import os
import socket

import pytest

from router.config import SystemConfiguration
from router.errors import StateUnavailable
from router.ledger import leases
from router.ledger.leases import (
    FENCE_AFTER,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TTL,
    Pulse,
    holder_is_dead,
    process_id,
    settle_leases,
    take_delivery_lease,
    take_pause_lease,
    take_poll_lease,
    tool_holder,
)
from router.state.base import HeartbeatState
from router.state.memory import MemoryStore

SYSTEM = SystemConfiguration()  # MaxThreadExecution 10 minutes: only a dead holder frees early
OTHER = "other-host:4242"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FlakyStore(MemoryStore):
    """A memory store whose heartbeat writes fail while ``down``."""

    down = False

    def beat(self, process: str, ttl: float, remember: float) -> None:
        if self.down:
            raise StateUnavailable("store unreachable")
        super().beat(process, ttl, remember)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> FlakyStore:
    return FlakyStore(clock=clock)


@pytest.fixture(autouse=True)
def no_leases_of_earlier_cycles() -> None:
    """Each test starts with no lease recorded for this thread's cycle."""
    settle_leases(MemoryStore(), failed=False)


@pytest.fixture(autouse=True)
def pulse(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Pulse:
    """A fresh PULSE for each test, on the test's clock."""
    fresh = Pulse(clock=clock)
    monkeypatch.setattr(leases, "PULSE", fresh)
    return fresh


def held_by_other(store: MemoryStore, name: str = "inbox") -> int:
    lease = store.acquire_lease(name, f"{OTHER}:77", 600)
    assert lease is not None
    return lease.token


# -- the dead-holder rule -------------------------------------------------------------------------
def test_a_holder_on_another_host_with_a_fresh_heartbeat_is_alive(
    store: FlakyStore, clock: Clock
) -> None:
    store.beat(OTHER, HEARTBEAT_TTL, 3600)
    clock.now += HEARTBEAT_TTL - 1
    assert not holder_is_dead(f"{OTHER}:77", store)


def test_a_holder_whose_heartbeat_lapsed_is_dead(store: FlakyStore, clock: Clock) -> None:
    store.beat(OTHER, HEARTBEAT_TTL, 3600)
    clock.now += HEARTBEAT_TTL + 1
    assert store.heartbeat_state(OTHER) is HeartbeatState.LAPSED
    assert holder_is_dead(f"{OTHER}:77", store)


def test_a_holder_on_another_host_that_never_beat_is_not_called_dead(store: FlakyStore) -> None:
    assert not holder_is_dead(f"{OTHER}:77", store)


def test_operator_tools_pauses_and_this_process_are_never_dead(
    store: FlakyStore, clock: Clock
) -> None:
    # even with a lapsed heartbeat under their host:pid, tools are not processes that beat
    store.beat(process_id(), HEARTBEAT_TTL, 3600)
    clock.now += HEARTBEAT_TTL + 1
    assert not holder_is_dead(tool_holder("state-reset"), store)
    assert not holder_is_dead(tool_holder("console-pause"), store)
    assert not holder_is_dead(leases.holder_id(), store)
    assert not holder_is_dead("garbage", store)


def test_a_holder_whose_heartbeat_cannot_be_read_is_taken_for_alive(store: FlakyStore) -> None:
    class Unreachable(MemoryStore):
        def heartbeat_state(self, process: str) -> HeartbeatState:
            raise StateUnavailable("down")

    assert not holder_is_dead(f"{OTHER}:77", Unreachable())


def test_a_fresh_heartbeat_wins_over_a_missing_local_pid(store: FlakyStore) -> None:
    # a process of "this" host name whose pid we cannot see (another container) but that beats
    gone = f"{socket.gethostname()}:{2**22 + 17}"
    store.beat(gone, HEARTBEAT_TTL, 3600)
    assert not holder_is_dead(f"{gone}:1", store)
    assert holder_is_dead(f"{gone}:1")  # without heartbeats, only the pid says


# -- taking over ----------------------------------------------------------------------------------
def test_a_live_holders_lease_is_never_taken(store: FlakyStore, clock: Clock) -> None:
    token = held_by_other(store)
    for _ in range(10):  # it keeps beating, we keep trying
        store.beat(OTHER, HEARTBEAT_TTL, 3600)
        clock.now += HEARTBEAT_INTERVAL
        assert take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM) is None
    info = store.get_lease("inbox")
    assert info is not None and (info.holder, info.token) == (f"{OTHER}:77", token)


def test_a_dead_holders_lease_is_released_and_taken_with_a_larger_token(
    store: FlakyStore, clock: Clock
) -> None:
    store.beat(OTHER, HEARTBEAT_TTL, 3600)
    token = held_by_other(store)
    clock.now += HEARTBEAT_TTL + 0.5  # 10 minutes before the lease itself would expire
    lease = take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM)
    assert lease is not None and lease.token > token
    assert lease.holder == leases.holder_id()


def test_a_dead_holders_delivery_lease_is_taken_too(store: FlakyStore, clock: Clock) -> None:
    store.beat(OTHER, HEARTBEAT_TTL, 3600)
    held_by_other(store, "inbox#deliver")
    clock.now += HEARTBEAT_TTL + 0.5
    assert take_delivery_lease(store, "inbox", leases.holder_id(), SYSTEM) is not None


def test_two_processes_freeing_one_dead_lease_end_with_one_holder(
    store: FlakyStore, clock: Clock
) -> None:
    store.beat(OTHER, HEARTBEAT_TTL, 3600)
    held_by_other(store)
    clock.now += HEARTBEAT_TTL + 0.5
    stale = store.get_lease("inbox")  # what a second taker read before the first one won
    assert stale is not None
    first = take_poll_lease(store, "inbox", "me:1:1", SYSTEM)
    assert first is not None
    # the second taker's release carries the dead holder's token: it must not free ours
    store.release_lease(leases.Lease("inbox", stale.holder, stale.token, stale.expires_at))
    assert take_poll_lease(store, "inbox", "me:1:2", SYSTEM) is None
    info = store.get_lease("inbox")
    assert info is not None and info.token == first.token


def test_a_pause_lease_is_never_freed_as_dead(store: FlakyStore, clock: Clock) -> None:
    assert take_pause_lease(store, "inbox", 3600) is not None
    store.beat(process_id(), HEARTBEAT_TTL, 3600)  # the console process's own heartbeat lapses
    clock.now += HEARTBEAT_TTL + 1
    assert take_poll_lease(store, "inbox", f"{OTHER}:1", SYSTEM) is None


# -- self-fencing ---------------------------------------------------------------------------------
def test_a_process_that_never_beat_is_not_fenced(store: FlakyStore, pulse: Pulse) -> None:
    store.down = True
    assert not pulse.fenced()
    assert take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM) is not None


def test_a_process_whose_heartbeat_fails_stops_taking_leases(
    store: FlakyStore, clock: Clock, pulse: Pulse
) -> None:
    assert pulse.beat(store, SYSTEM)
    store.down = True
    clock.now += FENCE_AFTER - 1
    assert not pulse.beat(store, SYSTEM)  # one failed beat: not yet fenced
    assert take_poll_lease(store, "a", leases.holder_id(), SYSTEM) is not None
    clock.now += 2
    assert pulse.fenced()
    assert take_poll_lease(store, "b", leases.holder_id(), SYSTEM) is None
    assert store.get_lease("b") is None


def test_a_fenced_process_takes_leases_again_once_a_beat_succeeds(
    store: FlakyStore, clock: Clock, pulse: Pulse
) -> None:
    assert pulse.beat(store, SYSTEM)
    store.down = True
    clock.now += FENCE_AFTER + 1
    assert pulse.fenced()
    store.down = False  # the store is back: the next lease beats first, then is granted
    assert take_poll_lease(store, "a", leases.holder_id(), SYSTEM) is not None
    assert not pulse.fenced()
    assert store.heartbeat_state(process_id()) is HeartbeatState.ALIVE


def test_a_process_fences_itself_before_others_may_call_it_dead() -> None:
    assert FENCE_AFTER < HEARTBEAT_TTL


def test_a_forked_child_forgets_its_parents_beats(store: FlakyStore, pulse: Pulse) -> None:
    assert pulse.beat(store, SYSTEM)
    pulse.reset()
    store.down = True
    assert not pulse.fenced()


def test_the_heartbeat_names_this_process() -> None:
    assert process_id() == f"{socket.gethostname()}:{os.getpid()}"
    assert leases.holder_id().startswith(process_id() + ":")


def test_a_process_that_enabled_its_heartbeat_beats_before_its_first_lease(
    store: FlakyStore, pulse: Pulse
) -> None:
    pulse.enable()  # the beat thread started but has not beaten yet
    assert store.heartbeat_state(process_id()) is HeartbeatState.UNKNOWN
    assert take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM) is not None
    assert store.heartbeat_state(process_id()) is HeartbeatState.ALIVE
    store.down = True
    pulse.reset()
    pulse.enable()
    assert take_poll_lease(store, "other", leases.holder_id(), SYSTEM) is None


# -- leases a failed cycle left held --------------------------------------------------------------
class ReleaseFails(FlakyStore):
    """A store whose releases fail while ``releases_down``."""

    releases_down = False

    def release_lease(self, lease: leases.Lease) -> None:
        if self.releases_down:
            raise StateUnavailable("store unreachable")
        super().release_lease(lease)


def test_a_failed_cycles_lease_is_released_again_when_the_cycle_ends() -> None:
    store = ReleaseFails()
    lease = take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM)
    assert lease is not None
    store.releases_down = True  # the cycle's own release fails (Redis restarting) ...
    with pytest.raises(StateUnavailable):
        store.release_lease(lease)
    store.releases_down = False  # ... and the store is back when the runtime settles the cycle
    settle_leases(store, failed=True)
    assert store.get_lease("inbox") is None


def test_a_lease_whose_release_cannot_reach_the_store_is_released_after_the_next_beat(
    pulse: Pulse,
) -> None:
    store = ReleaseFails()
    assert take_delivery_lease(store, "inbox", leases.holder_id(), SYSTEM) is not None
    store.releases_down = True
    settle_leases(store, failed=True)  # still unreachable: handed to the beat thread
    assert store.get_lease("inbox#deliver") is not None
    store.releases_down = False
    assert pulse.beat(store, SYSTEM)
    assert store.get_lease("inbox#deliver") is None


def test_settling_never_releases_a_lease_taken_over_since() -> None:
    store = ReleaseFails()
    mine = take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM)
    assert mine is not None
    store.release_lease(mine)
    theirs = store.acquire_lease("inbox", f"{OTHER}:9", 600)
    assert theirs is not None
    settle_leases(store, failed=True)
    info = store.get_lease("inbox")
    assert info is not None and info.token == theirs.token


def test_a_successful_cycle_is_settled_without_touching_the_store() -> None:
    store = ReleaseFails()
    lease = take_poll_lease(store, "inbox", leases.holder_id(), SYSTEM)
    assert lease is not None  # held on purpose: a successful cycle released it itself
    settle_leases(store, failed=False)
    assert store.get_lease("inbox") is not None
    settle_leases(store, failed=True)  # nothing left from that cycle
    assert store.get_lease("inbox") is not None
