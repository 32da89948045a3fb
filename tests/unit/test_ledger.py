"""The ledger's named moves: each one starts only from the states it declares, on every backend.

The move table is checked against a memory, a SQLite and (when it runs) a real Redis store: every
move is tried from every state, and must change the entry exactly when the state is one it
allows. Then the named methods of the two ledgers and the lease helpers, on the memory store.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import SystemConfiguration
from router.ledger import (
    FINISHED,
    HANDLED,
    MOVES,
    OUTBOUND,
    InboundLedger,
    OutboundLedger,
    holder_id,
    holder_is_dead,
    instance_leases,
    lease_ttl,
    moves,
    purge_finished,
    release_dead_leases,
    release_own_leases,
    take_delivery_lease,
    take_operator_lease,
    take_poll_lease,
    tool_holder,
)
from router.ledger.outgoing import (
    claimant,
    email_id_of,
    reached_someone,
    refused_at_submission,
    retry_due,
    retry_recipients,
    writer_gone,
)
from router.models import LedgerState
from router.state.base import StateStore
from router.state.keys import outbound_key, seen_index, sent_index
from router.state.memory import MemoryStore
from router.state.sqlite import SqliteStore
from tests.contract.state_helpers import delete_prefix

S = LedgerState
INST = "box"
TRANSITIONS = [m for m in MOVES.values() if not m.creates]
CREATIONS = [m for m in MOVES.values() if m.creates]


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """Each backend in turn (Redis: the shared server, under a prefix of its own)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        sqlite = SqliteStore(tmp_path / "state.db")
        yield sqlite
        sqlite.close()
        return
    from router.state.redis import RedisStore  # only when Redis is wanted (the fixture skips)

    url = request.getfixturevalue("redis_url")
    redis = RedisStore.from_url(url, prefix=request.getfixturevalue("redis_prefix"))
    yield redis
    redis.close()
    delete_prefix(url, redis.keys)


# -- the table, on every backend ------------------------------------------------------------------
@pytest.mark.parametrize("move", TRANSITIONS, ids=lambda m: m.name)
def test_a_move_changes_an_entry_only_from_the_states_it_declares(
    store: StateStore, move: moves.Move
) -> None:
    for state in S:
        # Given an entry in each state...
        key = f"k-{state.value}"
        store.create_entry(INST, key, state, reason="before")
        # ...when the move runs on it...
        moved = moves.move(store, move, INST, key, reason="after")
        entry = store.get_entry(INST, key)
        assert entry is not None
        # ...then it lands in the move's target exactly when it started from an allowed state.
        if state in move.sources:
            assert moved is not None and (entry.state, entry.reason) == (move.target, "after")
        else:
            assert moved is None and (entry.state, entry.reason) == (state, "before")


@pytest.mark.parametrize("move", CREATIONS, ids=lambda m: m.name)
def test_a_creating_move_refuses_an_entry_that_exists_in_any_state(
    store: StateStore, move: moves.Move
) -> None:
    assert moves.create(store, move, INST, "new").state is move.target  # type: ignore[union-attr]
    for state in S:
        key = f"k-{state.value}"
        store.create_entry(INST, key, state)
        assert moves.create(store, move, INST, key) is None
        assert store.get_entry(INST, key).state is state  # type: ignore[union-attr]


def test_stage_refuses_a_known_message_on_every_backend(store: StateStore) -> None:
    ledger = InboundLedger(store, INST)
    assert ledger.stage("k", b"raw") is True
    assert ledger.stage("k", b"other") is False
    assert store.get_raw(INST, "k") == b"raw"
    assert ledger.get("k").state is moves.STAGE.target  # type: ignore[union-attr]


