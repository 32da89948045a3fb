"""``email-router status``: what every instance is doing, as a table or JSON.

Use :func:`format_table` / :func:`to_json` to show the rows of
:func:`router.status.collect_status` (which reads the state store only and never changes
anything). Quarantined, for an outgoing instance, is shown as ``N (N ambiguous)``: emails that
may or may not have been sent, listed by ``quarantine list``. A mailbox loaded from the CRM
shows ``(CRM)`` after its ENABLED value and ``"source": "crm"`` in JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from router.cli.common import open_cli_context
from router.mailboxes import recorded_config
from router.status import BACKLOG as BACKLOG
from router.status import InstanceStatus as InstanceStatus
from router.status import collect_status as collect_status

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
    enabled += " (CRM)" if row.source == "crm" else ""
    return [
        row.name,
        row.direction,
        enabled,
        ago(row.last_poll, now),
        ago(row.last_success, now),
        str(row.processed),
        str(row.backlog),
        str(row.quarantined) + (f" ({row.ambiguous} ambiguous)" if row.ambiguous else ""),
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
    """``email-router status``: print the table (or JSON); exit 0, 1 when the store is unreachable.

    It opens the store read-only: a missing SQLite file is an error, never a new empty file.
    Mailboxes loaded from the CRM are the rows of the lists a runtime recorded in the store
    (source ``crm``); how old each list is, or why it is missing, goes to stderr.
    """
    args = argparse.Namespace(config=config_path, state=state_url)
    ctx = open_cli_context(args, read_only=True, loaded=False)
    try:
        recorded = recorded_config(ctx.config, ctx.store)
        rows = collect_status(recorded.config, ctx.store, recorded.loaded)
    finally:
        ctx.close()
    for note in recorded.notes:
        print(note, file=sys.stderr)
    print(to_json(rows) if as_json else format_table(rows))
    return 0
