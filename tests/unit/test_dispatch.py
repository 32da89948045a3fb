"""The dispatcher's due times in Redis (claim and sync scripts), its plan, and beat using it.

The scripts run on the real Redis (db 15, a key prefix of the test's own: never a flush);
fakeredis has no Lua without ``lupa``. The scheduler tests record what beat sends instead of
touching a broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from router.config import Configuration, ProviderConfiguration, Settings
from router.models import LedgerState
from router.state.base import StateStore
from router.state.keys import Keys
from router.state.memory import MemoryStore
from router.state.redis import Claim, DueTimes, RedisStore
from workers import dispatch
from workers.app import create_app
from workers.dispatch import Dispatcher, Message
from workers.scheduler import ConfigScheduler, EntryScheduler

pytestmark = pytest.mark.redis


def forget(redis_url: str, prefix: str) -> None:
    """Delete this test's keys (the shared db is never flushed)."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(Keys(prefix).pattern()):
        client.delete(key)


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    s = RedisStore.from_url(redis_url, prefix=redis_prefix)
    yield s
    forget(redis_url, redis_prefix)
    s.close()


@pytest.fixture
def beat_prefix(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The key prefix a beat built in the test uses (``ROUTER_KEY_PREFIX``)."""
    monkeypatch.setenv("ROUTER_KEY_PREFIX", redis_prefix)
    yield redis_prefix
    forget(redis_url, redis_prefix)


@pytest.fixture
def due(store: RedisStore) -> DueTimes:
    return store.due_times()


def server_now(due: DueTimes) -> float:
    return due.claim(0).now


def test_a_claim_takes_what_is_due_and_moves_it_one_period_on(due: DueTimes) -> None:
    # Given two instances due now (phase 0) and one due in ~50 s
    due.sync({"a": 10.0, "b": 20.0, "c": 100.0}, {"a": 0.0, "b": 0.0, "c": 0.5})
    first = {name: due.due_at(name) for name in "abc"}
    # When the dispatcher claims
    claim = due.claim(100)
    # Then a and b are taken, each re-inserted exactly one period after its due instant
    assert sorted(name for name, _ in claim.due) == ["a", "b"]
    assert due.due_at("a") == pytest.approx(first["a"] + 10.0)  # type: ignore[operator]
    assert due.due_at("b") == pytest.approx(first["b"] + 20.0)  # type: ignore[operator]
    assert due.due_at("c") == first["c"]
    # and an immediate second claim finds nothing due
    assert due.claim(100).due == []


def test_a_claim_takes_at_most_its_limit_earliest_first(due: DueTimes) -> None:
    due.sync({f"i{n}": 60.0 for n in range(10)}, {f"i{n}": 0.0 for n in range(10)})
    assert len(due.claim(4).due) == 4
    assert len(due.claim(100).due) == 6


def test_two_dispatchers_claiming_at_once_never_take_one_due_instant_twice(
    store: RedisStore,
) -> None:
    # Given 2,000 instances due now and two beats (separate connections) claiming in a race
    names = {f"i{n}": 60.0 for n in range(2000)}
    store.due_times().sync(names, dict.fromkeys(names, 0.0))
    taken: list[list[str]] = [[], []]

    def claimer(slot: int) -> None:
        own = store.due_times()
        for _ in range(40):
            taken[slot] += [name for name, _ in own.claim(25).due]

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then together they took every instance once: none twice, none skipped
    together = taken[0] + taken[1]
    assert sorted(together) == sorted(names)
    assert taken[0] and taken[1]


def test_a_sync_schedules_added_instances_and_drops_removed_ones(due: DueTimes) -> None:
    assert due.sync({"a": 5.0, "b": 5.0}, {}) == (2, 0)
    assert due.sync({"b": 5.0, "c": 5.0}, {}) == (1, 1)
    assert due.due_at("a") is None
    assert due.due_at("c") is not None
    assert due.scheduled() == 2


def test_a_sync_keeps_known_instances_due_times(due: DueTimes) -> None:
    due.sync({"a": 60.0}, {"a": 0.5})
    before = due.due_at("a")
    assert due.sync({"a": 60.0, "b": 60.0}, {}) == (1, 0)
    assert due.due_at("a") == before


def test_a_shortened_period_takes_effect_within_the_new_period(due: DueTimes) -> None:
    due.sync({"a": 600.0}, {"a": 0.9})
    due.sync({"a": 2.0}, {"a": 0.9})
    assert due.due_at("a") <= server_now(due) + 2.0  # type: ignore[operator]


def test_instances_added_together_are_first_due_spread_over_their_period(
    due: DueTimes,
) -> None:
    names = [f"i{n}" for n in range(1000)]
    due.sync(dict.fromkeys(names, 60.0), {n: dispatch.phase(n) for n in names})
    now = server_now(due)
    offsets = sorted(due.due_at(n) - now for n in names)  # type: ignore[operator]
    # roughly uniform over [0, 60): each 10 s slice holds about a sixth, none all of them
    slices = [sum(1 for o in offsets if k * 10 <= o < (k + 1) * 10) for k in range(6)]
    assert min(slices) > 100, slices
    assert offsets[-1] < 60.0


def test_rounds_missed_while_no_dispatcher_ran_are_skipped_keeping_the_phase(
    store: RedisStore, redis_url: str
) -> None:
    due = store.due_times()
    due.sync({"a": 10.0}, {"a": 0.0})
    # Given "a" was due 35.5 s ago (three rounds missed)
    now = server_now(due)
    redis.Redis.from_url(redis_url).zadd(store.keys.due(), {"a": int((now - 35.5) * 1000)})
    # When claimed, it is sent once and next due at its phase: 35.5 s ago + 4 periods
    claim = due.claim(10)
    assert [name for name, _ in claim.due] == ["a"]
    assert due.due_at("a") == pytest.approx(now - 35.5 + 40.0, abs=0.01)


def cfg(name: str, direction: str = "Incoming", period_ms: int = 60_000) -> ProviderConfiguration:
    return ProviderConfiguration.model_validate(
        {
            "name": name,
            "provider_class": "memory",
            "direction": direction,
            "deployment": "crm",
            "polling_period": period_ms,
        }
    )


class RecordingDue(DueTimes):
    """Due times that hand out a fixed claim (the plan is what is under test)."""

    def __init__(self, claim: Claim) -> None:
        self._fixed = claim

    def claim(self, limit: int) -> Claim:
        claim, self._fixed = self._fixed, Claim(self._fixed.now, [])
        return claim


def test_due_polls_go_out_in_batches_and_sends_one_message_each() -> None:
    # Given 120 incoming and 2 outgoing instances due, batch size 50
    providers = [cfg(f"in{n}") for n in range(120)] + [cfg("out0", "Outgoing", 5000)]
    providers.append(cfg("out1", "Outgoing", 5000))
    claim = Claim(0.0, [(p.name, 0.0) for p in providers] + [("gone", 0.0)])
    sent: list[Message] = []
    dispatcher = Dispatcher(RecordingDue(claim), sent.append, batch_size=50)
    dispatcher._instances = {p.name: p for p in providers}  # what sync() would set
    # When the dispatcher ticks
    assert dispatcher.tick() == 123
    # Then polls are three batches in due order, each send its own message, "gone" nothing
    batches = [m for m in sent if m.task == dispatch.POLL_BATCH]
    assert [len(m.args[0]) for m in batches] == [50, 50, 20]
    assert [n for m in batches for n in m.args[0]] == [f"in{n}" for n in range(120)]
    assert all(m.options == {"queue": "incoming", "expires": 60.0} for m in batches)
    sends = [m for m in sent if m.task == dispatch.SEND]
    assert [(m.args, m.options) for m in sends] == [
        (("out0",), {"queue": "outgoing", "expires": 5.0}),
        (("out1",), {"queue": "outgoing", "expires": 5.0}),
    ]


def test_the_dispatcher_schedules_only_enabled_instances(due: DueTimes) -> None:
    off = cfg("off").model_copy(update={"enabled": False})
    config = Configuration(providers=(cfg("on"), off, cfg("out", "Outgoing")))
    Dispatcher(due, lambda m: None).sync(config)
    assert due.due_at("on") is not None and due.due_at("out") is not None
    assert due.due_at("off") is None


# -- beat ---------------------------------------------------------------------------------------
def xml(names: list[str], state_url: str, period_ms: int = 1000) -> str:
    blocks = "".join(
        f"""<ProviderConfiguration Name="{n}"><ProviderClass>memory</ProviderClass>
        <Direction>Incoming</Direction><Deployment>crm</Deployment>
        <PollingPeriod>{period_ms}</PollingPeriod></ProviderConfiguration>"""
        for n in names
    )
    return f"""<Configuration><SystemConfiguration><StateStore>{state_url}</StateStore>
      <ConfigRefreshPeriod>100</ConfigRefreshPeriod></SystemConfiguration>
      <Deployment Name="crm"><Adapter>memory</Adapter>
      <CrmServerUrl>https://crm.example</CrmServerUrl></Deployment>{blocks}</Configuration>"""


def beat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_url: str, cls: type = ConfigScheduler
) -> tuple[ConfigScheduler, Path, list[tuple[str, object]]]:
    path = tmp_path / "router.xml"
    path.write_text(xml(["a", "b"], state_url))
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    app = create_app(Settings(config=path, broker_url="memory://"))
    sent: list[tuple[str, object]] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, **kw: sent.append((name, args)))
    return cls(app=app), path, sent


