"""The status of every instance, read from the state store only: what ``email-router status``
and the operations console show.

Use :func:`collect_status` for one :class:`InstanceStatus` per instance. It reads the counters,
the ledger counts and the lease of each instance named in the configuration (and of any other
instance the store holds state for), so it works the same whether the standalone runtime or
Celery workers do the work, and it never takes a lease or changes anything. Mailboxes loaded
from the CRM are rows like the others once the caller has added them to the configuration
(:func:`router.mailboxes.recorded_config`: the lists a runtime recorded, no CRM read).

Backlog: incoming, messages staged but not yet in the CRM (ledger STAGED); outgoing, emails
claimed or waiting for a retry (CLAIMED + RETRY). Quarantined, for an outgoing instance: emails
that may or may not have been sent (a sender without a commit point was cut short), counted in
``ambiguous`` too. Outbound claims live in one shared ledger namespace
(:class:`router.ledger.OutboundLedger`); each entry names the instance that claimed it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, replace

from router.config import Configuration, is_internal_name
from router.errors import RouterError
from router.ledger import OutboundLedger
from router.ledger.outgoing import claimant
from router.models import Direction, LedgerState
from router.state.base import StateStore

#: Ledger states counted as backlog, by direction (None: instance not in the configuration).
BACKLOG: dict[Direction | None, tuple[LedgerState, ...]] = {
    Direction.INCOMING: (LedgerState.STAGED,),
    Direction.OUTGOING: (LedgerState.CLAIMED, LedgerState.RETRY),
    None: (LedgerState.STAGED, LedgerState.CLAIMED, LedgerState.RETRY),
}


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """One row of ``email-router status`` (times are epoch seconds, None when never)."""

    name: str
    direction: str
    enabled: bool
    configured: bool
    last_poll: float | None
    last_success: float | None
    last_error: str | None
    last_error_at: float | None
    processed: int
    backlog: int
    quarantined: int
    lease_holder: str | None
    problem: str | None = None
    #: Outbound emails set aside as "may or may not have been sent" (part of ``quarantined``).
    ambiguous: int = 0
    #: ``file`` (a ProviderConfiguration), ``crm`` (a mailbox loaded from the CRM) or
    #: ``store`` (only the state store knows it)
    source: str = "file"


def collect_status(
    config: Configuration, store: StateStore, loaded: Collection[str] = ()
) -> list[InstanceStatus]:
    """A row for every configured instance, then for instances only the store knows.

    ``loaded``: the names of ``config``'s instances that are mailboxes loaded from the CRM
    (:func:`router.mailboxes.recorded_config`), shown with source ``crm``.
    """
    claims = _outbound_claims(store)
    rows = [
        replace(
            _row(store, p.name, p.direction, p.enabled, claims, configured=True),
            source="crm" if p.name in loaded else "file",
        )
        for p in config.providers
    ]
    known = {p.name for p in config.providers}
    for name in _stored_instances(store):
        if name not in known:
            row = _row(store, name, None, False, claims, configured=False)
            rows.append(replace(row, source="store"))
    return rows


def _outbound_claims(store: StateStore) -> dict[str, Counter[LedgerState]]:
    """Open outbound claims (and quarantined ones) per claiming instance."""
    wanted = [LedgerState.CLAIMED, LedgerState.RETRY, LedgerState.QUARANTINED]
    claims: dict[str, Counter[LedgerState]] = defaultdict(Counter)
    try:
        entries = OutboundLedger(store).entries(*wanted)
    except RouterError:
        return claims
    for entry in entries:
        claims[claimant(entry)][entry.state] += 1
    return claims


def _stored_instances(store: StateStore) -> list[str]:
    # delivery leases and the outbound namespace are the router's own bookkeeping, not instances;
    # the configuration refuses such names, so no instance can hide among them
    try:
        return [n for n in store.instances() if not is_internal_name(n)]
    except RouterError:
        return []


def _row(
    store: StateStore,
    name: str,
    direction: Direction | None,
    enabled: bool,
    claims: dict[str, Counter[LedgerState]],
    *,
    configured: bool,
) -> InstanceStatus:
    try:
        stats = store.get_stats(name)
        counts = Counter(store.count_entries(name)) + claims.get(name, Counter())
        lease = store.get_lease(name)
    except RouterError as exc:  # one damaged instance must not hide the others
        return InstanceStatus(
            name,
            _direction(direction),
            enabled,
            configured,
            None,
            None,
            None,
            None,
            0,
            0,
            0,
            None,
            problem=f"{type(exc).__name__}: {exc}",
        )
    return InstanceStatus(
        name=name,
        direction=_direction(direction),
        enabled=enabled,
        configured=configured,
        last_poll=stats.last_poll,
        last_success=stats.last_success,
        last_error=stats.last_error,
        last_error_at=stats.last_error_at,
        processed=stats.processed,
        backlog=sum(counts.get(s, 0) for s in BACKLOG[direction]),
        quarantined=counts.get(LedgerState.QUARANTINED, 0),
        lease_holder=lease.holder if lease else None,
        ambiguous=claims.get(name, Counter()).get(LedgerState.QUARANTINED, 0),
    )


def _direction(direction: Direction | None) -> str:
    return direction.value if direction else "?"