def test_a_move_narrowed_to_the_state_seen_refuses_any_other(store: StateStore) -> None:
    # Given an entry taken over by someone else since we read it as RETRY...
    store.create_entry(OUTBOUND, "out:1", S.CLAIMED, extra={"claim": "theirs"})
    # ...then taking it over "as RETRY" fails, although take_over allows CLAIMED too.
    assert moves.move(store, moves.TAKE_OVER, OUTBOUND, "out:1", seen=S.RETRY) is None
    entry = store.get_entry(OUTBOUND, "out:1")
    assert entry is not None and entry.extra == {"claim": "theirs"}


# -- the table, declared once ---------------------------------------------------------------------
def test_a_narrowed_state_outside_the_move_is_a_bug() -> None:
    with pytest.raises(ValueError, match="take_over"):
        moves.TAKE_OVER.expected(S.SENT)
    assert moves.TAKE_OVER.expected(S.RETRY) == (S.RETRY,)


def test_creating_and_changing_moves_cannot_be_confused() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="claim"):
        moves.move(store, moves.CLAIM, OUTBOUND, "out:1")
    with pytest.raises(ValueError, match="sent"):
        moves.create(store, moves.SENT, OUTBOUND, "out:1")


def test_the_module_docstring_table_is_the_table() -> None:
    # One row per move: "name  from-states  TARGET  why"; "()" for a creating move.
    rows = re.findall(r"^    ([a-z_]+) {2,}(.+?) {2,}([A-Z]+) ", moves.__doc__ or "", re.M)
    documented = {name: (sources.strip(), target) for name, sources, target in rows}
    assert set(documented) == set(MOVES)
    for name, move in MOVES.items():
        sources, target = documented[name]
        assert target == move.target.name, name
        if sources == "any state but FAILED":
            assert set(move.sources) == set(S) - {S.FAILED}
        else:
            listed = () if sources == "()" else tuple(S[s] for s in sources.split(", "))
            assert listed == move.sources, name


def test_handled_and_finished_states() -> None:
    assert HANDLED == (S.DELIVERED, S.SKIPPED)
    assert FINISHED == (S.DONE, S.SKIPPED, S.SENT, S.FAILED)


# -- the incoming ledger --------------------------------------------------------------------------
def test_delivered_indexes_the_message_id_and_drops_the_bytes() -> None:
    store = MemoryStore()
    ledger = InboundLedger(store, INST)
    ledger.stage("k", b"raw")
    moved = ledger.delivered("k", "<m@x>", "act-1", duplicate=True)
    assert moved is not None and moved.state is S.DELIVERED
    assert (moved.activity_id, moved.extra) == ("act-1", {"duplicate": True})
    assert store.get_raw(INST, "k") is None
    assert ledger.seen_before("<m@x>") and not InboundLedger(store, "other").seen_before("<m@x>")
    assert store.lookup_message_id(seen_index(INST, "<m@x>")) == (INST, "k")
    # A second delivery of the same entry is refused, and leaves it as it was.
    assert ledger.delivered("k", "<m@x>", "act-2", duplicate=False) is None
    assert ledger.get("k").activity_id == "act-1"  # type: ignore[union-attr]


def test_an_incoming_message_from_staged_to_done() -> None:
    store = MemoryStore()
    ledger = InboundLedger(store, INST)
    ledger.stage("a", b"raw")
    ledger.stage("b", b"raw")
    ledger.count_attempts(ledger.staged())
    assert [e.attempts for e in ledger.staged()] == [1, 1]
    ledger.skip("b", "<b@x>", "classified as auto_reply")
    ledger.delivered("a", "<a@x>", "act", duplicate=False)
    assert [e.key for e in ledger.handled()] == ["a", "b"]
    assert store.get_raw(INST, "b") is None
    assert ledger.done("a") is not None and ledger.done("b") is not None
    assert ledger.done("a") is None  # already done
    assert ledger.handled() == []


