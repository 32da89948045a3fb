"""Faults and the request log of the Graph simulator.

Use :class:`Faults` (set by command-line options, changed through ``POST /admin/faults``) for
what the simulator does wrong on purpose, and :class:`Traffic` for the per-mailbox
concurrency gate and the request log. The log is what tests assert on: every Graph request
(and every ``$batch`` sub-request) with its mailbox, status, start and end time, the number
of requests in flight for that mailbox when it started, and two Retry-After checks:

* ``retry_early`` - a retry (same ``client-request-id`` header) sent before the Retry-After of
  its own previous attempt ran out: exact, since a retry always follows the answer;
* ``early`` - any request of the same client to the same mailbox that started more than
  ``EARLY_GRACE`` seconds after a 429/503 was answered and before its Retry-After ran out.
  Requests started within the grace were on their way before the client could have read the
  answer (other threads), so they do not count.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: Exchange Online's MailboxConcurrency limit: requests in flight per app and mailbox.
MAILBOX_CONCURRENCY = 4
#: Seconds after a throttled answer during which other requests may still be in transit.
EARLY_GRACE = 0.05


@dataclass(frozen=True)
class Faults:
    """What the simulator does wrong on purpose (all off by default).

        ``rate_429`` / ``rate_503`` are shares (0..1) of Graph requests refused with that status
        and ``Retry-After: retry_after`` seconds; ``max_concurrent`` answers 429
        ``ApplicationThrottled`` (MailboxConcurrency) above that many requests in flight for one
        mailbox (0: no limit); ``latency_ms`` delays every HTTP request (a ``$batch`` once, as one
    round trip) and ``op_latency_ms`` every part of a ``$batch``; ``token_lifetime`` is the
        ``expires_in`` of new tokens; ``enforce_send_as`` refuses (403 ``ErrorSendAsDenied``) a
        sendMail whose From is not the mailbox, as Exchange does without Send As rights.
    """

    rate_429: float = 0.0
    rate_503: float = 0.0
    retry_after: float = 1.0
    max_concurrent: int = MAILBOX_CONCURRENCY
    latency_ms: float = 0.0
    op_latency_ms: float = 0.0
    token_lifetime: int = 3599
    enforce_send_as: bool = True
    seed: int | None = None

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; unknown names raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)} (known: {sorted(known)})")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Entry:
    """One logged request."""

    id: int
    method: str
    path: str
    mailbox: str
    client: str
    start: float
    in_flight: int
    early: bool
    retry_early: bool = False
    request_id: str = ""
    status: int = 0
    end: float = 0.0
    batch: bool = False


class Traffic:
    """Faults in force, the in-flight counters per mailbox, throttling deadlines, the log."""

    def __init__(self, faults: Faults) -> None:
        self._lock = threading.Lock()
        self.faults = faults
        self._random = random.Random(faults.seed)
        self._in_flight: dict[str, int] = {}
        self._not_before: dict[tuple[str, str], tuple[float, float]] = {}  # (from, until)
        self._retry_at: dict[str, float] = {}  # client-request-id -> Retry-After deadline
        self._log: list[Entry] = []

    def set_faults(self, changes: dict[str, Any]) -> Faults:
        with self._lock:
            self.faults = self.faults.updated(changes)
            if "seed" in changes:
                self._random = random.Random(self.faults.seed)
            return self.faults

    def begin(
        self, method: str, path: str, mailbox: str, client: str, request_id: str, batch: bool
    ) -> Entry:
        """Log the start of a request and count it in flight for its mailbox."""
        now = time.time()
        with self._lock:
            count = self._in_flight.get(mailbox, 0) + 1
            self._in_flight[mailbox] = count
            since, until = self._not_before.get((client, mailbox), (0.0, 0.0))
            early = since + EARLY_GRACE < now < until
            entry = Entry(len(self._log) + 1, method, path, mailbox, client, now, count, early)
            entry.request_id, entry.batch = request_id, batch
            entry.retry_early = bool(request_id) and now < self._retry_at.get(request_id, 0.0)
            self._log.append(entry)
            return entry

    def end(self, entry: Entry, status: int, retry_after: float | None) -> None:
        """Log the answer; a 429/503 sets when this client may come back to this mailbox."""
        now = time.time()
        with self._lock:
            self._in_flight[entry.mailbox] = self._in_flight.get(entry.mailbox, 1) - 1
            entry.status, entry.end = status, now
            if retry_after is None:
                return
            key = (entry.client, entry.mailbox)
            until = max(self._not_before.get(key, (0.0, 0.0))[1], now + retry_after)
            self._not_before[key] = (now, until)
            if entry.request_id:
                self._retry_at[entry.request_id] = now + retry_after

    def verdict_for(self, in_flight: int, mailbox: str) -> tuple[int, str, str] | None:
        """The fault to answer a request with: ``(status, code, message)``, or None."""
        faults = self.faults
        limit = faults.max_concurrent
        if limit and mailbox and in_flight > limit:
            return (
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            )
        with self._lock:
            draw = self._random.random()
        if draw < faults.rate_429:
            return 429, "TooManyRequests", "Too many requests; retry after the given delay."
        if draw < faults.rate_429 + faults.rate_503:
            return 503, "ServiceUnavailable", "The service is temporarily unavailable."
        return None

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._in_flight.values())

    def entries(self, since: int = 0, mailbox: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._log[since:]
            return [asdict(e) for e in rows if mailbox is None or e.mailbox == mailbox.lower()]

    def reset(self, faults: Faults) -> None:
        """Back to ``faults``, with the throttling deadlines forgotten (the log is kept)."""
        with self._lock:
            self.faults = faults
            self._random = random.Random(faults.seed)
            self._not_before.clear()
            self._retry_at.clear()
