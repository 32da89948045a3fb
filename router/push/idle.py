"""IMAP IDLE on one mailbox (RFC 2177), in a thread of its own.

Use :class:`IdleWatcher` (through :class:`~router.push.watchers.PushWatchers`) for one
``<Push>idle</Push>`` instance. Its thread:

* connects through the instance's own :class:`~router.providers.imap.ImapProvider`
  (``idle_connection``: same TLS, credentials and folder as the polls), at most
  ``connect_concurrency`` logins at once per process, so a restart of 1,000 watchers does not
  storm the server;
* stops for good, with one log line, when the server does not offer IDLE (polling goes on);
* IDLEs, and on ``EXISTS`` / ``RECENT`` calls the trigger with the instance name;
* ends and restarts IDLE every ``renew`` seconds (default 28 minutes: servers may drop a client
  idle for 30);
* turns TCP keepalive on for the session, so a server that vanished without a FIN or RST (a NAT
  or firewall that forgot the connection, a host that lost power) is noticed after about
  ``keepalive_idle + keepalive_interval * keepalive_probes`` seconds (2 minutes by default)
  instead of at the next renewal;
* after a failure reconnects with exponential backoff and jitter, and then triggers one poll,
  since mail may have arrived while it was away.

A thread per mailbox costs little: about 51 KB of RSS per watched mailbox at 1,000 in one
process (``tests/benchmarks/bench_push.py``), and no CPU, since it spends its life blocked in
``poll()`` on its socket.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imapclient import IMAPClient

from router.errors import ProviderAuthError, ProviderUnavailable, RouterError
from router.providers.imap import ImapProvider
from router.push.trigger import Trigger

log = logging.getLogger(__name__)

#: Untagged IDLE responses that mean new mail in the folder.
NEW_MAIL = (b"EXISTS", b"RECENT")


@dataclass(frozen=True)
class PushTiming:
    """How long a watcher IDLEs before renewing, and how it backs off after failures (s)."""

    renew: float = 28 * 60.0
    backoff_min: float = 1.0
    backoff_max: float = 120.0
    # well under the idle timeouts of NATs and firewalls (often 5 minutes and more)
    keepalive_idle: int = 60
    keepalive_interval: int = 15
    keepalive_probes: int = 4

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Delay before attempt ``failures + 1``: doubling from the minimum, capped, jittered."""
        delay = min(self.backoff_max, self.backoff_min * 2.0 ** max(0, failures - 1))
        return delay * rng.uniform(0.5, 1.0)  # jitter: reconnects after a restart spread out


@dataclass
class WatchStats:
    """What a watcher has done so far (read by tests, benchmarks and the watch command)."""

    state: str = "starting"  # starting | idling | backoff | polling-only | stopped
    connects: int = 0
    renewals: int = 0
    triggers: int = 0
    failures: int = 0
    last_backoff: float = 0.0