def test_beat_with_a_redis_store_keeps_only_housekeeping_and_dispatches_the_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, beat_prefix: str
) -> None:
    scheduler, path, sent = beat(tmp_path, monkeypatch, redis_url)
    assert set(scheduler.schedule) == {"housekeeping"}
    due = RedisStore.from_url(redis_url, prefix=beat_prefix).due_times()
    assert due.scheduled() == 2
    # within one period (1 s) both instances are sent, in poll_batch messages
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len({n for _, a in sent for n in a[0]}) < 2:  # type: ignore[index]
        scheduler.tick()
        time.sleep(0.05)
    assert {n for _, a in sent for n in a[0]} == {"a", "b"}  # type: ignore[index]
    assert {name for name, _ in sent} == {dispatch.POLL_BATCH}
    # an instance added to the file is scheduled at the next refresh, a removed one dropped
    time.sleep(0.15)
    path.write_text(xml(["b", "c"], redis_url))
    scheduler.tick()
    assert (due.due_at("a"), due.due_at("c") is not None) == (None, True)


def test_the_entry_scheduler_keeps_one_beat_entry_per_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, beat_prefix: str
) -> None:
    scheduler, _, _ = beat(tmp_path, monkeypatch, redis_url, EntryScheduler)
    assert set(scheduler.schedule) == {"housekeeping", "poll:a", "poll:b"}