def test_quarantine_replay_and_drop() -> None:
    store = MemoryStore()
    ledger = InboundLedger(store, INST)
    ledger.stage("k", b"raw")
    assert ledger.quarantine("k", "unparseable") is not None
    assert ledger.quarantine("k", "again") is None
    replayed = ledger.replay("k")
    assert replayed is not None and (replayed.state, replayed.reason) == (S.STAGED, None)
    ledger.quarantine("k", "still unparseable")
    ledger.drop("k")
    entry = ledger.get("k")
    assert entry is not None and (entry.state, entry.reason) == (S.DONE, "dropped by operator")
    assert store.get_raw(INST, "k") is None


def test_a_refused_message_gets_its_bytes_and_keeps_its_reason() -> None:
    store = MemoryStore()
    ledger = InboundLedger(store, INST)
    assert ledger.refuse("big", "too large") is True
    assert ledger.refuse("big", "too large") is False
    assert ledger.attach_raw("big", b"raw") is True
    entry = ledger.get("big")
    assert entry is not None and (entry.state, entry.reason) == (S.QUARANTINED, "too large")
    assert store.get_raw(INST, "big") == b"raw"


def test_purge_forgets_only_finished_entries() -> None:
    store = MemoryStore()
    for state in S:
        store.create_entry(INST, state.value, state)
    assert purge_finished(store, INST, older_than=1e12) == len(FINISHED)
    assert {e.state for e in store.list_entries(INST)} == set(S) - set(FINISHED)


# -- the outbound ledger --------------------------------------------------------------------------
def test_one_claim_per_email() -> None:
    ledger = OutboundLedger(MemoryStore())
    claim = ledger.claim("e1", "out-a", "host:1:1")
    assert claim is not None and claim.key == outbound_key("e1")
    assert claimant(claim.entry) == "out-a" and email_id_of(claim.entry) == "e1"
    assert ledger.claim("e1", "out-b", "host:2:1") is None


def test_of_two_workers_taking_over_one_entry_only_the_first_goes_on() -> None:
    store = MemoryStore()
    ledger = OutboundLedger(store)
    store.create_entry(OUTBOUND, "out:e1", S.RETRY, extra={"next_at": 0.0})
    seen = ledger.get("e1")
    assert seen is not None
    first = ledger.take_over(seen, "out-a", "host:1:1")
    assert first is not None and first.entry.state is S.CLAIMED
    # The second saw the same RETRY entry: it is CLAIMED now, so the narrowed move refuses.
    assert ledger.take_over(seen, "out-b", "host:2:1") is None
    assert claimant(ledger.current(seen)) == "out-a"


def test_submitted_goes_ahead_only_while_the_claim_is_ours() -> None:
    store = MemoryStore()
    ledger = OutboundLedger(store)
    claim = ledger.claim("e1", "out-a", "host:1:1")
    assert claim is not None
    assert ledger.submitted(claim, "out-a", "<m@x>", ["late@example.com"]) is True
    entry = ledger.current(claim.entry)
    assert (entry.state, entry.message_id) == (S.SUBMITTED, "<m@x>")
    assert refused_at_submission(entry) == ["late@example.com"] and reached_someone(entry)
    assert ledger.find_sent("<m@x>") == entry
    assert store.lookup_message_id(sent_index("<m@x>")) == (OUTBOUND, claim.key)


def test_a_lost_claim_is_not_submitted() -> None:
    store = MemoryStore()
    ledger = OutboundLedger(store)
    claim = ledger.claim("e1", "out-a", "host:1:1")
    assert claim is not None
    store.transition(OUTBOUND, claim.key, [S.CLAIMED], S.CLAIMED, extra={"claim": "theirs"})
    assert ledger.submitted(claim, "out-a", "<m@x>", []) is False
    assert ledger.current(claim.entry).state is S.CLAIMED
    assert ledger.find_sent("<m@x>") is None