class IdleWatcher:
    """Holds IDLE on one instance's folder in a daemon thread; calls ``trigger`` on new mail."""

    def __init__(
        self,
        provider: ImapProvider,
        trigger: Trigger,
        timing: PushTiming | None = None,
        *,
        gate: threading.Semaphore | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.provider, self.name, self.trigger = provider, provider.name, trigger
        self.timing = timing or PushTiming()
        self.stats = WatchStats()
        self._gate = gate or threading.Semaphore(1)
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._client: IMAPClient | None = None
        self._thread = threading.Thread(target=self.run, name=f"push-{self.name}", daemon=True)

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the watcher's thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; shutting the socket down wakes it from ``poll()`` at once."""
        self._stop.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.socket().shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def run(self) -> None:
        """The thread body: sessions until stopped, backoff between failed ones."""
        failures = 0
        while not self._stop.is_set():
            connects = self.stats.connects
            try:
                if not self._session():
                    self._polling_only()
                    return
            except RouterError as exc:
                if self._stop.is_set():
                    break
                # a session that got as far as IDLE starts the backoff over
                failures = 1 if self.stats.connects > connects else failures + 1
                self._failed(exc, failures)
        self.stats.state = "stopped"

    def _failed(self, exc: RouterError, failures: int) -> None:
        delay = self.timing.backoff(failures, self._rng)
        if isinstance(exc, ProviderAuthError):  # retrying refused credentials locks accounts
            delay = self.timing.backoff_max
        self.stats.failures += 1
        self.stats.state, self.stats.last_backoff = "backoff", delay
        level = logging.ERROR if isinstance(exc, ProviderAuthError) else logging.WARNING
        log.log(level, "%s: IDLE lost, reconnecting in %.1fs: %s", self.name, delay, exc)
        self._stop.wait(delay)

    def _polling_only(self) -> None:
        self.stats.state = "polling-only"
        log.warning(
            "%s: %s does not offer IMAP IDLE; the instance is polled every PollingPeriod only",
            self.name,
            self.provider.config.email_server,
        )

    # -- one connection -------------------------------------------------------------------------
    def _session(self) -> bool:
        """Connect and IDLE until stopped or the connection fails; False without IDLE."""
        with self._gate:
            client = self.provider.idle_connection()
        self._client = client
        try:
            if not client.has_capability("IDLE"):
                return False
            keep_alive(client.socket(), self.timing)
            self.stats.connects += 1
            if self.stats.connects == 1:
                log.info("%s: IMAP IDLE on: new mail is polled at once", self.name)
            else:
                log.info("%s: IMAP IDLE back after a reconnect", self.name)
                self._fire("reconnected")  # what arrived while disconnected
            with self.provider.wrap("IDLE"):
                self._idle(client)
        finally:
            self._client = None
            _close_quietly(client)
        return True

    def _idle(self, client: IMAPClient) -> None:
        while not self._stop.is_set():
            client.idle()
            self.stats.state = "idling"
            self._wait_for_mail(client, time.monotonic() + self.timing.renew)
            if self._stop.is_set():
                return
            _text, responses = client.idle_done()
            self._check(responses)
            self.stats.renewals += 1

    def _wait_for_mail(self, client: IMAPClient, deadline: float) -> None:
        """Read IDLE responses until ``deadline``; ProviderUnavailable when the server leaves."""
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            responses = client.idle_check(timeout=left)
            self._check(responses)
            if not responses and time.monotonic() < deadline and _peer_closed(client.socket()):
                # imapclient returns [] at EOF instead of raising: look at the socket itself
                raise ProviderUnavailable(f"{self.name}: the server closed the IDLE connection")

    def _check(self, responses: Iterable[Any]) -> None:
        found = list(responses)
        if any(_is_bye(r) for r in found):
            raise ProviderUnavailable(f"{self.name}: the server ended the IDLE session (BYE)")
        if any(_is_new_mail(r) for r in found):
            self._fire("new mail")

    def _fire(self, why: str) -> None:
        self.stats.triggers += 1
        log.debug("%s: %s: poll now", self.name, why)
        try:
            self.trigger.poll_now(self.name)
        except Exception as exc:  # a trigger is a plug-in; the polling safety net still runs
            log.warning("%s: could not start a poll (%s): %s", self.name, why, exc)


def _is_new_mail(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in NEW_MAIL


def _is_bye(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 1 and response[0] == b"BYE"


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) the TCP connection, without reading from it."""
    hangup = select.POLLRDHUP | select.POLLHUP | select.POLLERR
    try:
        poller = select.poll()
        poller.register(sock.fileno(), hangup)
        return any(events & hangup for _fd, events in poller.poll(0))
    except (OSError, ValueError):  # a closed socket has no file descriptor any more
        return True


def keep_alive(sock: socket.socket, timing: PushTiming) -> None:
    """Have the kernel probe ``sock`` after ``timing.keepalive_idle`` seconds of silence.

    A dead peer then fails the socket (ETIMEDOUT), which wakes ``idle_check`` with an error.
    The three timers are Linux's; elsewhere the system's defaults (hours) apply.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if sys.platform == "linux":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, timing.keepalive_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, timing.keepalive_interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, timing.keepalive_probes)


def _close_quietly(client: IMAPClient) -> None:
    with contextlib.suppress(Exception):  # no LOGOUT inside IDLE; the connection may be gone
        client.shutdown()
