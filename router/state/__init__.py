"""State stores: cursors, leases, the idempotency ledger, counters and staged raw messages.

``open_store(url)`` picks the backend from a URL: ``memory://``, ``sqlite:///path`` or
``redis://host:port/db``.
"""

from router.state.base import InstanceStats, Lease, LeaseInfo, StateStore
from router.state.factory import open_store

__all__ = ["InstanceStats", "Lease", "LeaseInfo", "StateStore", "open_store"]
