"""The table of ledger moves: every state change an entry may make, declared once, run in one place.

Use :func:`create` and :func:`move` (through :mod:`router.ledger.incoming` and
:mod:`router.ledger.outgoing`) for every ledger write; they are the only callers of the state
store's ``stage``, ``create_entry`` and ``transition``. A :class:`Move` names the states it may
start from; the store applies it as one atomic compare-and-set, so a move whose entry is no
longer in one of those states changes nothing and returns None. The table (``()``: the entry
must not exist yet)::

    move          from                                   to
    -- incoming ------------------------------------------------------------------------
    stage         ()                                     STAGED       fetched bytes held
    refuse        ()                                     QUARANTINED  size guard, not fetched
    attempt       STAGED                                 STAGED       counted before the CRM
    delivered     STAGED                                 DELIVERED    the CRM has the activity
    skip          STAGED                                 SKIPPED      policy: not for the CRM
    filter        STAGED                                 SKIPPED      owner's tracking filter: no
    quarantine    STAGED                                 QUARANTINED  set aside with a reason
    done          DELIVERED, SKIPPED                     DONE         post-processed on server
    replay        QUARANTINED                            STAGED       operator: try again
    drop          QUARANTINED                            DONE         operator: give up
    fetch_failed  ()                                     RETRY        fetch raised, counted
    fetch_again   RETRY                                  RETRY        fetch raised once more
    give_up       RETRY                                  QUARANTINED  MaxMessageAttempts reached
    -- outgoing ------------------------------------------------------------------------
    claim         ()                                     CLAIMED      first claim of an email
    take_over     CLAIMED, RETRY                         CLAIMED      abandoned / retry due
    submitted     CLAIMED                                SUBMITTED    right before the final dot
    handed_over   SUBMITTED                              SUBMITTED    the dot left the process
    withdraw      SUBMITTED                              CLAIMED      submitted over a lost claim
    retry_later   CLAIMED, SUBMITTED                     RETRY        4xx, connection lost
    give_back     CLAIMED                                RETRY        stopped before sending
    sent          CLAIMED, SUBMITTED, RETRY, SENT        SENT         the CRM is told Sent
    failed        CLAIMED, SUBMITTED, RETRY              FAILED       5xx, attempts exhausted
    ambiguous     SUBMITTED                              QUARANTINED  may or may not have left
    bounced       any state but FAILED                   FAILED       a DSN came back

A caller that read the entry may narrow a move to the state it saw (``expect``), so that two
workers racing on the same observation cannot both win; the narrowed state must be one the move
allows, or the call is a bug and raises ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.models import LedgerEntry, LedgerState
from router.state.base import StateStore

S = LedgerState


@dataclass(frozen=True, slots=True)
class Move:
    """A named ledger move: the states it may start from (none: it creates the entry) and its end.

    Use the module's constants (``STAGE``, ``CLAIM``, ...) with :func:`create` or :func:`move`;
    never build a Move elsewhere.
    """

    name: str
    sources: tuple[LedgerState, ...]
    target: LedgerState

    @property
    def creates(self) -> bool:
        """True when the move creates the entry (it must not exist yet)."""
        return not self.sources

    def expected(self, seen: LedgerState | None = None) -> tuple[LedgerState, ...]:
        """The states the compare-and-set accepts: all the move allows, or only ``seen``."""
        if seen is None:
            return self.sources
        if seen not in self.sources:
            raise ValueError(f"ledger move {self.name!r} cannot start from {seen.value!r}")
        return (seen,)


# -- incoming -------------------------------------------------------------------------------------
STAGE = Move("stage", (), S.STAGED)
REFUSE = Move("refuse", (), S.QUARANTINED)
ATTEMPT = Move("attempt", (S.STAGED,), S.STAGED)
DELIVERED = Move("delivered", (S.STAGED,), S.DELIVERED)
SKIP = Move("skip", (S.STAGED,), S.SKIPPED)
# CheckIncomingEmail's ShouldDeliver was false for the receiving owner: settled like a skip
# (post-processed on the server), with the CRM's ReasonCode as the reason.
FILTER = Move("filter", (S.STAGED,), S.SKIPPED)
QUARANTINE = Move("quarantine", (S.STAGED,), S.QUARANTINED)
DONE = Move("done", (S.DELIVERED, S.SKIPPED), S.DONE)
REPLAY = Move("replay", (S.QUARANTINED,), S.STAGED)
DROP = Move("drop", (S.QUARANTINED,), S.DONE)
# A message whose fetch raised is not staged: a RETRY entry counts its failures (no bytes) and
# keeps the cursor before it until it is staged (stage replaces the entry) or given up.
FETCH_FAILED = Move("fetch_failed", (), S.RETRY)
FETCH_AGAIN = Move("fetch_again", (S.RETRY,), S.RETRY)
GIVE_UP = Move("give_up", (S.RETRY,), S.QUARANTINED)
# -- outgoing -------------------------------------------------------------------------------------
CLAIM = Move("claim", (), S.CLAIMED)
TAKE_OVER = Move("take_over", (S.CLAIMED, S.RETRY), S.CLAIMED)
SUBMITTED = Move("submitted", (S.CLAIMED,), S.SUBMITTED)
HANDED_OVER = Move("handed_over", (S.SUBMITTED,), S.SUBMITTED)
WITHDRAW = Move("withdraw", (S.SUBMITTED,), S.CLAIMED)
RETRY_LATER = Move("retry_later", (S.CLAIMED, S.SUBMITTED), S.RETRY)
GIVE_BACK = Move("give_back", (S.CLAIMED,), S.RETRY)
# From CLAIMED/RETRY too: a retry of the last few recipients may end the email as Sent.
SENT = Move("sent", (S.CLAIMED, S.SUBMITTED, S.RETRY, S.SENT), S.SENT)
FAILED = Move("failed", (S.CLAIMED, S.SUBMITTED, S.RETRY), S.FAILED)
# Submitted but never handed over, then left by a crash: it may or may not have left.
AMBIGUOUS = Move("ambiguous", (S.SUBMITTED,), S.QUARANTINED)
BOUNCED = Move("bounced", tuple(s for s in S if s is not S.FAILED), S.FAILED)

#: Every move, by name (documentation, tests and the ``state`` commands read it).
MOVES: dict[str, Move] = {
    m.name: m
    for m in (
        STAGE, REFUSE, ATTEMPT, DELIVERED, SKIP, FILTER, QUARANTINE, DONE, REPLAY, DROP,
        FETCH_FAILED, FETCH_AGAIN, GIVE_UP,
        CLAIM, TAKE_OVER, SUBMITTED, HANDED_OVER, WITHDRAW, RETRY_LATER, GIVE_BACK, SENT, FAILED,
        AMBIGUOUS, BOUNCED,
    )
}  # fmt: skip
#: Incoming states whose refs are due for post-processing on the mail server (``done`` moves).
HANDLED = DONE.sources
#: States of finished entries: kept for LedgerRetention, then purged by housekeeping.
FINISHED = (S.DONE, S.SKIPPED, S.SENT, S.FAILED)


def create(
    store: StateStore, the_move: Move, instance: str, key: str, **fields: Any
) -> LedgerEntry | None:
    """Run a creating move: a new entry in its target state; None when the entry exists."""
    if not the_move.creates:
        raise ValueError(f"ledger move {the_move.name!r} does not create entries")
    return store.create_entry(instance, key, the_move.target, **fields)


def stage(
    store: StateStore, instance: str, key: str, raw: bytes, message_id: str | None = None
) -> bool:
    """Run :data:`STAGE`: a STAGED entry holding ``raw``; False when the entry exists."""
    return store.stage(instance, key, raw, message_id=message_id)


def move(
    store: StateStore,
    the_move: Move,
    instance: str,
    key: str,
    *,
    seen: LedgerState | None = None,
    **fields: Any,
) -> LedgerEntry | None:
    """Run ``the_move`` on an existing entry; None when it is not in an allowed state.

    ``seen`` narrows the move to the state the caller read (see the module docstring);
    ``fields`` are the entry fields the move sets (``reason``, ``attempts``, ``extra``, ...).
    """
    if the_move.creates:
        raise ValueError(f"ledger move {the_move.name!r} creates entries; use create()")
    return store.transition(instance, key, the_move.expected(seen), the_move.target, **fields)


def purge_finished(store: StateStore, instance: str, older_than: float) -> int:
    """Forget ``instance``'s :data:`FINISHED` entries last updated before ``older_than``."""
    return store.purge(instance, FINISHED, older_than)
