"""What every request of the Dataverse simulator shares: the :class:`Simulator`.

Use it to build the app (:func:`router.crm.simulator.app.create_app`) and from the admin pages
and the Web API pipeline, which all read and change the same store, faults and issued tokens.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from router.crm.simulator.faults import FaultState, Gate
from router.crm.simulator.storage import Store

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IssuedToken:
    """A token the simulator issued: who got it, for which resource, until when."""

    client_id: str
    audience_path: str
    expires_at: float


@dataclass
class Simulator:
    """Everything the app shares between requests."""

    store: Store
    faults: FaultState = field(default_factory=FaultState)
    tenant: str = "simulator-tenant"
    client_id: str | None = None
    client_secret: str | None = None
    gate: Gate = field(default_factory=Gate)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    admin_networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
    )  # fmt: skip
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, client_id: str, audience: str) -> tuple[str, int]:
        """A new token for ``client_id`` and the organisation at ``audience``, and its lifetime."""
        lifetime = self.faults.faults.token_lifetime
        token = secrets.token_urlsafe(32)
        path = urlsplit(audience).path.rstrip("/")
        with self.lock:
            self.tokens[token] = IssuedToken(client_id, path, time.time() + lifetime)
        return token, lifetime

    def revoke_all(self) -> None:
        """Forget every issued token, so the next Web API call gets a 401 (admin page)."""
        with self.lock:
            self.tokens.clear()
