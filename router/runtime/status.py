"""``email-router status``: what every instance is doing, read from the state store only.

Use :func:`collect_status` for the rows and :func:`format_table` / :func:`to_json` to show them.
It reads the counters, the ledger counts and the lease of each instance named in the configuration
(and of any other instance the store holds state for), so it works the same whether the
standalone runtime or Celery workers do the work, and it never takes a lease or changes anything.

Backlog: incoming, messages staged but not yet in the CRM (ledger STAGED); outgoing, emails
claimed or waiting for a retry (CLAIMED + RETRY). Outbound claims live in one shared ledger
namespace (``router.outgoing.OUTBOUND``); each entry names the instance that claimed it.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from router.config import Configuration
from router.errors import RouterError
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


def collect_status(config: Configuration, store: StateStore) -> list[InstanceStatus]:
    """A row for every configured instance, then for instances only the store knows."""
    claims = _outbound_claims(store)
    rows = [
        _row(store, p.name, p.direction, p.enabled, claims, configured=True)
        for p in config.providers
    ]
    known = {p.name for p in config.providers}
    for name in _stored_instances(store):
        if name not in known:
            rows.append(_row(store, name, None, False, claims, configured=False))
    return rows


def _outbound_claims(store: StateStore) -> dict[str, Counter[LedgerState]]:
    """Open outbound claims (and quarantined ones) per claiming instance."""
    from router.outgoing import OUTBOUND

    wanted = [LedgerState.CLAIMED, LedgerState.RETRY, LedgerState.QUARANTINED]
    claims: dict[str, Counter[LedgerState]] = defaultdict(Counter)
    try:
        entries = store.list_entries(OUTBOUND, wanted)
    except RouterError:
        return claims
    for entry in entries:
        claims[str(entry.extra.get("instance", ""))][entry.state] += 1
    return claims


def _stored_instances(store: StateStore) -> list[str]:
    # "<name>#deliver" and similar are auxiliary leases of an instance, and "_outbound" and
    # other "_" names are the router's own bookkeeping: neither is an instance
    try:
        return [n for n in store.instances() if "#" not in n and not n.startswith("_")]
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
    )


def _direction(direction: Direction | None) -> str:
    return direction.value if direction else "?"


# -- rendering ------------------------------------------------------------------------------------
HEADERS = (
    "INSTANCE",
    "DIRECTION",
    "ENABLED",
    "LAST POLL",
    "LAST SUCCESS",
    "PROCESSED",
    "BACKLOG",
    "QUARANTINED",
    "LEASE",
    "LAST ERROR",
)


def ago(ts: float | None, now: float) -> str:
    """``12s ago`` / ``3m ago`` / ``5h ago`` / ``2d ago``; ``never`` for None."""
    if ts is None:
        return "never"
    seconds = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _cells(row: InstanceStatus, now: float) -> list[str]:
    error = row.problem or row.last_error or ""
    if row.last_error and row.last_error_at and not row.problem:
        error = f"{ago(row.last_error_at, now)}: {error}"
    enabled = ("yes" if row.enabled else "no") + ("" if row.configured else " (not configured)")
    return [
        row.name,
        row.direction,
        enabled,
        ago(row.last_poll, now),
        ago(row.last_success, now),
        str(row.processed),
        str(row.backlog),
        str(row.quarantined),
        row.lease_holder or "-",
        _clip(error, 80),
    ]


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(rows: Sequence[InstanceStatus], now: float | None = None) -> str:
    """An aligned text table, one line per instance."""
    now = time.time() if now is None else now
    table = [list(HEADERS), *(_cells(r, now) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    if not rows:
        lines.append("(no instances)")
    return "\n".join(line.rstrip() for line in lines)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def to_json(rows: Sequence[InstanceStatus]) -> str:
    """The rows as a JSON array (times as ISO 8601 UTC strings)."""
    docs = []
    for row in rows:
        doc = asdict(row)
        for key in ("last_poll", "last_success", "last_error_at"):
            doc[key] = _iso(doc[key])
        docs.append(doc)
    return json.dumps(docs, indent=2)


def main(config_path: str | None, state_url: str | None, *, as_json: bool = False) -> int:
    """``email-router status``: print the table (or JSON); exit code 0."""
    from router.service import open_context

    ctx = open_context(config_path, state_url=state_url)
    try:
        rows = collect_status(ctx.config, ctx.store)
    finally:
        ctx.close()
    print(to_json(rows) if as_json else format_table(rows))
    return 0
