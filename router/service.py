"""The front door: the use-cases the runtimes and commands call, and nothing else.

Both runtimes - Celery tasks (``workers/``) and the single-process scheduler (``router.runtime``)
- and the CLI call these functions with a :class:`~router.context.Context`. Nothing here imports
Celery, and the runtimes import nothing below this module but the context (``import-linter``'s
``front-door`` contract).

The use-cases:

* :func:`poll_instance` - incoming: lease, list, fetch, stage, move the cursor, deliver,
  post-process (``router.incoming``).
* :func:`deliver_staged` - incoming: staged messages -> CRM activities (the CRM adapter step).
* :func:`send_cycle` - outgoing: pending CRM emails -> SMTP -> Sent/Failed (``router.outgoing``).
* :func:`handle_bounce` - a DSN closes the loop on the email it reports on.
* :func:`replay` - a quarantined message is delivered again (``router.quarantine``).
* :func:`housekeeping` - expired ledger entries and leftovers (``router.housekeeping``).

What a runtime needs of the leases (``router.ledger``):

* :func:`lease_ttl` - a cycle's time limit (``MaxThreadExecution``), e.g. Celery's soft limit.
* :func:`release_dead_leases` - at start: leases left by a crashed process of this host.
* :func:`release_own_leases` - at shutdown: leases of cycles this process abandons.
* :func:`settle_leases` - after every cycle: releases again what a failed cycle still held.
* :data:`PULSE` / :data:`HEARTBEAT_INTERVAL` - this process's heartbeat, beaten by the
  runtime's beat thread (:mod:`router.runtime.heartbeat`): what frees a dead worker's leases.
"""

from __future__ import annotations

from router.delivery import deliver_staged
from router.housekeeping import housekeeping
from router.incoming import poll_instance
from router.ledger import (
    HEARTBEAT_INTERVAL,
    PULSE,
    lease_ttl,
    release_dead_leases,
    release_own_leases,
    settle_leases,
)
from router.outgoing import handle_bounce, send_cycle
from router.quarantine import replay

__all__ = [
    "HEARTBEAT_INTERVAL",
    "PULSE",
    "deliver_staged",
    "handle_bounce",
    "housekeeping",
    "lease_ttl",
    "poll_instance",
    "release_dead_leases",
    "release_own_leases",
    "replay",
    "send_cycle",
    "settle_leases",
]
