"""The StateStore protocol every backend implements (memory, SQLite, Redis).

Use :class:`StateStore` as the base class of a backend. It holds, per instance:

* a **lease** (one holder at a time, with a fencing ``token`` that only grows),
* a **cursor** and **provider state** (small JSON objects) whose writes are fenced by the lease:
  a writer whose lease expired or was taken over cannot overwrite newer state,
* **counters** (messages processed, last poll, last success, last error),
* the **idempotency ledger**: one :class:`~router.models.LedgerEntry` per message, moved between
  :class:`~router.models.LedgerState` values by atomic compare-and-set,
* **staged raw messages**: the bytes of a message held until the CRM has it,
* a global **Message-ID index** (what an outgoing instance sent, so a bounce arriving at any
  incoming instance finds the CRM email to mark Failed),
* **heartbeats**: per process, whether it beat within its TTL (what tells a dead lease holder
  from a live one, on any host),
* **mailbox lists**: per Deployment, the CRM mailbox records a runtime last read for its
  ``<LoadMailboxes>`` (what the read-only commands show; never a credential).

All writes are atomic: a crash leaves either the old or the new value, never a mix. A stored value
that cannot be decoded raises :class:`~router.errors.StateCorrupt` for that entry only.

A store is storage, not policy: which ledger moves are allowed, when a lease is taken and for how
long, and how keys and holders are named belong to :mod:`router.ledger`, the only code that
writes the ledger, the Message-ID index and leases. A backend implements every abstract method
below with the atomicity each one states and passes the contract suite
(``tests/contract/test_state_store.py``: one test class run against every backend). Pick one
with :func:`router.state.factory.open_store`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from router.models import LedgerEntry, LedgerState

#: A cursor or provider state: a small JSON object the store keeps as it is given.
JsonDict = dict[str, Any]

#: How long a Message-ID index entry must stay findable (bounces and re-deliveries come back
#: within days); persistent backends may forget older ones so the index does not grow forever.
MSGID_TTL = 60 * 86400


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that ``holder`` may work on ``instance`` until ``expires_at`` (epoch seconds).

    Returned by :meth:`StateStore.acquire_lease`; the fenced writes (cursor, provider state)
    take it, and the ``token`` tells a current holder from a stalled one.
    """

    instance: str
    holder: str
    token: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """Who holds an instance's lease right now (for ``email-router status``)."""

    holder: str
    token: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """Counters of one instance, written by :meth:`StateStore.record_poll` after every cycle
    and read by ``email-router status`` / ``state show`` and the pause-after-error rule."""

    processed: int = 0
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True)
class InstancePeek:
    """What a batch of polls reads of one instance before polling it (:meth:`StateStore.peek`).

    Its counters (for the pause rule) and when its oldest STAGED entry was staged (None: none),
    so an idle poll in a batch need not ask for either on its own.
    """

    stats: InstanceStats
    oldest_staged: float | None


@dataclass(frozen=True, slots=True)
class PollStart:
    """What a poll cycle starts from, read right after its lease was taken
    (:meth:`StateStore.begin_poll`): the lease, the cursor, the provider state, and the
    entries in the states the caller asked for (those due for post-processing)."""

    lease: Lease
    cursor: JsonDict | None
    provider_state: JsonDict
    entries: list[LedgerEntry]


class HeartbeatState(enum.Enum):
    """What the store knows of a process's heartbeat (:meth:`StateStore.heartbeat_state`)."""

    #: its last beat's TTL has not run out
    ALIVE = "alive"
    #: it beat once, but not within its TTL: it died, hangs or lost the store
    LAPSED = "lapsed"
    #: it never beat (a one-off command, an older version) or was forgotten long ago
    UNKNOWN = "unknown"


