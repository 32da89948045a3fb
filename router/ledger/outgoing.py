"""The outgoing side of the ledger: claims on CRM emails, from claimed to sent or failed.

Use :class:`OutboundLedger` in :mod:`router.outgoing` for every write about an outbound email:
each method is one named move of :mod:`router.ledger.moves`. Every outbound entry lives in one
namespace, :data:`~router.state.keys.OUTBOUND`, keyed by :func:`~router.state.keys.outbound_key`,
so two instances serving the same users or queues cannot both claim an email.

A claim carries a random token: a compare-and-set on the state alone cannot tell two workers
that saw the same abandoned entry apart, so whoever reads its own token back owns the email.
The entry's ``extra`` record (who claimed it, the recipients still to try, when a retry is due)
is written here and read through the functions at the end of this module.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from router.ledger import moves
from router.models import LedgerEntry, LedgerState
from router.state import keys
from router.state.base import StateStore

OUTBOUND = keys.OUTBOUND


@dataclass(frozen=True, slots=True)
class Claim:
    """An outbound entry this worker owns, and the token that proves it.

    Use :attr:`entry` for what the ledger held when the claim was taken, and pass the claim to
    :meth:`OutboundLedger.submitted` so the submission only goes ahead while the claim is ours.
    """

    entry: LedgerEntry
    token: str

    @property
    def key(self) -> str:
        """The claimed entry's ledger key."""
        return self.entry.key


class OutboundLedger:
    """The shared outbound ledger; create one per cycle (it holds no state of its own)."""

    __slots__ = ("store",)

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- reading ----------------------------------------------------------------------------------
    def get(self, email_id: str) -> LedgerEntry | None:
        """The entry of CRM email ``email_id``, or None before anyone claimed it."""
        return self.store.get_entry(OUTBOUND, keys.outbound_key(email_id))

    def current(self, entry: LedgerEntry) -> LedgerEntry:
        """``entry`` as the ledger holds it now (``entry`` itself if it has gone meanwhile)."""
        return self.store.get_entry(OUTBOUND, entry.key) or entry

    def entries(self, *states: LedgerState) -> list[LedgerEntry]:
        """Outbound entries in ``states`` (every entry when none is named), oldest first."""
        return self.store.list_entries(OUTBOUND, states or None)

    def find_sent(self, message_id: str) -> LedgerEntry | None:
        """The entry that sent ``message_id`` (normalised ``<id@host>`` form), if indexed."""
        hit = self.store.lookup_message_id(keys.sent_index(message_id))
        return None if hit is None else self.store.get_entry(*hit)

    # -- claiming ---------------------------------------------------------------------------------
    def claim(self, email_id: str, instance: str, holder: str) -> Claim | None:
        """``claim``: the first claim of a CRM email; None when someone claimed it first."""
        token = secrets.token_hex(8)
        entry = moves.create(
            self.store,
            moves.CLAIM,
            OUTBOUND,
            keys.outbound_key(email_id),
            extra=_claim_record(instance, holder, token),
        )
        return None if entry is None else Claim(entry, token)

    def take_over(self, entry: LedgerEntry, instance: str, holder: str) -> Claim | None:
        """``take_over``: claim an abandoned CLAIMED or a due RETRY entry, as it was read.

        None when the entry changed since it was read or another worker's token won the race.
        """
        token = secrets.token_hex(8)
        record = _claim_record(instance, holder, token)
        taken = self._move(moves.TAKE_OVER, entry.key, seen=entry.state, extra=record)
        # A compare-and-set on the state alone cannot tell two takers apart: read back whose
        # token won, so only one of two racing workers goes on.
        current = self.store.get_entry(OUTBOUND, entry.key)
        if taken is None or current is None or not _holds(current, token):
            return None
        return Claim(current, token)

    # -- submitting -------------------------------------------------------------------------------
    def submitted(
        self,
        claim: Claim,
        instance: str,
        message_id: str,
        retry_rcpts: list[str],
        *,
        ahead: bool = False,
    ) -> bool:
        """``submitted``: written right before the final dot; False when the claim was lost.

        ``message_id`` (normalised) is indexed first, so a bounce finds the email; when another
        worker took the claim over meanwhile, a submission written over it is withdrawn
        (``withdraw``) and the caller must abort before the dot. ``ahead``: written before a
        provider without a commit point was called, so nobody has the message yet (see
        :func:`unconfirmed`).
        """
        current = self.store.get_entry(OUTBOUND, claim.key)
        if current is None or not _holds(current, claim.token):
            return False
        self.store.index_message_id(keys.sent_index(message_id), OUTBOUND, claim.key)
        extra: dict[str, object] = {"instance": instance, "retry_rcpts": retry_rcpts}
        extra.update({"ahead": True} if ahead else {"ahead": False, "delivered": True})
        extra["handed"] = False  # until handed_over(): a crash before it is ambiguous
        moved = self._move(moves.SUBMITTED, claim.key, message_id=message_id, extra=extra)
        if moved is None or not _holds(moved, claim.token):
            if moved is not None:  # hand it back in the state its owner expects
                self._move(moves.WITHDRAW, claim.key)
            return False
        return True

    def handed_over(self, claim: Claim) -> None:
        """``handed_over``: the irreversible step left the process (SMTP: the dot is in the
        socket); from now on a crash means the email went out (see :func:`unconfirmed`)."""
        self._move(moves.HANDED_OVER, claim.key, extra={"handed": True})

    # -- settling ---------------------------------------------------------------------------------
    def retry_later(
        self,
        key: str,
        *,
        attempts: int,
        reason: str,
        next_at: float,
        rcpts: list[str],
        delivered: bool,
    ) -> None:
        """``retry_later``: try ``rcpts`` again from ``next_at`` (``delivered``: some have it)."""
        extra = {"next_at": next_at, "rcpts": rcpts, "delivered": delivered}
        self._move(moves.RETRY_LATER, key, attempts=attempts, reason=reason, extra=extra)

    def give_back(self, key: str) -> None:
        """``give_back``: release a claim we could not use, due for retry at once."""
        self._move(moves.GIVE_BACK, key, extra={"next_at": 0.0})

    def sent(self, key: str) -> None:
        """``sent``: the CRM has been told the email was sent."""
        self._move(moves.SENT, key)

    def failed(self, key: str, reason: str) -> None:
        """``failed``: the email cannot be sent (5xx, attempts exhausted, unsendable)."""
        self._move(moves.FAILED, key, reason=reason)

    def ambiguous(self, key: str, reason: str) -> bool:
        """``ambiguous``: a submission never handed over was cut short; set aside, never resent.

        False when the entry was no longer SUBMITTED (someone else settled it).
        """
        return self._move(moves.AMBIGUOUS, key, reason=reason) is not None

    def bounced(self, key: str, reason: str) -> None:
        """``bounced``: a DSN reports the email undelivered, whatever the ledger thought."""
        self._move(moves.BOUNCED, key, reason=reason)

    def _move(
        self, the_move: moves.Move, key: str, seen: LedgerState | None = None, **fields: Any
    ) -> LedgerEntry | None:
        return moves.move(self.store, the_move, OUTBOUND, key, seen=seen, **fields)


