"""OAuth 2.0 client credentials (MSAL) shared by Dataverse, Microsoft Graph and XOAUTH2 mail.

Use :class:`TokenSource` wherever the router needs an app-only access token: ``token()``
returns a cached token and gets a new one shortly before it expires; ``refresh()`` forces a new
one (callers do it once on a 401). Subclasses pick the router errors their callers act on
(``auth_error``, ``unavailable_error``): the Dataverse adapter raises CRM errors, the Graph
client provider errors; the defaults are :class:`~router.errors.AuthError` (stop) and
:class:`~router.errors.RetryableError` (try later).

Why a cache on top of MSAL's: MSAL treats a token with less than five minutes left as expired,
so with short-lived tokens (a test server issuing 5-second tokens, or a misconfigured tenant)
every call would fetch a new token. Here a token is refreshed when less than a tenth of its
lifetime (at most five minutes) is left.

Authorities: ``https://login.microsoftonline.com/<tenant>`` by default
(:func:`default_authority`); sovereign clouds (``login.microsoftonline.us``,
``login.chinacloudapi.cn``) are validated by MSAL as usual; any other host (a test server such
as ``email-router crm-sim`` or ``graph-sim``) is used without authority validation or instance
discovery. Every authority must be HTTPS: :class:`TokenSource` refuses anything else before
MSAL is even built, and :func:`https_session` refuses an http:// token endpoint.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msal
import requests
from requests.adapters import HTTPAdapter

from router.errors import AuthError, RetryableError, RouterError

log = logging.getLogger(__name__)

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
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
OUTLOOK_SCOPE = "https://outlook.office365.com/.default"


def default_authority(tenant_id: str | None) -> str:
    """The Entra ID authority of ``tenant_id`` in the public cloud."""
    if not tenant_id:
        raise AuthError("a tenant id (or an authority) is needed for client credentials")
    return f"https://login.microsoftonline.com/{tenant_id}"


class InsecureUrl(requests.exceptions.InvalidURL):
    """Raised by :class:`HttpsOnlySession`, before connecting, for a URL that is not https://."""


def origin_of(url: str) -> str:
    """Scheme, host and port of ``url`` (never a path or a query, which may carry tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme or '?'}://{parts.netloc}"


class HttpsOnlySession(requests.Session):
    """A Session that speaks HTTPS only and whose ``verify`` is not overridden by
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (requests lets the environment win otherwise)."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        # Redirects go through here too, so a 302 to http:// never gets a byte (or a token).
        url = str(request.url or "")
        if not url.lower().startswith("https://"):
            raise InsecureUrl(f"{request.method} request: refusing {origin_of(url)}: not https")
        return super().send(request, **kwargs)


def https_session(ca_bundle: str | None = None, max_connections: int = 10) -> requests.Session:
    """A pooled HTTPS-only session verifying TLS (against ``ca_bundle`` when given)."""
    session = HttpsOnlySession()
    session.verify = ca_bundle or True
    size = max(1, max_connections)
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, pool_block=False)
    session.mount("https://", adapter)
    return session


def describe(exc: BaseException) -> str:
    """A short reason for a transport error ("Connection refused", "Read timed out", ...)."""
    text = str(exc)
    for pattern in (
        r"\[Errno -?\d+\] ([^'\")]+)",
        r"(Read timed out)",
        r"(certificate verify failed[^'\")]*)",
    ):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class TokenSource:
    """App-only tokens for ``scopes`` from ``authority`` (cached, renewed before expiry).

    ``client_secret`` is the secret or a function returning it (read only when MSAL is built,
    so a secret file can change between restarts). ``http`` replaces the default
    :func:`https_session` (``ca_bundle`` is then the session's business).
    """

    #: Raised when the authority refuses the client or TLS/HTTPS checks fail (stop).
    auth_error: ClassVar[type[RouterError]] = AuthError
    #: Raised when the token endpoint cannot be reached (retry later).
    unavailable_error: ClassVar[type[RouterError]] = RetryableError
    #: What to check, by the OAuth error the authority answered (named in the caller's terms).
    hints: ClassVar[dict[str, str]] = {
        "invalid_client": "check the client id and the client secret (expired secret?)",
        "unauthorized_client": "the app registration is not enabled in this tenant",
        "invalid_scope": "check the resource URL (the scope is <resource>/.default)",
        "invalid_request": "check the tenant id / authority",
    }
    #: Where the CA bundle is configured, for a failed TLS check.
    ca_hint: ClassVar[str] = "check the CA bundle"

    def __init__(
        self,
        authority: str,
        client_id: str,
        client_secret: str | Callable[[], str],
        scopes: list[str],
        ca_bundle: str | None = None,
        *,
        http: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not authority.strip().lower().startswith("https://"):  # the client secret goes there
            raise self.auth_error(
                f"authority: refusing {origin_of(authority.strip())}: the client secret "
                "travels only to https:// URLs"
            )
        self.authority, self.client_id, self.scopes = authority.rstrip("/"), client_id, scopes
        self._secret = client_secret if callable(client_secret) else _constant(client_secret)
        self._http = http if http is not None else https_session(ca_bundle, 2)
        self._clock = clock
        self._lock = threading.Lock()
        self._app: Any = None
        self._token: str | None = None
        self._refresh_at = 0.0
        self.acquired = 0  # how many tokens were fetched (for tests and test-access)

    @property
    def scope(self) -> str:
        """The first scope (one resource per source, as client credentials require)."""
        return self.scopes[0]

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(authority={self.authority!r}, client_id={self.client_id!r}, ***)"

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
            result = app.acquire_token_for_client(scopes=list(self.scopes))
        except requests.RequestException as exc:
            raise self._transport_error(exc, f"token endpoint of {self.authority}") from None
        if "access_token" not in result:
            raise self.auth_error(self._refusal(result))
        lifetime = float(result.get("expires_in") or 3599)
        self._token = str(result["access_token"])
        self._refresh_at = self._clock() + lifetime - min(MAX_MARGIN, lifetime / 10.0)
        self.acquired += 1
        log.info("acquired a token from %s (expires in %.0f s)", self.authority, lifetime)

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
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
            raise self._transport_error(exc, f"authority {self.authority}") from None
        except (ValueError, KeyError, OSError) as exc:
            raise self.auth_error(
                f"authority {self.authority} unusable: {_first_line(exc)}"
            ) from None
        return self._app

    def _transport_error(self, exc: requests.RequestException, where: str) -> RouterError:
        """A failed TLS check or a non-HTTPS URL stops the instance; anything else is passing."""
        if isinstance(exc, requests.exceptions.InvalidURL):
            return self.auth_error(f"{where}: {exc}")
        if isinstance(exc, requests.exceptions.SSLError):
            return self.auth_error(
                f"{where}: TLS verification failed ({describe(exc)}) - {self.ca_hint}"
            )
        return self.unavailable_error(f"{where}: {describe(exc)}")

    def _refusal(self, result: dict[str, Any]) -> str:
        error = result.get("error", "unknown_error")
        detail = _first_line(result.get("error_description", ""))
        hint = self.hints.get(error, "check the credentials")
        return f"{self.authority} refused client {self.client_id}: {error}: {detail} - {hint}"


def _constant(secret: str) -> Callable[[], str]:
    return lambda: secret


def _first_line(value: object) -> str:
    text = str(value).strip().splitlines()
    return text[0][:300] if text else ""


__all__ = [
    "GRAPH_SCOPE",
    "OUTLOOK_SCOPE",
    "HttpsOnlySession",
    "InsecureUrl",
    "TokenSource",
    "default_authority",
    "https_session",
]