class StateStore(abc.ABC):
    """Base class of state-store backends; see the module docstring for what it holds.

    Subclass it for a new backend (the memory store is the reference). One store object is
    shared by every thread of a process, and several processes may share the data (Redis,
    SQLite): each method is safe for both.
    """

    # -- leases ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def acquire_lease(self, instance: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease for ``ttl`` seconds, or return None while someone else holds it.

        Called at the start of every cycle (by the ledger's lease moves). An expired lease may
        be taken; each grant gets a ``token`` larger than any before for that instance.
        """

    @abc.abstractmethod
    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease still held (same token); None when it was lost.

        Long cycles call it between steps so the lease outlives their work.
        """

    @abc.abstractmethod
    def release_lease(self, lease: Lease) -> None:
        """Give the lease up if still held with this token; otherwise do nothing.

        Called when a cycle ends, so the next one need not wait for the lease to expire.
        """

    @abc.abstractmethod
    def get_lease(self, instance: str) -> LeaseInfo | None:
        """Return the current, unexpired lease of ``instance`` (None when free).

        For reports only (a busy cycle, ``status``, ``state``): never a reason to write.
        """

    # -- cursor and provider state (fenced) -----------------------------------------------------
    @abc.abstractmethod
    def get_cursor(self, instance: str) -> JsonDict | None:
        """Return the instance's cursor, or None before its first poll (read every poll)."""

    @abc.abstractmethod
    def set_cursor(self, lease: Lease, cursor: JsonDict) -> None:
        """Store the cursor; raises LeaseLost unless ``lease`` is still the current lease.

        Called once staged messages are durable; the check and the write are one atomic step.
        """

    @abc.abstractmethod
    def get_provider_state(self, instance: str) -> JsonDict:
        """Return the provider-defined state ({} when none), read with the cursor every poll."""

    @abc.abstractmethod
    def set_provider_state(self, lease: Lease, state: JsonDict) -> None:
        """Store provider-defined state; raises LeaseLost like set_cursor."""

    @abc.abstractmethod
    def reset_instance(self, instance: str) -> None:
        """Forget cursor and provider state (not the ledger): ``email-router state reset``."""

    # -- counters -------------------------------------------------------------------------------
    @abc.abstractmethod
    def record_poll(self, instance: str, *, processed: int = 0, error: str | None = None) -> None:
        """Count a finished cycle: add ``processed``, stamp last poll and success or error.

        Called at the end of every cycle, failed ones included; not fenced (counters only).
        """

    @abc.abstractmethod
    def get_stats(self, instance: str) -> InstanceStats:
        """Return the counters of ``instance`` (zeros for one never seen)."""

    def peek(self, instances: Iterable[str]) -> dict[str, InstancePeek]:
        """The counters and oldest STAGED instant of each of ``instances``, read together.

        The Celery runtime reads a whole batch of polls with it; the default asks
        :meth:`get_stats` and :meth:`list_entries` per instance, a networked store should
        answer in one round trip (Redis pipelines it).
        """
        found = {}
        for name in instances:
            oldest = self.list_entries(name, [LedgerState.STAGED], limit=1)
            found[name] = InstancePeek(
                self.get_stats(name), oldest[0].updated_at if oldest else None
            )
        return found

    # -- a poll cycle's first and last step -----------------------------------------------------
    def begin_poll(
        self, instance: str, holder: str, ttl: float, states: Iterable[LedgerState]
    ) -> PollStart | None:
        """:meth:`acquire_lease`, then read the cursor, the provider state and the entries in
        ``states``; None (nothing read) when the lease is held.

        Only :func:`router.ledger.begin_poll` calls it, at the start of every poll cycle. The
        default makes one call per part; a networked store should answer in one round trip
        (Redis pipelines the lease script and the reads: they run after the lease is taken, so
        no fenced write of another holder can come between).
        """
        lease = self.acquire_lease(instance, holder, ttl)
        if lease is None:
            return None
        cursor, state = self.get_cursor(instance), self.get_provider_state(instance)
        return PollStart(lease, cursor, state, self.list_entries(instance, states))

    def end_poll(
        self, lease: Lease, *, processed: int = 0, error: str | None = None
    ) -> InstancePeek:
        """:meth:`release_lease` and :meth:`record_poll`, then :meth:`peek` at the instance.

        The end of every poll cycle that got to record itself; what it returns (counters,
        oldest STAGED entry) spares the runtime its own reads for the lag gauge and for
        deciding whether a CRM delivery is due. One round trip on a networked store (Redis).
        """
        self.release_lease(lease)
        self.record_poll(lease.instance, processed=processed, error=error)
        return self.peek([lease.instance])[lease.instance]

    # -- ledger ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def stage(self, instance: str, key: str, raw: bytes, *, message_id: str | None = None) -> bool:
        """Create a STAGED entry holding ``raw``, atomically; False if the entry already exists.

        The entry and the bytes are written together: a crash leaves both or neither. Only the
        ledger's "stage" move calls it, once per fetched message.
        """

    @abc.abstractmethod
    def create_entry(
        self, instance: str, key: str, state: LedgerState, **fields: Any
    ) -> LedgerEntry | None:
        """Create an entry in ``state`` unless one exists (a claim); None if it existed.

        The create-if-absent is atomic: of two callers, exactly one gets the entry. Only the
        ledger's moves call it.
        """

    @abc.abstractmethod
    def get_entry(self, instance: str, key: str) -> LedgerEntry | None:
        """Return the ledger entry, or None; StateCorrupt when it cannot be decoded."""

    @abc.abstractmethod
    def transition(
        self,
        instance: str,
        key: str,
        expect: Iterable[LedgerState],
        to: LedgerState,
        **fields: Any,
    ) -> LedgerEntry | None:
        """Move the entry to ``to`` if its state is one of ``expect``; None otherwise.

        ``fields`` may set ``message_id``, ``activity_id``, ``reason``, ``attempts`` and ``extra``
        (merged). The check and the write are one atomic step. Only the ledger's named moves
        call it, each with the ``expect`` states it declares.
        """

    @abc.abstractmethod
    def list_entries(
        self,
        instance: str,
        states: Iterable[LedgerState] | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """Return entries in the order they were created, optionally only in ``states``.

        A damaged entry (see StateCorrupt) is left out and logged as a warning with its instance
        and key, so one bad record never hides the rest; get_entry on it raises StateCorrupt.
        """

    @abc.abstractmethod
    def count_entries(self, instance: str) -> dict[LedgerState, int]:
        """Return how many entries of ``instance`` are in each state.

        Backends that keep a per-state index count from it (Redis), so a damaged entry may still
        be counted under the last state it was written with.
        """

    @abc.abstractmethod
    def get_raw(self, instance: str, key: str) -> bytes | None:
        """Return the staged bytes of a message, or None once dropped (read to deliver it)."""

    @abc.abstractmethod
    def drop_raw(self, instance: str, key: str) -> None:
        """Delete the staged bytes once the CRM has the message (the entry stays, so a second
        fetch of the same message is recognised)."""

    @abc.abstractmethod
    def delete_entry(self, instance: str, key: str) -> None:
        """Remove an entry and its bytes (``quarantine drop``, ledger cleanup)."""

    # -- global Message-ID index ----------------------------------------------------------------
    @abc.abstractmethod
    def index_message_id(self, message_id: str, instance: str, key: str) -> None:
        """Remember that ``instance``'s ledger entry ``key`` sent ``message_id``.

        Kept at least :data:`MSGID_TTL` seconds; a backend may forget it after that.
        """

    @abc.abstractmethod
    def lookup_message_id(self, message_id: str) -> tuple[str, str] | None:
        """Return (instance, key) of the entry that sent ``message_id`` (None when unknown).

        Asked when a bounce arrives, to find the outbound email to mark Failed.
        """

    # -- heartbeats -----------------------------------------------------------------------------
    @abc.abstractmethod
    def beat(self, process: str, ttl: float, remember: float) -> None:
        """Record that ``process`` is alive for the next ``ttl`` seconds (one atomic write).

        Called every few seconds by each runtime process (:mod:`router.ledger.leases` names the
        process and picks the numbers). After ``ttl`` without a beat the process is LAPSED; after
        ``remember`` seconds it is forgotten (UNKNOWN). Backends with a server clock (Redis)
        measure both on it, so the clocks of the workers' hosts need not agree.
        """

    @abc.abstractmethod
    def heartbeat_state(self, process: str) -> HeartbeatState:
        """Whether ``process`` beat within its TTL (asked before freeing a lease it holds)."""

    # -- mailboxes loaded from the CRM ----------------------------------------------------------
    @abc.abstractmethod
    def set_mailbox_list(self, deployment: str, snapshot: JsonDict) -> None:
        """Replace the mailbox list recorded for ``deployment`` (one atomic write).

        The runtimes call it after reading the CRM's mailboxes (:mod:`router.mailboxes` builds
        ``snapshot``, which holds no secret); the last writer wins.
        """

    @abc.abstractmethod
    def mailbox_lists(self) -> dict[str, JsonDict]:
        """Every Deployment's recorded mailbox list ({} when none was ever recorded).

        Read by ``status``, ``poll NAME`` and the console. A damaged list is left out and logged,
        like a damaged ledger entry.
        """

    # -- housekeeping ---------------------------------------------------------------------------
    @abc.abstractmethod
    def instances(self) -> list[str]:
        """Names of every instance the store holds anything for (housekeeping, ``state``),
        configured or not any more."""

    @abc.abstractmethod
    def purge(self, instance: str, states: Iterable[LedgerState], older_than: float) -> int:
        """Delete entries in ``states`` last updated before ``older_than``; return the count.

        Housekeeping calls it for finished states only, after ``<LedgerRetention>``; a backend
        without expiring keys also ages out its Message-ID index here (after :data:`MSGID_TTL`).
        """

    def batch(self) -> AbstractContextManager[None]:
        """Group the writes made inside the block (by this thread) into one commit, if the
        backend can; the default runs each write on its own, as outside the block.

        For callers settling many entries at once (a chunk of deliveries, a fetch batch of
        staged messages): SQLite then fsyncs once per block instead of once per write. A failure
        inside the block may roll back the block's earlier writes, as a crash would; callers
        only group writes whose repetition is harmless (ledger compare-and-set, CRM duplicate
        check). Keep network calls out of the block: it may hold the database's write lock.
        """
        return nullcontext()

    def ping(self) -> None:
        """Raise StateUnavailable when the store cannot be reached (a health check).

        The default does nothing: an in-process store is always there.
        """

    def close(self) -> None:
        """Release connections and files when the context that opened the store closes.

        The default has nothing to release; the store may not be used afterwards.
        """
