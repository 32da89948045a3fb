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
  incoming instance finds the CRM email to mark Failed).

All writes are atomic: a crash leaves either the old or the new value, never a mix. A stored value
that cannot be decoded raises :class:`~router.errors.StateCorrupt` for that entry only.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from router.models import LedgerEntry, LedgerState

JsonDict = dict[str, Any]

#: How long a Message-ID index entry must stay findable (bounces and re-deliveries come back
#: within days); persistent backends may forget older ones so the index does not grow forever.
MSGID_TTL = 60 * 86400


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that ``holder`` may work on ``instance`` until ``expires_at`` (epoch seconds)."""

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
    """Counters of one instance."""

    processed: int = 0
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class StateStore(abc.ABC):
    """Base class of state-store backends; see the module docstring for what it holds."""

    # -- leases ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def acquire_lease(self, instance: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease for ``ttl`` seconds, or return None while someone else holds it."""

    @abc.abstractmethod
    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease still held (same token); None when it was lost."""

    @abc.abstractmethod
    def release_lease(self, lease: Lease) -> None:
        """Give the lease up if still held with this token; otherwise do nothing."""

    @abc.abstractmethod
    def get_lease(self, instance: str) -> LeaseInfo | None:
        """Return the current, unexpired lease of ``instance``."""

    # -- cursor and provider state (fenced) -----------------------------------------------------
    @abc.abstractmethod
    def get_cursor(self, instance: str) -> JsonDict | None:
        """Return the instance's cursor, or None before its first poll."""

    @abc.abstractmethod
    def set_cursor(self, lease: Lease, cursor: JsonDict) -> None:
        """Store the cursor; raises LeaseLost unless ``lease`` is still the current lease."""

    @abc.abstractmethod
    def get_provider_state(self, instance: str) -> JsonDict:
        """Return the provider-defined state ({} when none)."""

    @abc.abstractmethod
    def set_provider_state(self, lease: Lease, state: JsonDict) -> None:
        """Store provider-defined state; raises LeaseLost like set_cursor."""

    @abc.abstractmethod
    def reset_instance(self, instance: str) -> None:
        """Forget cursor and provider state (not the ledger): ``email-router state reset``."""

    # -- counters -------------------------------------------------------------------------------
    @abc.abstractmethod
    def record_poll(self, instance: str, *, processed: int = 0, error: str | None = None) -> None:
        """Count a finished cycle: add ``processed``, stamp last poll and success or error."""

    @abc.abstractmethod
    def get_stats(self, instance: str) -> InstanceStats:
        """Return the counters of ``instance``."""

    # -- ledger ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def stage(self, instance: str, key: str, raw: bytes, *, message_id: str | None = None) -> bool:
        """Create a STAGED entry holding ``raw``, atomically; False if the entry already exists."""

    @abc.abstractmethod
    def create_entry(
        self, instance: str, key: str, state: LedgerState, **fields: Any
    ) -> LedgerEntry | None:
        """Create an entry in ``state`` unless one exists (a claim); None if it existed."""

    @abc.abstractmethod
    def get_entry(self, instance: str, key: str) -> LedgerEntry | None:
        """Return the ledger entry, or None."""

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
        (merged). The check and the write are one atomic step.
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
        """Return the staged bytes of a message, or None once dropped."""

    @abc.abstractmethod
    def drop_raw(self, instance: str, key: str) -> None:
        """Delete the staged bytes (the entry itself stays, for idempotency)."""

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
        """Return (instance, key) of the entry that sent ``message_id``."""

    # -- housekeeping ---------------------------------------------------------------------------
    @abc.abstractmethod
    def instances(self) -> list[str]:
        """Names of every instance the store holds anything for."""

    @abc.abstractmethod
    def purge(self, instance: str, states: Iterable[LedgerState], older_than: float) -> int:
        """Delete entries in ``states`` last updated before ``older_than``; return the count."""

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
        """Raise StateUnavailable when the store cannot be reached."""

    def close(self) -> None:
        """Release connections and files."""
