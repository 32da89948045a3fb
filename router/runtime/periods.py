"""How often the runtimes run their periodic jobs (the same in ``email-router run`` and beat).

Use these constants instead of a number of your own: both runtimes must purge the ledger (and,
in the cluster, re-queue lost deliveries) at the same pace for the same configuration.
"""

from __future__ import annotations

#: Seconds between two housekeeping runs: finished ledger entries past ``LedgerRetention`` are
#: purged (and the Celery runtime re-queues the delivery of staged leftovers).
HOUSEKEEPING_PERIOD = 300.0