def test_retry_later_then_sent_failed_and_bounced() -> None:
    store = MemoryStore()
    ledger = OutboundLedger(store)
    claim = ledger.claim("e1", "out-a", "host:1:1")
    assert claim is not None
    ledger.retry_later(
        claim.key, attempts=2, reason="451", next_at=99.0, rcpts=["a@x"], delivered=False
    )
    entry = ledger.current(claim.entry)
    assert (entry.state, entry.attempts, retry_due(entry)) == (S.RETRY, 2, 99.0)
    assert retry_recipients(entry) == ["a@x"] and not reached_someone(entry)
    ledger.sent(claim.key)
    assert ledger.current(entry).state is S.SENT
    ledger.failed(claim.key, "550")  # a sent email does not fail...
    assert ledger.current(entry).state is S.SENT
    ledger.bounced(claim.key, "bounced: 5.1.1")  # ...unless a DSN says so
    assert ledger.current(entry).reason == "bounced: 5.1.1"


def test_give_back_makes_a_claim_due_at_once() -> None:
    store = MemoryStore()
    ledger = OutboundLedger(store)
    claim = ledger.claim("e1", "out-a", "host:1:1")
    assert claim is not None
    ledger.give_back(claim.key)
    entry = ledger.current(claim.entry)
    assert entry.state is S.RETRY and retry_due(entry) == 0.0


def test_a_writer_is_gone_when_it_was_us_or_its_entry_outlived_a_lease() -> None:
    claim = OutboundLedger(MemoryStore()).claim("e1", "out-a", "host:1:1")
    assert claim is not None
    entry = claim.entry
    assert writer_gone(entry, "out-a", now=entry.updated_at, ttl=600)
    assert not writer_gone(entry, "out-b", now=entry.updated_at + 599, ttl=600)
    assert writer_gone(entry, "out-b", now=entry.updated_at + 601, ttl=600)


# -- leases and holders ---------------------------------------------------------------------------
def test_holders_name_host_process_and_thread() -> None:
    host, pid, thread = holder_id().split(":")
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and thread.isdigit()
    assert tool_holder("state-reset").startswith("state-reset@")
    assert not holder_is_dead(holder_id())
    assert not holder_is_dead(tool_holder("state-reset"))
    assert not holder_is_dead("elsewhere:1:1") and not holder_is_dead("garbage")


def _exited_process() -> subprocess.CompletedProcess[str]:
    """A child process that printed its pid and exited (its pid is now free, for a while)."""
    code = "import os; print(os.getpid())"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_a_process_that_exited_is_a_dead_holder() -> None:
    done = _exited_process()
    assert holder_is_dead(f"{socket.gethostname()}:{done.stdout.strip()}:1")


def test_lease_names_and_ttl() -> None:
    system = SystemConfiguration(max_thread_execution=90_000)
    assert lease_ttl(system) == 90.0
    assert instance_leases("sales") == ("sales", "sales#deliver")
    store = MemoryStore()
    poll = take_poll_lease(store, "sales", "h:1:1", system)
    deliver = take_delivery_lease(store, "sales", "h:1:1", system)
    assert poll is not None and deliver is not None
    assert (poll.instance, deliver.instance) == instance_leases("sales")
    assert take_poll_lease(store, "sales", "h:2:1", system) is None
    assert take_operator_lease(store, "sales", "state-reset") is None


def test_release_own_and_dead_leases_leave_live_holders_alone() -> None:
    store = MemoryStore()
    done = _exited_process()
    dead = f"{socket.gethostname()}:{done.stdout.strip()}:1"
    store.acquire_lease("a", dead, 600)
    store.acquire_lease("a#deliver", "other-host:1:1", 600)
    store.acquire_lease("b", holder_id(), 600)
    release_dead_leases(store, "a")
    release_dead_leases(store, "b")
    assert store.get_lease("a") is None and store.get_lease("a#deliver") is not None
    assert store.get_lease("b") is not None
    release_own_leases(store, "b")
    release_own_leases(store, "a")
    assert store.get_lease("b") is None and store.get_lease("a#deliver") is not None