def test_beat_with_a_store_that_is_not_redis_keeps_one_entry_per_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, _, _ = beat(tmp_path, monkeypatch, "memory://")
    assert set(scheduler.schedule) == {"housekeeping", "poll:a", "poll:b"}


# -- the batch's read-ahead ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_peek_answers_what_the_counters_and_the_oldest_staged_entry_say(
    kind: str, store: RedisStore
) -> None:
    s: StateStore = store if kind == "redis" else MemoryStore()
    s.record_poll("busy", processed=3, error="login refused")
    s.stage("busy", "k1", b"raw one")
    s.stage("busy", "k2", b"raw two")
    s.record_poll("idle", processed=1)
    peeks = s.peek(["busy", "idle", "never"])
    assert set(peeks) == {"busy", "idle", "never"}
    for name, peek in peeks.items():
        assert peek.stats == s.get_stats(name)
    oldest = s.list_entries("busy", [LedgerState.STAGED], limit=1)[0]
    assert peeks["busy"].oldest_staged == oldest.updated_at
    assert peeks["busy"].stats.last_error == "login refused"
    assert (peeks["idle"].oldest_staged, peeks["never"].oldest_staged) == (None, None)


def test_a_broker_refusing_a_message_costs_its_instances_one_round_never_beat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, beat_prefix: str
) -> None:
    scheduler, _, _ = beat(tmp_path, monkeypatch, redis_url)

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(scheduler.app, "send_task", refuse)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert scheduler.tick() <= dispatch.TICK  # beat keeps ticking
        time.sleep(0.05)
    # both instances were claimed (their due times moved on) despite the refusals
    due = RedisStore.from_url(redis_url, prefix=beat_prefix).due_times()
    now = server_now(due)
    assert all(due.due_at(n) > now for n in "ab")  # type: ignore[operator]
