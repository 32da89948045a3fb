"""Fault injection for the Dataverse simulator: latency, throttling, outages, token lifetime.

Use :class:`Faults` (set from command-line options at start and changed at run time through
``POST /_admin/faults``) and :class:`Gate` (the in-flight request counter that answers 429 above
``max_concurrent``, as Dataverse's service-protection limit of 52 concurrent requests does).
Faults apply to Web API requests only; the token endpoint, the discovery document and the admin
pages are never slowed down or refused, except ``token_error``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Faults:
    """What the simulator does wrong on purpose (all off by default).

    ``latency_ms`` is added to every Web API request; with ``latency_max_ms`` above it the delay
    is random in between. ``rate_429`` / ``rate_503`` are shares (0..1) of requests refused;
    a 429 carries ``Retry-After`` drawn from ``retry_after_min..retry_after_max`` seconds.
    ``max_concurrent`` (0 = no limit) answers 429 above that many requests in flight.
    ``token_lifetime`` is the ``expires_in`` of new tokens; ``reject_message_ids`` makes
    DeliverIncomingEmail refuse those Message-IDs with a 400 (a per-record failure), and
    ``token_error`` makes the token endpoint refuse every client (bad credentials), and
    ``reject_tokens`` makes the Web API refuse every token with a 401 (an application user
    removed from the organisation).
    """

    latency_ms: float = 0.0
    latency_max_ms: float = 0.0
    rate_429: float = 0.0
    rate_503: float = 0.0
    retry_after_min: float = 1.0
    retry_after_max: float = 1.0
    max_concurrent: int = 0
    token_lifetime: int = 3599
    reject_message_ids: tuple[str, ...] = ()
    token_error: bool = False
    reject_tokens: bool = False
    seed: int | None = None

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; unknown names raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)} (known: {sorted(known)})")
        if "reject_message_ids" in changes:
            changes = {**changes, "reject_message_ids": tuple(changes["reject_message_ids"])}
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """What to do with one request: delay it, then maybe refuse it with ``status``."""

    delay: float
    status: int | None = None
    retry_after: float | None = None


class FaultState:
    """The current faults and the random source, shared by the server's threads."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)

    def update(self, changes: dict[str, Any]) -> Faults:
        with self._lock:
            self.faults = self.faults.updated(changes)
            if "seed" in changes:
                self._rng = random.Random(self.faults.seed)
            return self.faults

    def reset(self) -> None:
        with self._lock:
            self.faults = Faults()
            self._rng = random.Random()

    def decide(self) -> Decision:
        """Draw the delay and the injected failure (if any) of one Web API request."""
        with self._lock:
            f, rng = self.faults, self._rng
            delay = f.latency_ms / 1000.0
            if f.latency_max_ms > f.latency_ms:
                delay = rng.uniform(f.latency_ms, f.latency_max_ms) / 1000.0
            draw = rng.random()
            if draw < f.rate_429:
                return Decision(delay, 429, self._retry_after(f, rng))
            if draw < f.rate_429 + f.rate_503:
                return Decision(delay, 503)
            return Decision(delay)

    def throttle_retry_after(self) -> float:
        with self._lock:
            return self._retry_after(self.faults, self._rng)

    @staticmethod
    def _retry_after(f: Faults, rng: random.Random) -> float:
        # Whole seconds, as the real service sends them (Retry-After is an integer header).
        low, high = int(f.retry_after_min), int(max(f.retry_after_min, f.retry_after_max))
        return float(rng.randint(low, high))


class Gate:
    """Counts Web API requests in flight; :meth:`enter` is False above the limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0

    def enter(self, limit: int) -> bool:
        with self._lock:
            if limit and self.in_flight >= limit:
                return False
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.in_flight
