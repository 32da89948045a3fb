"""The StateStore contract, run against every backend: memory, SQLite and a real Redis.

:class:`StateStoreContract` holds every test; each backend subclass only says how to open a store
and how to damage one stored entry on purpose.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.errors import LeaseLost, StateCorrupt, StateUnavailable
from router.models import LedgerState
from router.state.base import MSGID_TTL, HeartbeatState, StateStore
from router.state.memory import MemoryStore
from router.state.sqlite import SCHEMA_VERSION, SqliteStore
from tests.contract.state_helpers import delete_prefix, redis_client
from tests.servers.common import free_port

S = LedgerState
INST = "imap:sales@example.com"  # a ':' in the name on purpose


class StateStoreContract:
    """Every behaviour a state-store backend must have; subclass once per backend."""

    #: Subclasses provide a ``store`` fixture; False skips the damaged-entry test.
    supports_corruption = True

    def corrupt(self, store: StateStore, instance: str, key: str) -> None:
        """Overwrite the stored ledger entry ``key`` with garbage (invalid JSON, no state)."""
        raise NotImplementedError

    def corrupt_cursor(self, store: StateStore, instance: str) -> None:
        """Overwrite the stored cursor of ``instance`` with text that is not JSON."""
        raise NotImplementedError

    # -- leases ---------------------------------------------------------------------------------
    def test_two_holders_cannot_take_one_lease(self, store: StateStore) -> None:
        first = store.acquire_lease(INST, "worker-a", 30)
        assert first is not None
        assert store.acquire_lease(INST, "worker-b", 30) is None
        info = store.get_lease(INST)
        assert info is not None and (info.holder, info.token) == ("worker-a", first.token)

    def test_leases_of_different_instances_are_independent(self, store: StateStore) -> None:
        assert store.acquire_lease("one", "a", 30) is not None
        assert store.acquire_lease("two", "b", 30) is not None

    def test_expired_lease_can_be_taken_and_gets_a_larger_token(self, store: StateStore) -> None:
        old = store.acquire_lease(INST, "stalled", 0.15)
        assert old is not None
        time.sleep(0.3)
        assert store.get_lease(INST) is None
        new = store.acquire_lease(INST, "fresh", 30)
        assert new is not None and new.token > old.token

    def test_released_lease_can_be_taken_again_with_a_larger_token(self, store: StateStore) -> None:
        first = store.acquire_lease(INST, "a", 30)
        assert first is not None
        store.release_lease(first)
        assert store.get_lease(INST) is None
        second = store.acquire_lease(INST, "b", 30)
        assert second is not None and second.token > first.token

    def test_release_by_a_non_holder_does_nothing(self, store: StateStore) -> None:
        stale = store.acquire_lease(INST, "stalled", 0.15)
        assert stale is not None
        time.sleep(0.3)
        current = store.acquire_lease(INST, "fresh", 30)
        assert current is not None
        store.release_lease(stale)
        info = store.get_lease(INST)
        assert info is not None and info.token == current.token

    def test_renew_extends_a_held_lease_and_fails_once_lost(self, store: StateStore) -> None:
        lease = store.acquire_lease(INST, "a", 5)
        assert lease is not None
        renewed = store.renew_lease(lease, 60)
        assert renewed is not None and renewed.token == lease.token
        info = store.get_lease(INST)
        assert info is not None and info.expires_at > time.time() + 30
        store.release_lease(renewed)
        assert store.renew_lease(renewed, 30) is None

    # -- heartbeats -----------------------------------------------------------------------------
    def test_a_process_that_never_beat_is_unknown(self, store: StateStore) -> None:
        assert store.heartbeat_state("host-a:1") is HeartbeatState.UNKNOWN

    def test_a_process_is_alive_while_its_last_beat_lasts(self, store: StateStore) -> None:
        store.beat("host-a:1", 30, 3600)
        assert store.heartbeat_state("host-a:1") is HeartbeatState.ALIVE

    def test_a_heartbeat_lapses_after_its_ttl_but_is_remembered(self, store: StateStore) -> None:
        store.beat("host-a:1", 0.15, 3600)
        time.sleep(0.3)
        assert store.heartbeat_state("host-a:1") is HeartbeatState.LAPSED

    def test_a_lapsed_process_is_forgotten_after_the_memory_ends(self, store: StateStore) -> None:
        store.beat("host-a:1", 0.1, 0.2)
        time.sleep(0.35)
        assert store.heartbeat_state("host-a:1") is HeartbeatState.UNKNOWN

    def test_a_new_beat_brings_a_lapsed_process_back(self, store: StateStore) -> None:
        store.beat("host-a:1", 0.1, 3600)
        time.sleep(0.25)
        store.beat("host-a:1", 30, 3600)
        assert store.heartbeat_state("host-a:1") is HeartbeatState.ALIVE

    def test_heartbeats_of_processes_are_independent(self, store: StateStore) -> None:
        store.beat("host-a:1", 0.1, 3600)
        store.beat("host-a:12", 30, 3600)
        store.beat("host-b:1", 30, 3600)
        time.sleep(0.25)
        assert store.heartbeat_state("host-a:1") is HeartbeatState.LAPSED
        assert store.heartbeat_state("host-a:12") is HeartbeatState.ALIVE
        assert store.heartbeat_state("host-b:1") is HeartbeatState.ALIVE

    def test_a_heartbeat_is_not_an_instance(self, store: StateStore) -> None:
        store.beat("host-a:1", 30, 3600)
        assert store.instances() == []

    # -- mailbox lists loaded from the CRM --------------------------------------------------------
    def test_no_mailbox_list_reads_as_empty(self, store: StateStore) -> None:
        assert store.mailbox_lists() == {}

    def test_mailbox_lists_are_kept_per_deployment(self, store: StateStore) -> None:
        first = {"read_at": 1764316000.5, "records": [{"mailbox_id": "m1", "address": "a@x"}]}
        store.set_mailbox_list("Contoso", first)
        store.set_mailbox_list("Fabrikam:EU", {"read_at": 1.0, "records": []})
        assert store.mailbox_lists() == {
            "Contoso": first,
            "Fabrikam:EU": {"read_at": 1.0, "records": []},
        }

    def test_a_new_mailbox_list_replaces_the_last_one(self, store: StateStore) -> None:
        store.set_mailbox_list("Contoso", {"read_at": 1.0, "records": [{"mailbox_id": "m1"}]})
        store.set_mailbox_list("Contoso", {"read_at": 2.0, "records": []})
        assert store.mailbox_lists() == {"Contoso": {"read_at": 2.0, "records": []}}

    def test_a_mailbox_list_is_not_an_instance(self, store: StateStore) -> None:
        store.set_mailbox_list("Contoso", {"read_at": 1.0, "records": []})
        assert store.instances() == []

    # -- fenced cursor and provider state -------------------------------------------------------
    def test_cursor_round_trips_exactly(self, store: StateStore) -> None:
        lease = store.acquire_lease(INST, "a", 30)
        assert lease is not None and store.get_cursor(INST) is None
        cursor = {"uidvalidity": 7, "uid": 12345678901234567, "at": 1764316000.123456, "l": []}
        store.set_cursor(lease, cursor)
        assert store.get_cursor(INST) == cursor

    def test_writer_with_a_stale_lease_cannot_move_the_cursor(self, store: StateStore) -> None:
        stale = self._take_over(store)
        with pytest.raises(LeaseLost):
            store.set_cursor(stale, {"uid": 1})
        assert store.get_cursor(INST) == {"uid": 99}

    def test_writer_with_a_stale_lease_cannot_set_provider_state(self, store: StateStore) -> None:
        stale = self._take_over(store)
        with pytest.raises(LeaseLost):
            store.set_provider_state(stale, {"seen": ["x"]})
        assert store.get_provider_state(INST) == {"seen": ["new"]}

    def test_writer_without_any_lease_cannot_write(self, store: StateStore) -> None:
        lease = store.acquire_lease(INST, "a", 30)
        assert lease is not None
        store.release_lease(lease)
        with pytest.raises(LeaseLost):
            store.set_cursor(lease, {"uid": 1})

    def _take_over(self, store: StateStore) -> Any:
        """A stalled worker's lease expires and another worker writes newer state."""
        stale = store.acquire_lease(INST, "stalled", 0.5)  # long enough for one write
        assert stale is not None
        store.set_cursor(stale, {"uid": 5})
        time.sleep(0.65)
        fresh = store.acquire_lease(INST, "fresh", 30)
        assert fresh is not None
        store.set_cursor(fresh, {"uid": 99})
        store.set_provider_state(fresh, {"seen": ["new"]})
        return stale

    def test_reset_instance_forgets_cursor_and_provider_state_but_not_the_ledger(
        self, store: StateStore
    ) -> None:
        lease = store.acquire_lease(INST, "a", 30)
        assert lease is not None
        store.set_cursor(lease, {"uid": 3})
        store.set_provider_state(lease, {"k": 1})
        store.stage(INST, "m1", b"x")
        store.reset_instance(INST)
        assert store.get_cursor(INST) is None
        assert store.get_provider_state(INST) == {}
        assert store.get_entry(INST, "m1") is not None

    # -- ledger ---------------------------------------------------------------------------------
    def test_stage_is_idempotent_and_keeps_the_first_bytes(self, store: StateStore) -> None:
        assert store.stage(INST, "1:10", b"first", message_id="<a@x>") is True
        assert store.stage(INST, "1:10", b"second") is False
        assert store.get_raw(INST, "1:10") == b"first"
        entry = store.get_entry(INST, "1:10")
        assert entry is not None
        assert (entry.state, entry.message_id) == (S.STAGED, "<a@x>")

    def test_stage_keeps_binary_bytes_exactly(self, store: StateStore) -> None:
        raw = bytes(range(256)) * 4
        store.stage(INST, "bin", raw)
        assert store.get_raw(INST, "bin") == raw

    def test_create_entry_claims_once(self, store: StateStore) -> None:
        claimed = store.create_entry(INST, "email-1", S.CLAIMED, attempts=1)
        assert claimed is not None and claimed.attempts == 1
        assert store.create_entry(INST, "email-1", S.CLAIMED) is None
        assert store.get_raw(INST, "email-1") is None

    def test_transition_moves_from_an_expected_state(self, store: StateStore) -> None:
        store.stage(INST, "k", b"x", message_id="<m@x>")
        moved = store.transition(INST, "k", [S.STAGED], S.DELIVERED, activity_id="act-1")
        assert moved is not None
        assert (moved.state, moved.activity_id, moved.message_id) == (
            S.DELIVERED,
            "act-1",
            "<m@x>",
        )
        assert store.get_entry(INST, "k") == moved

    def test_transition_from_a_wrong_state_changes_nothing(self, store: StateStore) -> None:
        store.stage(INST, "k", b"x")
        before = store.get_entry(INST, "k")
        assert store.transition(INST, "k", [S.DELIVERED, S.DONE], S.DONE, reason="no") is None
        assert store.get_entry(INST, "k") == before

    def test_transition_of_a_missing_entry_returns_none(self, store: StateStore) -> None:
        assert store.transition(INST, "nope", [S.STAGED], S.DONE) is None
        assert store.get_entry(INST, "nope") is None

    def test_transition_merges_extra_and_clears_fields_set_to_none(self, store: StateStore) -> None:
        store.create_entry(INST, "k", S.CLAIMED, reason="why", extra={"a": [1], "b": {}})
        moved = store.transition(
            INST, "k", [S.CLAIMED], S.RETRY, reason=None, attempts=2, extra={"b": [], "c": 0.5}
        )
        assert moved is not None
        assert (moved.reason, moved.attempts) == (None, 2)
        assert moved.extra == {"a": [1], "b": [], "c": 0.5}
        assert store.get_entry(INST, "k") == moved

    def test_transition_stamps_updated_at(self, store: StateStore) -> None:
        store.stage(INST, "k", b"x")
        before = store.get_entry(INST, "k")
        time.sleep(0.01)
        moved = store.transition(INST, "k", [S.STAGED], S.DELIVERED)
        assert before is not None and moved is not None
        assert moved.updated_at > before.updated_at

    def test_concurrent_transitions_have_exactly_one_winner(self, store: StateStore) -> None:
        store.stage(INST, "race", b"x")
        barrier = threading.Barrier(8)
        results: list[object] = []

        def contender(n: int) -> None:
            barrier.wait(5)
            results.append(
                store.transition(INST, "race", [S.STAGED], S.DELIVERED, activity_id=f"a{n}")
            )

        threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        winners = [r for r in results if r is not None]
        assert len(results) == 8 and len(winners) == 1
        assert store.get_entry(INST, "race") == winners[0]

    def test_list_entries_keeps_creation_order_and_filters_by_state(
        self, store: StateStore
    ) -> None:
        keys = ["z", "a", "m:1", "b", "c"]
        for key in keys:
            store.stage(INST, key, b"x")
        store.transition(INST, "a", [S.STAGED], S.DELIVERED)
        store.transition(INST, "b", [S.STAGED], S.QUARANTINED, reason="bad")
        assert [e.key for e in store.list_entries(INST)] == keys
        staged = store.list_entries(INST, [S.STAGED])
        assert [e.key for e in staged] == ["z", "m:1", "c"]
        done_or_q = store.list_entries(INST, [S.DELIVERED, S.QUARANTINED])
        assert [e.key for e in done_or_q] == ["a", "b"]
        assert [e.key for e in store.list_entries(INST, [S.STAGED], limit=2)] == ["z", "m:1"]
        assert [e.key for e in store.list_entries(INST, limit=1)] == ["z"]
        assert store.list_entries(INST, []) == []

    def test_list_with_a_limit_merges_states_in_creation_order(self, store: StateStore) -> None:
        for n in range(8):
            store.stage(INST, f"k{n}", b"x")
        for n in (1, 2, 5):
            store.transition(INST, f"k{n}", [S.STAGED], S.DELIVERED)
        store.transition(INST, "k3", [S.STAGED], S.DONE)
        listed = store.list_entries(INST, [S.DELIVERED, S.STAGED], limit=4)
        assert [e.key for e in listed] == ["k0", "k1", "k2", "k4"]
        assert [e.key for e in store.list_entries(INST, [S.DONE, S.DELIVERED], limit=2)] == [
            "k1",
            "k2",
        ]

    def test_a_long_history_lists_counts_and_purges_consistently(self, store: StateStore) -> None:
        for n in range(600):  # > one 500-key chunk of the Redis scripts
            store.stage(INST, f"m{n}", b"x")
            if n % 3:
                store.transition(INST, f"m{n}", [S.STAGED], S.DONE)
        assert store.count_entries(INST) == {S.STAGED: 200, S.DONE: 400}
        oldest = store.list_entries(INST, [S.STAGED], limit=3)
        assert [e.key for e in oldest] == ["m0", "m3", "m6"]
        assert len(store.list_entries(INST)) == 600
        assert store.purge(INST, [S.DONE], time.time() + 1) == 400
        assert store.count_entries(INST) == {S.STAGED: 200}
        assert [e.key for e in store.list_entries(INST, limit=2)] == ["m0", "m3"]

    def test_creation_order_survives_deleting_the_newest_entry(self, store: StateStore) -> None:
        for key in ["a", "b", "c"]:
            store.stage(INST, key, b"x")
        store.delete_entry(INST, "c")
        store.stage(INST, "d", b"x")
        assert [e.key for e in store.list_entries(INST)] == ["a", "b", "d"]

    def test_count_entries_counts_per_state(self, store: StateStore) -> None:
        assert store.count_entries(INST) == {}
        for key in ["a", "b", "c"]:
            store.stage(INST, key, b"x")
        store.transition(INST, "a", [S.STAGED], S.DONE)
        assert store.count_entries(INST) == {S.STAGED: 2, S.DONE: 1}

    def test_drop_raw_keeps_the_entry(self, store: StateStore) -> None:
        store.stage(INST, "k", b"bytes")
        store.drop_raw(INST, "k")
        assert store.get_raw(INST, "k") is None
        assert store.get_entry(INST, "k") is not None
        assert store.stage(INST, "k", b"again") is False

    def test_delete_entry_removes_entry_and_bytes(self, store: StateStore) -> None:
        store.stage(INST, "k", b"bytes")
        store.delete_entry(INST, "k")
        assert store.get_entry(INST, "k") is None
        assert store.get_raw(INST, "k") is None
        assert store.list_entries(INST) == []
        assert store.stage(INST, "k", b"new") is True

    def test_instances_keep_their_ledgers_apart(self, store: StateStore) -> None:
        store.stage("a", "k", b"from a")
        store.stage("a:k", "x", b"colon")
        assert store.stage("b", "k", b"from b") is True
        assert store.get_raw("a", "k") == b"from a"
        assert [e.key for e in store.list_entries("a")] == ["k"]
        assert [e.key for e in store.list_entries("a:k")] == ["x"]

    # -- Message-ID index, counters, housekeeping -----------------------------------------------
    def test_message_id_index_finds_the_sending_entry(self, store: StateStore) -> None:
        assert store.lookup_message_id("<x@y>") is None
        store.index_message_id("<x@y>", "smtp:out", "email-7")
        assert store.lookup_message_id("<x@y>") == ("smtp:out", "email-7")

    def test_record_poll_counts_and_stamps(self, store: StateStore) -> None:
        assert store.get_stats(INST).processed == 0
        store.record_poll(INST, processed=3)
        ok = store.get_stats(INST)
        assert ok.processed == 3 and ok.last_success is not None and ok.last_error is None
        store.record_poll(INST, processed=2, error="ProviderUnavailable: timeout")
        failed = store.get_stats(INST)
        assert failed.processed == 5
        assert failed.last_error == "ProviderUnavailable: timeout"
        assert failed.last_error_at is not None and failed.last_poll == failed.last_error_at
        assert failed.last_success == ok.last_success

    def test_begin_poll_takes_the_lease_and_reads_what_a_cycle_starts_from(
        self, store: StateStore
    ) -> None:
        # Given a cursor, a provider state and entries in several states
        lease = store.acquire_lease(INST, "a", 30)
        assert lease is not None
        store.set_cursor(lease, {"uid": 7})
        store.set_provider_state(lease, {"uidvalidity": 42})
        store.release_lease(lease)
        for key in ["staged", "delivered", "skipped"]:
            store.stage(INST, key, b"x")
        store.transition(INST, "delivered", [S.STAGED], S.DELIVERED)
        store.transition(INST, "skipped", [S.STAGED], S.SKIPPED)
        # When a poll begins, asking for the delivered and skipped entries
        start = store.begin_poll(INST, "b", 30, [S.DELIVERED, S.SKIPPED])
        # Then it holds a lease with a larger token and read all three parts
        assert start is not None and start.lease.holder == "b"
        assert start.lease.token > lease.token and start.lease.expires_at > time.time() + 20
        assert (start.cursor, start.provider_state) == ({"uid": 7}, {"uidvalidity": 42})
        assert [(e.key, e.state) for e in start.entries] == [
            ("delivered", S.DELIVERED), ("skipped", S.SKIPPED)
        ]  # fmt: skip
        # And the lease is really held: a second poll gets nothing, the fenced writes work
        assert store.begin_poll(INST, "c", 30, [S.DELIVERED]) is None
        store.set_cursor(start.lease, {"uid": 8})

    def test_begin_poll_of_a_new_instance_reads_empty_state(self, store: StateStore) -> None:
        start = store.begin_poll(INST, "a", 30, [S.DELIVERED])
        assert start is not None
        assert (start.cursor, start.provider_state, start.entries) == (None, {}, [])

    def test_end_poll_releases_records_and_peeks(self, store: StateStore) -> None:
        # Given a poll that staged two messages
        start = store.begin_poll(INST, "a", 30, [S.DELIVERED])
        assert start is not None
        store.stage(INST, "first", b"x")
        store.stage(INST, "second", b"y")
        # When it ends having delivered one of them (counted), and then one with an error
        after = store.end_poll(start.lease, processed=1)
        # Then the lease is free, the counters are stamped, and the oldest staged entry is seen
        assert store.get_lease(INST) is None
        assert after.stats.processed == 1 and after.stats.last_success is not None
        first = store.get_entry(INST, "first")
        assert first is not None and after.oldest_staged == first.updated_at
        again = store.begin_poll(INST, "b", 30, [S.DELIVERED])
        assert again is not None
        failed = store.end_poll(again.lease, error="ProviderUnavailable: timeout")
        assert (
            failed.stats.processed == 1
            and failed.stats.last_error == "ProviderUnavailable: timeout"
        )
        assert failed.stats.last_success == after.stats.last_success

    def test_end_poll_with_a_lost_lease_leaves_the_new_holder_alone(
        self, store: StateStore
    ) -> None:
        old = store.begin_poll(INST, "a", 0.05, [])
        assert old is not None
        time.sleep(0.1)
        new = store.begin_poll(INST, "b", 30, [])
        assert new is not None
        assert store.end_poll(old.lease).oldest_staged is None
        info = store.get_lease(INST)
        assert info is not None and info.holder == "b"

    def test_instances_lists_everything_the_store_holds(self, store: StateStore) -> None:
        store.stage("ledger-only", "k", b"x")
        store.record_poll("stats-only")
        assert store.acquire_lease("lease-only", "a", 30) is not None
        assert {"ledger-only", "stats-only", "lease-only"} <= set(store.instances())
        assert store.instances() == sorted(store.instances())

    def test_purge_deletes_old_entries_in_the_given_states_only(self, store: StateStore) -> None:
        for key in ["done", "staged", "quarantined"]:
            store.stage(INST, key, b"x")
        store.transition(INST, "done", [S.STAGED], S.DONE)
        store.transition(INST, "quarantined", [S.STAGED], S.QUARANTINED)
        assert store.purge(INST, [S.DONE, S.QUARANTINED], time.time() - 3600) == 0
        assert store.purge(INST, [S.DONE], time.time() + 1) == 1
        assert store.get_entry(INST, "done") is None
        assert store.get_raw(INST, "done") is None
        assert [e.key for e in store.list_entries(INST)] == ["staged", "quarantined"]

    def test_ping_succeeds_on_a_reachable_store(self, store: StateStore) -> None:
        store.ping()

    # -- damaged entries ------------------------------------------------------------------------
    def test_damaged_entry_is_isolated(self, store: StateStore) -> None:
        if not self.supports_corruption:
            pytest.skip("this backend stores objects, nothing can be damaged")
        for key in ["a", "bad", "c"]:
            store.stage(INST, key, b"x")
        self.corrupt(store, INST, "bad")
        with pytest.raises(StateCorrupt) as info:
            store.get_entry(INST, "bad")
        assert "bad" in str(info.value)
        with pytest.raises(StateCorrupt):
            store.transition(INST, "bad", [S.STAGED], S.DELIVERED)
        assert [e.key for e in store.list_entries(INST)] == ["a", "c"]
        assert [e.key for e in store.list_entries(INST, [S.STAGED], limit=2)] == ["a", "c"]
        # counts come from an index where the backend keeps one: the damaged entry may count
        assert store.count_entries(INST)[S.STAGED] in (2, 3)
        assert store.transition(INST, "c", [S.STAGED], S.DELIVERED) is not None
        store.delete_entry(INST, "bad")
        assert store.get_entry(INST, "bad") is None

    def test_damaged_cursor_raises_state_corrupt_and_can_be_overwritten(
        self, store: StateStore
    ) -> None:
        if not self.supports_corruption:
            pytest.skip("this backend stores objects, nothing can be damaged")
        lease = store.acquire_lease(INST, "a", 30)
        assert lease is not None
        store.set_cursor(lease, {"uid": 1})
        self.corrupt_cursor(store, INST)
        with pytest.raises(StateCorrupt):
            store.get_cursor(INST)
        store.set_cursor(lease, {"uid": 2})
        assert store.get_cursor(INST) == {"uid": 2}


