"""HTTP transport of the Dataverse adapter: session, headers, retries and error mapping.

Use :class:`WebApi` for every Web API call. It adds the OData headers and the Bearer token,
retries what is worth retrying within a bounded number of attempts, and turns everything else
into the router's errors:

* 429 - wait exactly the ``Retry-After`` the service sent (retrying earlier extends the
  penalty), then retry; when attempts run out, :class:`CrmUnavailable` carries ``retry_after``.
* 500/502/503/504, timeouts, connection errors - retry with exponential backoff (or the
  ``Retry-After`` if one came), then :class:`CrmUnavailable`.
* 401 - get a new token and retry once; a second 401 is :class:`CrmAuthError`, which stops the
  instance.
* 400/403/404/405/409/412 and other 4xx - :class:`CrmRejected`: permanent for this record.

Connections come from one pooled :class:`requests.Session`; ``max_connections`` caps the
connections in use at once (``pool_block``), which keeps the adapter under Dataverse's limit of
52 concurrent requests per user. ``ca_bundle`` is honoured even when ``REQUESTS_CA_BUNDLE`` is
set in the environment (requests would otherwise let the environment win over the session).

Only HTTPS leaves this module: the session refuses any other URL before connecting - redirects
and token endpoints found by discovery included - so the bearer token and the client secret never
travel in clear text, even if an ``http://`` URL got past the configuration loader.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from router.errors import CrmAuthError, CrmError, CrmRejected, CrmUnavailable

log = logging.getLogger("router.crm.dataverse")

ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "If-None-Match": "null",
}
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
HARD_MAX_CONNECTIONS = 50  # Dataverse allows 52 concurrent requests per user and web server


class Tokens(Protocol):
    """Where :class:`WebApi` gets its bearer tokens: a ``dataverse_auth.TokenSource``, or a fake.

    Declared here, below the token source, because the token source uses this module's session
    and errors: the transport needs only these two calls.
    """

    def token(self) -> str:
        """A valid access token, cached until shortly before it expires."""
        ...

    def refresh(self, stale: str | None = None) -> str:
        """A new token after a 401, unless another thread already replaced ``stale``."""
        ...


class MaybeSent(CrmUnavailable):
    """Raised when a creating request failed in a way that may have reached the CRM."""


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return isinstance(exc, requests.ConnectionError) and (
        "NewConnectionError" in text or "NameResolutionError" in text
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often the adapter retries before handing the fault to the runtime."""

    max_attempts: int = 6
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_retry_after: float = 60.0  # longer waits go back to the runtime instead of blocking

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for attempt ``attempt`` (1-based)."""
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


class InsecureUrl(requests.exceptions.InvalidURL):
    """Raised by :class:`PinnedSession`, before connecting, for a URL that is not https://."""


def insecure_text(url: str, what: str) -> str:
    """Why ``url`` is refused; names the origin only (scheme, host, port), never a query."""
    parts = urlsplit(url)
    origin = f"{parts.scheme or '?'}://{parts.netloc}"
    return (
        f"{what}: refusing {origin}: the bearer token and the client secret travel only to "
        "https:// URLs - make <CrmServerUrl> and <Authority> https:// URLs"
    )


def require_https(url: str, what: str) -> None:
    """Raise CrmAuthError (the instance stops) unless ``url`` is an https:// URL."""
    if not url.strip().lower().startswith("https://"):
        raise CrmAuthError(insecure_text(url.strip(), what))


