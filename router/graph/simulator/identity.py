"""The simulator's Entra ID: client-credentials tokens for Graph and Outlook scopes.

Use :class:`Identity` to issue tokens (``POST /{tenant}/oauth2/v2.0/token``) and to check a
``Authorization: Bearer`` header on every Graph call. One client id and secret are accepted
(``--client-id`` / ``--client-secret``); tokens are random, live ``token_lifetime`` seconds and
can all be revoked through the admin API (the next call answers 401).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

SCOPES = frozenset(
    {"https://graph.microsoft.com/.default", "https://outlook.office365.com/.default"}
)


class Identity:
    """Issued tokens and the accepted client of one tenant."""

    def __init__(
        self, tenant: str, client_id: str, client_secret: str, lifetime: Callable[[], int]
    ) -> None:
        self.tenant, self.client_id, self._secret = tenant, client_id, client_secret
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, str, float]] = {}  # token -> (client, scope, expiry)
        self.issued = 0

    def issue(self, tenant: str, form: Any) -> tuple[int, dict[str, Any]]:
        """Answer a token request: ``(status, JSON body)``."""
        problem = self._problem(tenant, form)
        if problem is not None:
            status, code, text = problem
            return status, {"error": code, "error_description": text}
        lifetime = self._lifetime()
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (form["client_id"], form["scope"], time.time() + lifetime)
            self.issued += 1
        return 200, {"token_type": "Bearer", "expires_in": lifetime,
                     "ext_expires_in": lifetime, "access_token": token}  # fmt: skip

    def _problem(self, tenant: str, form: Any) -> tuple[int, str, str] | None:
        if tenant != self.tenant:
            return 400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found."
        if form.get("grant_type") != "client_credentials":
            return 400, "unsupported_grant_type", "AADSTS70003: client_credentials only."
        if (form.get("scope") or "").strip() not in SCOPES:
            return 400, "invalid_scope", "AADSTS1002012: unknown scope."
        if form.get("client_id") != self.client_id:
            return 400, "unauthorized_client", "AADSTS700016: Application not found."
        if form.get("client_secret") != self._secret:
            return 401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
        return None

    def client_of(
        self, authorization: str, scope: str = "https://graph.microsoft.com/.default"
    ) -> str | None:
        """The client id behind a valid ``Bearer`` header for ``scope``, else None."""
        kind, _, token = authorization.partition(" ")
        with self._lock:
            found = self._tokens.get(token.strip()) if kind.lower() == "bearer" else None
        if found is None or found[1] != scope or time.time() >= found[2]:
            return None
        return found[0]

    def revoke(self) -> int:
        """Forget every issued token; return how many."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
            return count
