"""The incoming side of the ledger: one instance's messages, from staged to done.

Use :class:`InboundLedger` in :mod:`router.incoming` and :mod:`router.quarantine` for every
write about an incoming message: each method is one named move of :mod:`router.ledger.moves`
(plus the bookkeeping that belongs with it: dropping staged bytes once the CRM has them,
indexing the Message-ID of what was delivered).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from router.ledger import moves
from router.models import LedgerEntry, LedgerState
from router.state import keys
from router.state.base import StateStore

#: Reason a quarantined message carries once an operator gave up on it.
DROPPED_REASON = "dropped by operator"


class InboundLedger:
    """The ledger of one incoming instance; create one per cycle (it holds no state of its own)."""

    __slots__ = ("instance", "store")

    def __init__(self, store: StateStore, instance: str) -> None:
        self.store, self.instance = store, instance

    # -- reading ----------------------------------------------------------------------------------
    def get(self, key: str) -> LedgerEntry | None:
        """The entry of ``key``, or None when the ledger has never seen that message."""
        return self.store.get_entry(self.instance, key)

    def entries(self, *states: LedgerState) -> list[LedgerEntry]:
        """Entries in ``states`` (every entry when none is named), oldest first."""
        return self.store.list_entries(self.instance, states or None)

    def staged(self) -> list[LedgerEntry]:
        """Entries waiting for the CRM step (STAGED), oldest first."""
        return self.entries(moves.STAGE.target)

    def handled(self) -> list[LedgerEntry]:
        """Entries the CRM has settled (DELIVERED or SKIPPED): due for post-processing."""
        return self.entries(*moves.HANDLED)

    def seen_before(self, message_id: str) -> bool:
        """True when this instance already delivered a message with ``message_id``."""
        index = keys.seen_index(self.instance, message_id)
        return self.store.lookup_message_id(index) is not None

    # -- moves ------------------------------------------------------------------------------------
    def stage(self, key: str, raw: bytes) -> bool:
        """``stage``: hold fetched bytes; False when the ledger already has the message."""
        return moves.stage(self.store, self.instance, key, raw)

    def refuse(self, key: str, reason: str) -> bool:
        """``refuse``: quarantine a message the size guard kept from being downloaded."""
        entry = moves.create(self.store, moves.REFUSE, self.instance, key, reason=reason)
        return entry is not None

    def count_attempts(self, entries: Iterable[LedgerEntry]) -> None:
        """``attempt``: count a delivery attempt of each entry before the CRM sees it."""
        for entry in entries:
            self._move(moves.ATTEMPT, entry.key, attempts=entry.attempts + 1)

    def count_failure(self, entry: LedgerEntry) -> int:
        """``attempt``: count a failed parse of a staged entry; returns its attempts now."""
        self._move(moves.ATTEMPT, entry.key, attempts=entry.attempts + 1)
        return entry.attempts + 1

    def delivered(
        self, key: str, message_id: str, activity_id: str | None, *, duplicate: bool
    ) -> LedgerEntry | None:
        """``delivered``: the CRM has the activity (``duplicate``: it had it already).

        The Message-ID is indexed and the staged bytes dropped even when the move finds the
        entry settled already: both are what a settled entry has anyway.
        """
        moved = self._move(
            moves.DELIVERED,
            key,
            message_id=message_id,
            activity_id=activity_id,
            extra={"duplicate": True} if duplicate else None,
        )
        self.store.index_message_id(keys.seen_index(self.instance, message_id), self.instance, key)
        self.store.drop_raw(self.instance, key)
        return moved

    def skip(self, key: str, message_id: str, reason: str) -> None:
        """``skip``: the classification policy keeps the message from the CRM."""
        self._move(moves.SKIP, key, message_id=message_id, reason=reason)
        self.store.drop_raw(self.instance, key)

    def filtered(self, key: str, message_id: str, reason: str) -> None:
        """``filter``: the receiving owner's tracking filter declined the message (``reason``)."""
        self._move(moves.FILTER, key, message_id=message_id, reason=reason)
        self.store.drop_raw(self.instance, key)

    def original_delivered(self, key: str, message_id: str) -> None:
        """Index the Message-ID of an original that carrier ``key`` held, once the CRM has it.

        Not a move: the carrier stays STAGED until every original it holds is settled; the
        index lets a repeated delivery of the carrier (after a crash) skip this original.
        """
        self.store.index_message_id(keys.seen_index(self.instance, message_id), self.instance, key)

    def quarantine(self, key: str, reason: str) -> LedgerEntry | None:
        """``quarantine``: set a staged message aside with ``reason`` (its bytes are kept)."""
        return self._move(moves.QUARANTINE, key, reason=reason)

    def done(self, key: str) -> LedgerEntry | None:
        """``done``: the mail server applied the post-processing of a settled message."""
        return self._move(moves.DONE, key)

    def replay(self, key: str) -> LedgerEntry | None:
        """``replay``: a quarantined message is staged again (its reason cleared)."""
        return self._move(moves.REPLAY, key, reason=None)

    def drop(self, key: str) -> None:
        """``drop``: the operator gives a quarantined message up; it stays DONE, bytes gone."""
        self._move(moves.DROP, key, reason=DROPPED_REASON)
        self.store.drop_raw(self.instance, key)

    def fetch_failed(self, key: str, reason: str) -> LedgerEntry | None:
        """``fetch_failed`` / ``fetch_again``: count a fetch of ``key`` that raised.

        Returns the RETRY entry with its ``attempts`` so far (the caller gives up at its limit),
        or None when the message is in the ledger in another state (staged meanwhile).
        """
        entry = moves.create(
            self.store, moves.FETCH_FAILED, self.instance, key, attempts=1, reason=reason
        )
        if entry is not None:
            return entry
        seen = self.get(key)
        if seen is None or seen.state is not moves.FETCH_AGAIN.target:
            return None
        return self._move(
            moves.FETCH_AGAIN, key, seen=seen.state, attempts=seen.attempts + 1, reason=reason
        )

    def give_up(self, key: str, reason: str) -> LedgerEntry | None:
        """``give_up``: quarantine a message whose fetch failed too often (no bytes kept)."""
        return self._move(moves.GIVE_UP, key, reason=reason)

    def fetching_again(self, key: str) -> bool:
        """True when ``key``'s last fetch failed (a RETRY entry): the cycle fetches it again."""
        entry = self.get(key)
        return entry is not None and entry.state is moves.FETCH_AGAIN.target

    def clear_fetch_failure(self, key: str) -> None:
        """Forget the RETRY entry of ``key`` once its fetch succeeded, so ``stage`` can run.

        Only under the poll lease, right before staging: a crash in between loses the count,
        never the message (the cursor has not passed it).
        """
        if self.fetching_again(key):
            self.store.delete_entry(self.instance, key)

    def attach_raw(self, key: str, raw: bytes) -> bool:
        """Keep ``raw`` with a quarantined entry the size guard never downloaded.

        The entry is staged again with the bytes and quarantined with its old reason (``stage``
        then ``quarantine``); False when someone else staged it meanwhile.
        """
        entry = self.get(key)
        self.store.delete_entry(self.instance, key)
        message_id = entry.message_id if entry else None
        if not moves.stage(self.store, self.instance, key, raw, message_id):
            return False
        self._move(moves.QUARANTINE, key, reason=entry.reason if entry else None)
        return True

    def _move(self, the_move: moves.Move, key: str, **fields: Any) -> LedgerEntry | None:
        return moves.move(self.store, the_move, self.instance, key, **fields)
