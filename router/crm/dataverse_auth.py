"""OAuth 2.0 client credentials for the Dataverse adapter (MSAL), with our own token cache.

Use :class:`TokenSource`: ``token()`` returns a cached access token and gets a new one shortly
before it expires; ``refresh()`` forces a new one (the adapter calls it once on a 401).

Why a cache on top of MSAL's: MSAL treats a token with less than five minutes left as expired,
so with short-lived tokens (a test server issuing 5-second tokens, or a misconfigured tenant)
every call would fetch a new token. Here a token is refreshed when less than a tenth of its
lifetime (at most five minutes) is left.

Authorities: ``https://login.microsoftonline.com/<TenantId>`` by default; sovereign clouds
(``login.microsoftonline.us``, ``login.chinacloudapi.cn``) are validated by MSAL as usual; any
other host (a test server such as ``email-router crm-sim``) is used without authority
validation or instance discovery, and must be HTTPS (MSAL refuses ``http://``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from router.crm.dataverse_http import transport_error
from router.errors import CrmAuthError

log = logging.getLogger("router.crm.dataverse")

MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.microsoftonline.de",
        "login.windows.net",
    }
)
MAX_MARGIN = 300.0


def default_authority(tenant_id: str | None) -> str:
    """The Entra ID authority of ``tenant_id`` in the public cloud."""
    if not tenant_id:
        raise CrmAuthError("Deployment needs <TenantId> (or <Authority>) for client credentials")
    return f"https://login.microsoftonline.com/{tenant_id}"


class TokenSource:
    """Client-credentials tokens for one resource (``<CrmServerUrl>/.default``)."""

    def __init__(
        self,
        authority: str,
        client_id: str,
        client_secret: Callable[[], str],
        resource: str,
        http: requests.Session,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authority, self.client_id, self.scope = authority, client_id, f"{resource}/.default"
        self._secret, self._http, self._clock = client_secret, http, clock
        self._lock = threading.Lock()
        self._app: Any = None
        self._token: str | None = None
        self._refresh_at = 0.0
        self.acquired = 0  # how many tokens were fetched (for tests and test-access)

    def __repr__(self) -> str:
        return f"TokenSource(authority={self.authority!r}, client_id={self.client_id!r}, ***)"

    def token(self) -> str:
        """A valid access token (cached until shortly before it expires)."""
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                self._acquire()
            assert self._token is not None
            return self._token

    def refresh(self, stale: str | None = None) -> str:
        """Force a new token, unless another thread already replaced ``stale``."""
        with self._lock:
            if self._token is None or self._token == stale:
                self._acquire()
            assert self._token is not None
            return self._token

    def _acquire(self) -> None:
        app = self._application()
        app.remove_tokens_for_client()  # MSAL would hand back its cached copy otherwise
        try:
            result = app.acquire_token_for_client(scopes=[self.scope])
        except requests.RequestException as exc:
            raise transport_error(exc, f"token endpoint of {self.authority}") from None
        if "access_token" not in result:
            raise CrmAuthError(_refusal(self.authority, self.client_id, result))
        lifetime = float(result.get("expires_in") or 3599)
        self._token = str(result["access_token"])
        self._refresh_at = self._clock() + lifetime - min(MAX_MARGIN, lifetime / 10.0)
        self.acquired += 1
        log.info("acquired a token from %s (expires in %.0f s)", self.authority, lifetime)

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
        import msal

        host = (urlsplit(self.authority).hostname or "").lower()
        known = host in MICROSOFT_AUTHORITY_HOSTS
        try:
            self._app = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self._secret(),
                authority=self.authority,
                validate_authority=known,
                instance_discovery=None if known else False,
                http_client=self._http,
            )
        except requests.RequestException as exc:
            raise transport_error(exc, f"authority {self.authority}") from None
        except (ValueError, KeyError, OSError) as exc:
            raise CrmAuthError(f"authority {self.authority} unusable: {_first_line(exc)}") from None
        return self._app


def _refusal(authority: str, client_id: str, result: dict[str, Any]) -> str:
    error = result.get("error", "unknown_error")
    detail = _first_line(result.get("error_description", ""))
    hint = {
        "invalid_client": "check <ClientId> and <ClientSecret> (expired secret?)",
        "unauthorized_client": "the app registration is not enabled in this tenant",
        "invalid_scope": "check <CrmServerUrl> (the scope is <CrmServerUrl>/.default)",
        "invalid_request": "check <TenantId> / <Authority>",
    }.get(error, "check the Deployment's credentials")
    return f"{authority} refused client {client_id}: {error}: {detail} - {hint}"


def _first_line(value: object) -> str:
    text = str(value).strip().splitlines()
    return text[0][:300] if text else ""
