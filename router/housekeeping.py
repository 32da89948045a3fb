"""Housekeeping: forget finished ledger entries once they are older than LedgerRetention.

Finished entries (:data:`router.ledger.FINISHED`: incoming DONE / SKIPPED, outbound SENT /
FAILED) are kept for a while so a repeated listing (a UIDVALIDITY reset, a CRM that still shows
an email as pending) is recognised; after ``<LedgerRetention>`` they only cost memory. Entries
still in flight (STAGED, DELIVERED awaiting post-processing, QUARANTINED, CLAIMED, SUBMITTED,
RETRY) are never purged here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from router.context import Context
from router.ledger import OUTBOUND, purge_finished


@dataclass
class HousekeepingReport:
    """How many finished entries were purged, per instance."""

    purged: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Entries purged over every instance."""
        return sum(self.purged.values())


def housekeeping(ctx: Context, *, now: float | None = None) -> HousekeepingReport:
    """Purge finished ledger entries older than the configured retention."""
    retention = ctx.config.system.ledger_retention / 1000.0
    cutoff = (time.time() if now is None else now) - retention
    report = HousekeepingReport()
    names = set(ctx.store.instances()) | {p.name for p in ctx.config.providers} | {OUTBOUND}
    for name in sorted(names):
        purged = purge_finished(ctx.store, name, cutoff)
        if purged:
            report.purged[name] = purged
    return report