class TestMemoryStore(StateStoreContract):
    supports_corruption = False

    @pytest.fixture
    def store(self) -> Iterator[StateStore]:
        yield MemoryStore()


class TestSqliteStore(StateStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[StateStore]:
        store = SqliteStore(tmp_path / "state.db")
        yield store
        store.close()

    def corrupt(self, store: StateStore, instance: str, key: str) -> None:
        assert isinstance(store, SqliteStore)
        store._conn().execute(
            "UPDATE ledger SET state = 'st?ged', data = '{\"m\": broken'"
            " WHERE instance = ? AND key = ?",
            (instance, key),
        )

    def corrupt_cursor(self, store: StateStore, instance: str) -> None:
        assert isinstance(store, SqliteStore)
        store._conn().execute("UPDATE cursors SET value = '{uid' WHERE instance = ?", (instance,))

    def test_purge_forgets_message_ids_older_than_the_ttl(self, tmp_path: Path) -> None:
        now = [1_000_000.0]
        store = SqliteStore(tmp_path / "aged.db", clock=lambda: now[0])
        store.index_message_id("<old@x>", "out", "e1")
        now[0] += MSGID_TTL - 10
        store.index_message_id("<new@x>", "out", "e2")
        now[0] += 20
        store.purge("out", [S.SENT], now[0])
        assert store.lookup_message_id("<old@x>") is None
        assert store.lookup_message_id("<new@x>") == ("out", "e2")
        store.close()

    def test_schema_version_is_recorded_and_a_newer_one_refused(self, tmp_path: Path) -> None:
        db = tmp_path / "v.db"
        SqliteStore(db).close()
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
            conn.execute("UPDATE meta SET value = ?", (str(SCHEMA_VERSION + 1),))
        with pytest.raises(StateUnavailable, match="newer"):
            SqliteStore(db)

    def test_a_read_only_store_from_before_mailbox_lists_reads_none(self, tmp_path: Path) -> None:
        db = tmp_path / "old.db"
        SqliteStore(db).close()
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE mailbox_lists")
        store = SqliteStore(db, create=False)
        assert store.mailbox_lists() == {}
        store.close()

    def test_a_damaged_mailbox_list_is_left_out(self, store: StateStore) -> None:
        assert isinstance(store, SqliteStore)
        store.set_mailbox_list("Good", {"read_at": 1.0, "records": []})
        store._conn().execute("INSERT INTO mailbox_lists VALUES ('Bad', '{broken')")
        assert store.mailbox_lists() == {"Good": {"read_at": 1.0, "records": []}}

    def test_connections_of_finished_threads_are_closed(self, store: StateStore) -> None:
        assert isinstance(store, SqliteStore)
        for n in range(30):
            worker = threading.Thread(target=store.record_poll, args=(f"i{n}",))
            worker.start()
            worker.join(10)
        assert len(store._all) <= 2
        assert len(store.instances()) == 30

    def test_a_forked_child_uses_its_own_connection(self, store: StateStore) -> None:
        assert isinstance(store, SqliteStore)
        store.stage(INST, "parent", b"p")
        pid = os.fork()
        if pid == 0:  # child: write through the inherited store object, then leave at once
            code = 0 if store.stage(INST, "child", b"c") else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get_raw(INST, "child") == b"c"
        assert [e.key for e in store.list_entries(INST)] == ["parent", "child"]

    def test_database_uses_wal_with_full_sync(self, store: StateStore) -> None:
        assert isinstance(store, SqliteStore)
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


@pytest.mark.redis
class TestRedisStore(StateStoreContract):
    @pytest.fixture
    def store(self, redis_url: str) -> Iterator[StateStore]:
        from router.state.redis import RedisStore

        prefix = f"test-{uuid.uuid4().hex[:12]}"
        store = RedisStore.from_url(redis_url, prefix=prefix)
        yield store
        store.close()
        delete_prefix(redis_url, store.keys)

    def corrupt(self, store: StateStore, instance: str, key: str) -> None:
        from router.state.redis import RedisStore

        assert isinstance(store, RedisStore)
        store._r.hset(store.keys.ledger(instance), key, '{"s": broken')

    def corrupt_cursor(self, store: StateStore, instance: str) -> None:
        from router.state.redis import RedisStore

        assert isinstance(store, RedisStore)
        store._r.set(store.keys.cursor(instance), b"\xff{uid")

    def test_message_ids_expire_after_the_ttl(self, store: StateStore, redis_url: str) -> None:
        from router.state.redis import RedisStore

        assert isinstance(store, RedisStore)
        store.index_message_id("<x@y>", "out", "e1")
        ttl = redis_client(redis_url).ttl(store.keys.msgid("<x@y>"))
        assert MSGID_TTL - 60 < ttl <= MSGID_TTL

    def test_a_heartbeat_key_lives_as_long_as_the_process_is_remembered(
        self, store: StateStore, redis_url: str
    ) -> None:
        from router.state.redis import RedisStore

        assert isinstance(store, RedisStore)
        store.beat("host-a:1", 15, 600)
        pttl = redis_client(redis_url).pttl(store.keys.heartbeat("host-a:1"))
        assert 590_000 < pttl <= 600_000

    def test_unreachable_server_raises_state_unavailable(self) -> None:
        from router.state.redis import RedisStore

        url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
        store = RedisStore.from_url(url, socket_connect_timeout=1)
        for call in (store.ping, lambda: store.get_cursor("x"), lambda: store.stage("x", "k", b"")):
            with pytest.raises(StateUnavailable) as info:
                call()
            assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(store)

    def test_idle_instance_uses_little_redis_memory(
        self, store: StateStore, redis_url: str
    ) -> None:
        from router.state.redis import RedisStore

        assert isinstance(store, RedisStore)
        lease = store.acquire_lease(INST, "host:1234:5678", 30)
        assert lease is not None
        store.set_cursor(lease, {"uidvalidity": 1700000000, "uid": 123456})
        store.set_provider_state(lease, {"uidnext": 123457})
        store.record_poll(INST, processed=10)
        store.release_lease(lease)
        client = redis_client(redis_url)
        used = sum(
            int(client.memory_usage(key) or 0) for key in client.scan_iter(store.keys.pattern())
        )
        assert 0 < used < 2048
