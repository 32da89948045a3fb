"""The idempotency ledger: the only code that writes ledger entries, their indexes and leases.

Use this package from the flow modules (:mod:`router.incoming`, :mod:`router.outgoing`,
:mod:`router.quarantine`, :mod:`router.housekeeping`), the runtimes and the commands; nothing
else calls the state store's ledger writes (``stage``, ``create_entry``, ``transition``,
``delete_entry``, ``index_message_id``, ``purge``) or builds a lease name or holder.

* :mod:`router.ledger.moves` - the table of named moves and their allowed "from" states,
  enforced in one place;
* :class:`InboundLedger` - an incoming instance's messages (stage ... done, replay, drop);
* :class:`OutboundLedger` - claims on CRM emails (claim ... sent / failed, bounced);
* :mod:`router.ledger.leases` - holders, the dead-holder test, lease names and the lease TTL,
  this process's heartbeat (:data:`PULSE`).
"""

from __future__ import annotations

from router.ledger.incoming import InboundLedger
from router.ledger.leases import (
    HEARTBEAT_INTERVAL,
    OPERATOR_LEASE_TTL,
    PULSE,
    Pulse,
    begin_poll,
    holder_id,
    holder_is_dead,
    instance_leases,
    is_pause_holder,
    lease_ttl,
    release_dead_leases,
    release_own_leases,
    release_pause_lease,
    settle_leases,
    take_delivery_lease,
    take_operator_lease,
    take_pause_lease,
    take_poll_lease,
    tool_holder,
)
from router.ledger.moves import FINISHED, HANDLED, MOVES, Move, purge_finished
from router.ledger.outgoing import OUTBOUND, Claim, OutboundLedger

__all__ = [
    "FINISHED",
    "HANDLED",
    "HEARTBEAT_INTERVAL",
    "MOVES",
    "OPERATOR_LEASE_TTL",
    "OUTBOUND",
    "PULSE",
    "Claim",
    "InboundLedger",
    "Move",
    "OutboundLedger",
    "Pulse",
    "begin_poll",
    "holder_id",
    "holder_is_dead",
    "instance_leases",
    "is_pause_holder",
    "lease_ttl",
    "purge_finished",
    "release_dead_leases",
    "release_own_leases",
    "release_pause_lease",
    "settle_leases",
    "take_delivery_lease",
    "take_operator_lease",
    "take_pause_lease",
    "take_poll_lease",
    "tool_holder",
]