class PinnedSession(requests.Session):
    """A Session that speaks HTTPS only and whose ``verify`` is not overridden by
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        # Every request goes through here, redirects included (requests re-sends them with
        # send()), so a 302 to http:// or an http:// token endpoint never gets a byte.
        url = str(request.url or "")
        if not url.lower().startswith("https://"):
            raise InsecureUrl(insecure_text(url, f"{request.method} request"))
        return super().send(request, **kwargs)


def make_session(ca_bundle: str | None, max_connections: int) -> requests.Session:
    """A pooled session: at most ``max_connections`` in use, connect errors retried twice."""
    session = PinnedSession()
    session.verify = ca_bundle or True
    size = max(1, min(max_connections, HARD_MAX_CONNECTIONS))
    # urllib3 only retries failed connects (the request never left); 429 and 5xx come back to
    # WebApi.call, which honours Retry-After itself and logs it.
    retry = Retry(
        total=2,
        connect=2,
        read=0,
        status=0,
        other=0,
        redirect=0,
        backoff_factor=0.2,
        respect_retry_after_header=False,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, pool_block=True, max_retries=retry)
    session.mount("https://", adapter)
    return session


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_text(response: requests.Response) -> str:
    """``0x80040217: message`` from a Dataverse error body (first line, bounded)."""
    try:
        err = response.json().get("error", {})
        text = f"{err.get('code', '?')}: {err.get('message', '')}"
    except (ValueError, AttributeError):
        text = response.reason or ""
    return text.strip().splitlines()[0][:300] if text.strip() else f"HTTP {response.status_code}"


class WebApi:
    """Authenticated, retrying calls to one organisation's Web API."""

    def __init__(
        self,
        base_url: str,
        tokens: Tokens,
        session: requests.Session,
        timeout: tuple[float, float] = (10.0, 120.0),
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        require_https(base_url, "<CrmServerUrl>")
        self.base_url = base_url.rstrip("/") + "/"
        self.tokens, self.session, self.timeout = tokens, session, timeout
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.stats = {"requests": 0, "throttled": 0, "unavailable": 0, "refreshes": 0}
        self._stats_lock = threading.Lock()

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (relative to the Web API) or of a full https:// link."""
        return path if path.startswith("https://") else self.base_url + path.lstrip("/")

    def call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> requests.Response:
        """Send one request with retries; returns the 2xx response or raises a router error.

        A request that is not ``idempotent`` (it creates records) is not re-sent after a
        failure that may have happened after the CRM received it (read timeout, dropped
        connection): :class:`MaybeSent` tells the caller to retry through a duplicate check.
        """
        refreshed = False
        last_wait: float | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            token = self.tokens.token()
            try:
                response = self._send(method, path, token, json, data, headers)
            except (requests.exceptions.SSLError, InsecureUrl) as exc:
                raise transport_error(exc, what) from None
            except requests.RequestException as exc:
                if not idempotent and not _never_sent(exc):
                    raise MaybeSent(
                        f"{what}: {describe(exc)} (it may have reached the CRM)"
                    ) from None
                last_wait = self._pause(attempt, None, what, describe(exc))
                continue
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True
                self._count("refreshes")
                self.tokens.refresh(stale=token)
                continue
            if status < 300:
                return response
            last_wait = self._handle(response, attempt, what)
        raise CrmUnavailable(
            f"{what}: still failing after {self.policy.max_attempts} attempts",
            retry_after=last_wait,
        )

    def _send(
        self,
        method: str,
        path: str,
        token: str,
        json: Any,
        data: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> requests.Response:
        all_headers = {**ODATA_HEADERS, "Authorization": f"Bearer {token}", **(headers or {})}
        self._count("requests")
        return self.session.request(
            method, self.url(path), json=json, data=data, headers=all_headers, timeout=self.timeout
        )

    def _handle(self, response: requests.Response, attempt: int, what: str) -> float | None:
        """Decide about a non-2xx answer: return the wait before the next attempt, or raise."""
        status = response.status_code
        raise_for_status(response, what)  # permanent and auth errors end here
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        self._count("throttled" if status == 429 else "unavailable")
        if asked is not None and asked > self.policy.max_retry_after:
            raise CrmUnavailable(
                f"{what}: HTTP {status}, retry after {asked:.0f} s", retry_after=asked
            )
        return self._pause(attempt, asked, what, f"HTTP {status}")

    def _pause(self, attempt: int, asked: float | None, what: str, why: str) -> float:
        wait = asked if asked is not None else self.policy.backoff(attempt)
        if attempt >= self.policy.max_attempts:
            return wait
        if asked is not None:
            log.warning(
                "%s: %s, waiting %.2f s as Retry-After asks (attempt %d/%d)",
                what,
                why,
                wait,
                attempt,
                self.policy.max_attempts,
            )
        else:
            log.info(
                "%s: %s, retrying in %.2f s (attempt %d/%d)",
                what,
                why,
                wait,
                attempt,
                self.policy.max_attempts,
            )
        self.sleep(wait)
        return wait

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1


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


def transport_error(exc: requests.RequestException, where: str) -> CrmError:
    """A failed TLS check or a non-HTTPS URL is a configuration problem (stop); anything else
    is passing (retry)."""
    if isinstance(exc, InsecureUrl):
        return CrmAuthError(f"{where}: {exc}")
    if isinstance(exc, requests.exceptions.SSLError):
        return CrmAuthError(
            f"{where}: TLS verification failed ({describe(exc)}) - check <CaBundle>"
        )
    return CrmUnavailable(f"{where}: {describe(exc)}")


def raise_for_status(response: requests.Response, what: str) -> None:
    """Raise the router error for a permanent or credentials failure; return if retryable."""
    status = response.status_code
    if status < 300 or status == 429 or status in RETRYABLE_STATUS:
        return
    raise status_error(status, f"{what}: HTTP {status} {error_text(response)}")


def status_error(status: int, message: str) -> CrmError:
    """The router error for a non-retryable HTTP status."""
    if status == 401:
        return CrmAuthError(
            f"{message} - the token was refused even after a refresh; the instance stops until "
            "the Deployment's credentials (ClientId/ClientSecret, the application user in the "
            "organisation) are fixed"
        )
    return CrmRejected(message)