# -- reading an entry's record --------------------------------------------------------------------
def _claim_record(instance: str, holder: str, token: str) -> dict[str, object]:
    return {"instance": instance, "claim": token, "holder": holder}


def _holds(entry: LedgerEntry, token: str) -> bool:
    return entry.extra.get("claim") == token


def claimant(entry: LedgerEntry) -> str:
    """The instance that claimed (and sends) an outbound entry; "" when unknown."""
    return str(entry.extra.get("instance", ""))


def writer_gone(entry: LedgerEntry, instance: str, now: float, ttl: float) -> bool:
    """True when whoever wrote ``entry`` cannot still be working on it.

    Use it before taking an entry over: ``instance``'s own earlier cycle is gone (its caller
    holds that instance's lease now); another instance's entry counts as abandoned once it is
    older than a lease (``ttl``).
    """
    if claimant(entry) == instance:
        return True
    return entry.updated_at < now - ttl


def retry_due(entry: LedgerEntry) -> float:
    """When a RETRY entry may be taken again (epoch seconds; 0 for "now")."""
    return float(entry.extra.get("next_at", 0.0))


def retry_recipients(entry: LedgerEntry) -> list[str]:
    """The recipients a retry goes to (empty: every recipient of the message)."""
    return list(entry.extra.get("rcpts") or [])


def refused_at_submission(entry: LedgerEntry) -> list[str]:
    """Recipients a SUBMITTED entry's server refused with 4xx (to retry after a crash)."""
    return list(entry.extra.get("retry_rcpts") or [])


def unconfirmed(entry: LedgerEntry) -> bool:
    """True when a SUBMITTED entry was never recorded as handed over.

    Only a crash leaves one: the provider was between its commit point (or, without one, the
    start of the call) and the message leaving the process, so nobody can tell whether it left;
    the email is neither sent again nor marked Sent. (An entry written before "handed" existed
    counts as handed over unless it was recorded ahead, as it did then.)
    """
    if entry.state is not LedgerState.SUBMITTED:
        return False
    return not entry.extra.get("handed", not entry.extra.get("ahead"))


def reached_someone(entry: LedgerEntry) -> bool:
    """True when some recipient already accepted the email (it did leave)."""
    return bool(entry.extra.get("delivered"))


def email_id_of(entry: LedgerEntry) -> str:
    """The CRM email an outbound entry is about."""
    return keys.email_id_of(entry.key)
