"""The Microsoft Graph HTTP client of the graph providers: tokens, TLS, throttling, batching.

Use :class:`GraphClient` for every Graph call (``request`` for one, ``batch`` for many). It:

* sends the app-only bearer token of a :class:`GraphTokens` (``router.oauth``); a 401 gets a
  new token once, a second 401 is :class:`~router.errors.ProviderAuthError`;
* verifies TLS (system CAs, or ``ca_bundle``) and talks HTTPS only;
* keeps Exchange Online's per-mailbox limits (:class:`MailboxGate`): never more than
  ``max_per_mailbox`` (4) requests in flight for one mailbox - a ``$batch`` takes one slot per
  part, up to four - and, after a 429 or 503/504, nothing to that mailbox before its
  ``Retry-After`` ran out (exponential backoff when none came); each logical request keeps its
  ``client-request-id`` header across retries;
* ``batch`` sends JSON ``$batch`` requests of at most 20 parts and retries only the parts
  answered 429/503/504 (or 401, with a new token), each after its own ``Retry-After``;
* gives up after ``Throttling.max_attempts`` (or a Retry-After above
  ``Throttling.max_retry_after``) with :class:`~router.errors.ProviderUnavailable` carrying
  ``retry_after``, so the runtime retries the cycle later.

Statuses the caller must judge (404 of a message, 410 of a delta link, 403 of a send) come back
as the response; :func:`raise_for_status` maps the rest to router errors. Log lines name the
method, the path without its query and the status - never a token, a delta token or a body.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import requests

from router.errors import (
    ProviderAuthError,
    ProviderProtocolError,
    ProviderUnavailable,
    RouterError,
)
from router.oauth import TokenSource, describe, https_session

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.microsoft.com/v1.0"
MAX_BATCH = 20
MAILBOX_CONCURRENCY = 4
THROTTLED = frozenset({429, 503, 504})


class GraphTokens(TokenSource):
    """Client-credentials tokens for Graph (or Outlook) whose failures are provider errors."""

    auth_error: ClassVar[type[RouterError]] = ProviderAuthError
    unavailable_error: ClassVar[type[RouterError]] = ProviderUnavailable
    hints: ClassVar[dict[str, str]] = {
        "invalid_client": "check client_id and the secret in <EmailPassword> (expired?)",
        "unauthorized_client": "check client_id: no such app registration in this tenant",
        "invalid_scope": "the app registration lacks the application permission",
        "invalid_request": "check tenant_id / authority",
    }
    ca_hint: ClassVar[str] = "check the ca_bundle parameter"


@dataclass(frozen=True)
class Throttling:
    """How long and how often the client retries throttled or failed requests itself."""

    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0  # longer waits go back to the runtime instead of blocking

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter for a throttled answer without Retry-After."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class MailboxGate:
    """At most ``limit`` requests in flight for one mailbox, none before ``not_before``."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self._clock = limit, clock
        self._cond = threading.Condition()
        self._in_use = 0
        self.not_before = 0.0

    def acquire(self, slots: int = 1) -> int:
        """Wait for ``slots`` (at most ``limit``) free slots and the end of any throttling."""
        slots = max(1, min(slots, self.limit))
        with self._cond:
            while True:
                wait = self.not_before - self._clock()
                if wait <= 0 and self._in_use + slots <= self.limit:
                    self._in_use += slots
                    return slots
                self._cond.wait(timeout=wait if wait > 0 else None)

    def release(self, slots: int) -> None:
        with self._cond:
            self._in_use -= slots
            self._cond.notify_all()

    def throttle(self, seconds: float) -> None:
        """Hold every request to this mailbox back for ``seconds`` from now."""
        with self._cond:
            self.not_before = max(self.not_before, self._clock() + seconds)
            self._cond.notify_all()


@dataclass(frozen=True)
class BatchRequest:
    """One part of a ``$batch``: method, URL relative to the base (``/users/...``), body."""

    method: str
    url: str
    body: Any = None
    headers: dict[str, str] | None = None


