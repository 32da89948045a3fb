"""In-process state store: the reference implementation of the protocol, for unit tests.

Use :class:`MemoryStore` when nothing must survive the process (tests, ``poll --dry-run``). Every
method takes one lock, which makes each call atomic like the Lua scripts of the Redis backend.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from router.errors import LeaseLost
from router.models import LedgerEntry, LedgerState
from router.state.base import HeartbeatState, InstanceStats, JsonDict, Lease, LeaseInfo, StateStore

ENTRY_FIELDS = frozenset({"message_id", "activity_id", "reason", "attempts", "extra"})


def apply_fields(entry: LedgerEntry, fields: dict[str, Any], now: float) -> LedgerEntry:
    """Return ``entry`` with ``fields`` applied (``extra`` merged) and ``updated_at`` = now."""
    unknown = set(fields) - ENTRY_FIELDS
    if unknown:
        raise TypeError(f"unknown ledger fields: {sorted(unknown)}")
    values = {k: v for k, v in fields.items() if k != "extra"}
    if "extra" in fields:
        values["extra"] = {**entry.extra, **(fields["extra"] or {})}
    return replace(entry, updated_at=now, **values)


class MemoryStore(StateStore):
    """Dictionary-backed state store; ``clock`` can be replaced to test expiry."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._leases: dict[str, Lease] = {}
        self._tokens: dict[str, int] = {}
        self._cursors: dict[str, JsonDict] = {}
        self._pstate: dict[str, JsonDict] = {}
        self._stats: dict[str, InstanceStats] = {}
        self._ledger: dict[str, dict[str, LedgerEntry]] = {}
        self._raw: dict[tuple[str, str], bytes] = {}
        self._msgids: dict[str, tuple[str, str]] = {}
        #: process -> (alive until, forgotten at)
        self._heartbeats: dict[str, tuple[float, float]] = {}
        self._mailbox_lists: dict[str, JsonDict] = {}

    # -- leases ---------------------------------------------------------------------------------
    def _live_lease(self, instance: str) -> Lease | None:
        lease = self._leases.get(instance)
        if lease is not None and lease.expires_at <= self._clock():
            return None
        return lease

    def acquire_lease(self, instance: str, holder: str, ttl: float) -> Lease | None:
        with self._lock:
            if self._live_lease(instance) is not None:
                return None
            token = self._tokens.get(instance, 0) + 1
            self._tokens[instance] = token
            lease = Lease(instance, holder, token, self._clock() + ttl)
            self._leases[instance] = lease
            return lease

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        with self._lock:
            if not self._holds(lease):
                return None
            renewed = replace(lease, expires_at=self._clock() + ttl)
            self._leases[lease.instance] = renewed
            return renewed

    def release_lease(self, lease: Lease) -> None:
        with self._lock:
            if self._holds(lease):
                del self._leases[lease.instance]

    def get_lease(self, instance: str) -> LeaseInfo | None:
        with self._lock:
            lease = self._live_lease(instance)
            return LeaseInfo(lease.holder, lease.token, lease.expires_at) if lease else None

    def _holds(self, lease: Lease) -> bool:
        live = self._live_lease(lease.instance)
        return live is not None and live.token == lease.token

    def _check(self, lease: Lease) -> None:
        if not self._holds(lease):
            raise LeaseLost(f"lease of {lease.instance} (token {lease.token}) is no longer held")

    # -- cursor and provider state --------------------------------------------------------------
    def get_cursor(self, instance: str) -> JsonDict | None:
        with self._lock:
            cursor = self._cursors.get(instance)
            return copy.deepcopy(cursor) if cursor is not None else None

    def set_cursor(self, lease: Lease, cursor: JsonDict) -> None:
        with self._lock:
            self._check(lease)
            self._cursors[lease.instance] = copy.deepcopy(cursor)

    def get_provider_state(self, instance: str) -> JsonDict:
        with self._lock:
            return copy.deepcopy(self._pstate.get(instance, {}))

    def set_provider_state(self, lease: Lease, state: JsonDict) -> None:
        with self._lock:
            self._check(lease)
            self._pstate[lease.instance] = copy.deepcopy(state)

    def reset_instance(self, instance: str) -> None:
        with self._lock:
            self._cursors.pop(instance, None)
            self._pstate.pop(instance, None)

    # -- counters -------------------------------------------------------------------------------
    def record_poll(self, instance: str, *, processed: int = 0, error: str | None = None) -> None:
        with self._lock:
            now, old = self._clock(), self._stats.get(instance, InstanceStats())
            if error is None:
                new = replace(
                    old, processed=old.processed + processed, last_poll=now, last_success=now
                )
            else:
                new = replace(
                    old,
                    processed=old.processed + processed,
                    last_poll=now,
                    last_error=error,
                    last_error_at=now,
                )
            self._stats[instance] = new

    def get_stats(self, instance: str) -> InstanceStats:
        with self._lock:
            return self._stats.get(instance, InstanceStats())

    # -- ledger ---------------------------------------------------------------------------------
    def stage(self, instance: str, key: str, raw: bytes, *, message_id: str | None = None) -> bool:
        with self._lock:
            created = self.create_entry(instance, key, LedgerState.STAGED, message_id=message_id)
            if created is not None:
                self._raw[(instance, key)] = bytes(raw)
            return created is not None

    def create_entry(
        self, instance: str, key: str, state: LedgerState, **fields: Any
    ) -> LedgerEntry | None:
        with self._lock:
            entries = self._ledger.setdefault(instance, {})
            if key in entries:
                return None
            entry = apply_fields(LedgerEntry(instance, key, state, 0.0), fields, self._clock())
            entries[key] = entry
            return entry

    def get_entry(self, instance: str, key: str) -> LedgerEntry | None:
        with self._lock:
            return self._ledger.get(instance, {}).get(key)

    def transition(
        self,
        instance: str,
        key: str,
        expect: Iterable[LedgerState],
        to: LedgerState,
        **fields: Any,
    ) -> LedgerEntry | None:
        with self._lock:
            entry = self.get_entry(instance, key)
            if entry is None or entry.state not in set(expect):
                return None
            new = apply_fields(replace(entry, state=to), fields, self._clock())
            self._ledger[instance][key] = new
            return new

    def list_entries(
        self,
        instance: str,
        states: Iterable[LedgerState] | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        wanted = set(states) if states is not None else None
        with self._lock:
            rows = [
                e
                for e in self._ledger.get(instance, {}).values()
                if wanted is None or e.state in wanted
            ]
        return rows[:limit] if limit is not None else rows

    def count_entries(self, instance: str) -> dict[LedgerState, int]:
        counts: dict[LedgerState, int] = {}
        for entry in self.list_entries(instance):
            counts[entry.state] = counts.get(entry.state, 0) + 1
        return counts

    def get_raw(self, instance: str, key: str) -> bytes | None:
        with self._lock:
            return self._raw.get((instance, key))

    def drop_raw(self, instance: str, key: str) -> None:
        with self._lock:
            self._raw.pop((instance, key), None)

    def delete_entry(self, instance: str, key: str) -> None:
        with self._lock:
            self._ledger.get(instance, {}).pop(key, None)
            self._raw.pop((instance, key), None)

    # -- Message-ID index -----------------------------------------------------------------------
    def index_message_id(self, message_id: str, instance: str, key: str) -> None:
        with self._lock:
            self._msgids[message_id] = (instance, key)

    def lookup_message_id(self, message_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._msgids.get(message_id)

    # -- heartbeats -----------------------------------------------------------------------------
    def beat(self, process: str, ttl: float, remember: float) -> None:
        with self._lock:
            now = self._clock()
            self._heartbeats = {p: v for p, v in self._heartbeats.items() if v[1] > now}
            self._heartbeats[process] = (now + ttl, now + remember)

    def heartbeat_state(self, process: str) -> HeartbeatState:
        with self._lock:
            alive_until, forget_at = self._heartbeats.get(process, (0.0, 0.0))
            now = self._clock()
            if forget_at <= now:
                return HeartbeatState.UNKNOWN
            return HeartbeatState.ALIVE if alive_until > now else HeartbeatState.LAPSED

    # -- mailboxes loaded from the CRM ----------------------------------------------------------
    def set_mailbox_list(self, deployment: str, snapshot: JsonDict) -> None:
        with self._lock:
            self._mailbox_lists[deployment] = copy.deepcopy(snapshot)

    def mailbox_lists(self) -> dict[str, JsonDict]:
        with self._lock:
            return copy.deepcopy(self._mailbox_lists)

    # -- housekeeping ---------------------------------------------------------------------------
    def instances(self) -> list[str]:
        with self._lock:
            names = set(self._ledger) | set(self._cursors) | set(self._stats) | set(self._leases)
            return sorted(names)

    def purge(self, instance: str, states: Iterable[LedgerState], older_than: float) -> int:
        wanted = set(states)
        with self._lock:
            doomed = [
                e.key
                for e in self.list_entries(instance)
                if e.state in wanted and e.updated_at < older_than
            ]
            for key in doomed:
                self.delete_entry(instance, key)
            return len(doomed)