@dataclass
class BatchResponse:
    """The answer to one :class:`BatchRequest`."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    @property
    def content(self) -> bytes:
        """A non-JSON body (a message's ``$value``), which ``$batch`` returns base64-encoded."""
        if isinstance(self.body, str):
            try:
                return base64.b64decode(self.body, validate=True)
            except (binascii.Error, ValueError):
                return self.body.encode("utf-8")
        return b""

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(
            self.headers.get("Retry-After") or self.headers.get("retry-after")
        )


class GraphClient:
    """Calls Microsoft Graph for any number of mailboxes (see the module docstring).

    Thread-safe: several threads may call it at once (the gates keep the limits). ``session``
    replaces the default HTTPS-only session (tests); ``tokens`` is a :class:`GraphTokens` or any
    object with ``token()`` and ``refresh(stale)``.
    """

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        *,
        ca_bundle: str | None = None,
        session: requests.Session | None = None,
        max_per_mailbox: int = MAILBOX_CONCURRENCY,
        timeout: float = 60.0,
        throttling: Throttling | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.http = session if session is not None else https_session(ca_bundle, 16)
        self.max_per_mailbox, self.timeout = max_per_mailbox, timeout
        self.throttling = throttling or Throttling()
        self._gates: dict[str, MailboxGate] = {}
        self._lock = threading.Lock()
        self.requests_sent = 0  # every HTTP request, retries included (benchmarks, tests)

    def gate(self, mailbox: str) -> MailboxGate:
        """The gate of ``mailbox`` (one shared gate for calls that name no mailbox)."""
        with self._lock:
            key = mailbox.lower()
            if key not in self._gates:
                self._gates[key] = MailboxGate(self.max_per_mailbox)
            return self._gates[key]

    def url(self, path: str) -> str:
        """``path`` below the base URL, or ``path`` itself when it is absolute (a nextLink)."""
        if path.startswith("https://") or path.startswith("http://"):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    # -- one request ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send one request, retrying 401 once and throttled answers after their Retry-After.

        Returns the final response (any status but 401 and exhausted throttling), raises
        ProviderAuthError / ProviderUnavailable otherwise.
        """
        url = self.url(path)
        gate = self.gate(mailbox_of(url))
        extra = {"client-request-id": str(uuid.uuid4()), **(headers or {})}
        refreshed = False
        for attempt in range(1, self.throttling.max_attempts + 1):
            slots = gate.acquire(1)
            try:
                response, token = self._send(method, url, json, data, extra, params)
            finally:
                gate.release(slots)
            if response.status_code == 401 and not refreshed:
                self.tokens.refresh(token)
                refreshed = True
                continue
            if response.status_code not in THROTTLED:
                self._check_auth(response, method, url)
                return response
            self._wait_out(gate, retry_after_seconds(response.headers.get("Retry-After")), attempt,
                           f"{method} {_safe(url)}")  # fmt: skip
        raise self._exhausted(f"{method} {_safe(url)}")

    def _send(
        self,
        method: str,
        url: str,
        json: Any,
        data: bytes | str | None,
        headers: dict[str, str],
        params: dict[str, str] | None,
    ) -> tuple[requests.Response, str]:
        """One HTTP exchange with the current token; the response and the token it used."""
        token = self.tokens.token()
        all_headers = {"Authorization": f"Bearer {token}", **headers}
        with self._lock:
            self.requests_sent += 1
        try:
            response = self.http.request(method, url, json=json, data=data, params=params,
                                         headers=all_headers, timeout=self.timeout)  # fmt: skip
        except requests.exceptions.InvalidURL as exc:
            raise ProviderAuthError(f"{method} {_safe(url)}: {exc}") from None
        except requests.exceptions.SSLError as exc:
            raise ProviderAuthError(
                f"{method} {_safe(url)}: TLS verification failed ({describe(exc)}) - check "
                "the ca_bundle parameter"
            ) from None
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"{method} {_safe(url)}: {describe(exc)}") from None
        log.debug("%s %s -> %s", method, _safe(url), response.status_code)
        return response, token

    def _check_auth(self, response: requests.Response, method: str, url: str) -> None:
        if response.status_code == 401:
            raise ProviderAuthError(
                f"{method} {_safe(url)}: HTTP 401 {error_code(response)} even with a new token"
                " - check the app registration's application permissions (Mail.ReadWrite,"
                " Mail.Send) and admin consent"
            )

    def _wait_out(
        self, gate: MailboxGate, retry_after: float | None, attempt: int, what: str
    ) -> None:
        delay = retry_after if retry_after is not None else self.throttling.backoff(attempt)
        if delay > self.throttling.max_retry_after:
            gate.throttle(delay)
            raise ProviderUnavailable(f"{what}: throttled for {delay:.0f} s", retry_after=delay)
        log.info("%s throttled; waiting %.2f s", what, delay)
        gate.throttle(delay)

    def _exhausted(self, what: str) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"{what}: still throttled or unavailable after {self.throttling.max_attempts} attempts",
            retry_after=self.throttling.backoff_max,
        )

    # -- $batch --------------------------------------------------------------------------------

    def batch(self, parts: Sequence[BatchRequest]) -> list[BatchResponse]:
        """Run ``parts`` as JSON ``$batch`` requests of at most 20; answers in the same order.

        Parts answered 429/503/504 (or 401) are sent again, alone, after their Retry-After
        (or a new token); the others keep their first answer.
        """
        out: list[BatchResponse] = []
        for start in range(0, len(parts), MAX_BATCH):
            out += self._batch_chunk(parts[start : start + MAX_BATCH])
        return out

    def _batch_chunk(self, parts: Sequence[BatchRequest]) -> list[BatchResponse]:
        answers: dict[int, BatchResponse] = {}
        pending = list(range(len(parts)))
        ids = [str(uuid.uuid4()) for _ in parts]  # each part keeps its id across retries
        refreshed = False
        for attempt in range(1, self.throttling.max_attempts + 1):
            got, token = self._post_batch([parts[i] for i in pending], [ids[i] for i in pending])
            answers.update(zip(pending, got, strict=True))
            unauthorized = [i for i in pending if answers[i].status == 401] if not refreshed else []
            throttled = [i for i in pending if answers[i].status in THROTTLED]
            if unauthorized:
                self.tokens.refresh(token)
                refreshed = True
            if not unauthorized and not throttled:
                return [answers[i] for i in range(len(parts))]
            for index in throttled:
                gate = self.gate(mailbox_of(parts[index].url))
                what = f"$batch part {parts[index].method} {_safe(parts[index].url)}"
                self._wait_out(gate, answers[index].retry_after, attempt, what)
            pending = sorted(unauthorized + throttled)
        raise self._exhausted(f"$batch of {len(parts)}")

    def _post_batch(
        self, parts: Sequence[BatchRequest], ids: Sequence[str]
    ) -> tuple[list[BatchResponse], str]:
        """One ``$batch`` POST holding each mailbox's slots; the answers and the token used."""
        payload = {"requests": [_part_json(str(i), p, ids[i]) for i, p in enumerate(parts)]}
        held = self._acquire_all(_slots_by_mailbox(parts))
        try:
            request_id = {"client-request-id": str(uuid.uuid4())}
            response, token = self._send(
                "POST", self.url("$batch"), payload, None, request_id, None
            )
        finally:
            for gate, count in held:
                gate.release(count)
        if response.status_code in THROTTLED | {401}:
            # the whole batch was refused: every part gets that answer
            retry_after = response.headers.get("Retry-After", "")
            refused = [BatchResponse(response.status_code, {"Retry-After": retry_after})
                       for _ in parts]  # fmt: skip
            return refused, token
        raise_for_status(response, "$batch")
        return _batch_answers(response, len(parts)), token

    def _acquire_all(self, slots: dict[str, int]) -> list[tuple[MailboxGate, int]]:
        held: list[tuple[MailboxGate, int]] = []
        for mailbox in sorted(slots):  # one order for everybody: no deadlock between batches
            gate = self.gate(mailbox)
            held.append((gate, gate.acquire(slots[mailbox])))
        return held

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.close()


def _part_json(part_id: str, part: BatchRequest, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": part_id, "method": part.method, "url": part.url}
    headers = {"client-request-id": request_id, **(part.headers or {})}
    if part.body is not None:
        body["body"] = part.body
        headers.setdefault("Content-Type", "application/json")
    body["headers"] = headers
    return body


def _slots_by_mailbox(parts: Sequence[BatchRequest]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in parts:
        mailbox = mailbox_of(part.url)
        counts[mailbox] = min(counts.get(mailbox, 0) + 1, MAILBOX_CONCURRENCY)
    return counts


def _batch_answers(response: requests.Response, count: int) -> list[BatchResponse]:
    try:
        rows = response.json()["responses"]
        by_id = {
            int(r["id"]): BatchResponse(
                int(r["status"]), dict(r.get("headers") or {}), r.get("body")
            )
            for r in rows
        }
        return [by_id[i] for i in range(count)]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderProtocolError(f"$batch: unreadable answer ({type(exc).__name__})") from None


def mailbox_of(url: str) -> str:
    """The mailbox a Graph URL addresses (``/users/{mailbox}/...``), or "" for none."""
    found = re.search(r"/users/([^/?]+)", urlsplit(url).path if "://" in url else url)
    return unquote(found.group(1)).lower() if found else ""


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (Graph sends delta-seconds), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_code(response: requests.Response) -> str:
    """Graph's ``error.code`` of an answer (``ErrorItemNotFound``, ...), or the reason."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.reason or ""


def raise_for_status(response: requests.Response, what: str) -> None:
    """Raise the router error a failed answer means; return for 2xx/3xx.

    401/403: the app may not do this (credentials, permissions, application access policy):
    ProviderAuthError, the instance stops. 429/5xx: ProviderUnavailable (retry later). Other
    4xx: ProviderProtocolError.
    """
    status = response.status_code
    if status < 400:
        return
    text = f"{what}: HTTP {status} {error_code(response)}"
    if status in (401, 403):
        raise ProviderAuthError(
            f"{text} - the app registration needs the application permission Mail.ReadWrite "
            "(Mail.Send to send) with admin consent, and access to this mailbox"
        )
    if status == 429 or status >= 500:
        retry = retry_after_seconds(response.headers.get("Retry-After"))
        raise ProviderUnavailable(text, retry_after=retry)
    raise ProviderProtocolError(text)


def _safe(url: str) -> str:
    """``url`` without its query (delta and skip tokens stay out of logs and errors)."""
    parts = urlsplit(url)
    return parts.path or url.split("?", 1)[0]


__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BATCH",
    "BatchRequest",
    "BatchResponse",
    "GraphClient",
    "GraphTokens",
    "MailboxGate",
    "Throttling",
    "error_code",
    "mailbox_of",
    "raise_for_status",
]
