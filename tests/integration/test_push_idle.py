"""IMAP IDLE push against the private Dovecot: new mail, renewal, a dropped session, no IDLE.

Real parts: Dovecot (it supports IDLE and notifies new mail about 0.5 s after it lands), the
imap provider's own connection code. The trigger records calls instead of polling: what is
under test is when the watcher asks for a poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from router.config import Configuration, ProviderConfiguration
from router.providers.base import Provider
from router.providers.imap import ImapProvider
from router.push import PushTiming, PushWatchers, WatchStats
from tests.servers.common import free_port, wait_for
from tests.servers.dovecot import Dovecot, message

pytestmark = pytest.mark.dovecot

FAST = PushTiming(renew=600.0, backoff_min=0.2, backoff_max=1.0)


class Recorder:
    """A trigger that notes when each poll was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.called = threading.Event()

    def poll_now(self, instance: str) -> None:
        self.calls.append((instance, time.monotonic()))
        self.called.set()

    def wait_after(self, since: float, timeout: float = 5.0) -> float | None:
        """Seconds from ``since`` to the first call after it, or None within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [at for _name, at in self.calls if at >= since]
            if later:
                return later[0] - since
            self.called.wait(0.05)
            self.called.clear()
        return None


def pushed(cfg: ProviderConfiguration) -> Configuration:
    return Configuration(providers=(cfg.model_copy(update={"push": "idle"}),))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watchers(recorder: Recorder) -> Iterator[list[PushWatchers]]:
    """Build PushWatchers through ``make(...)``; all are closed after the test."""
    made: list[PushWatchers] = []
    yield made
    for w in made:
        w.close()


def start(
    made: list[PushWatchers], recorder: Recorder, config: Configuration, **kwargs: Any
) -> PushWatchers:
    timing = kwargs.pop("timing", FAST)
    push = PushWatchers(recorder, timing, **kwargs)
    made.append(push)
    push.apply(config)
    return push


def only(push: PushWatchers) -> WatchStats:
    (stats,) = push.stats().values()
    return stats


def idling(push: PushWatchers, connects: int = 1) -> bool:
    stats = only(push)
    return stats.state == "idling" and stats.connects >= connects


def test_an_append_to_a_watched_mailbox_triggers_its_poll_within_a_second(
    dovecot: Dovecot, dovecot_user: str, recorder: Recorder, watchers: list[PushWatchers]
) -> None:
    # Given a watched mailbox, IDLE established
    cfg = dovecot.provider_config(dovecot_user)
    push = start(watchers, recorder, pushed(cfg))
    assert wait_for(lambda: idling(push), 10), push.stats()
    assert recorder.calls == []  # nothing is pushed before mail arrives

    # When a message is appended
    dovecot.append(dovecot_user, message(1))
    appended = time.monotonic()

    # Then the instance's poll is asked for within a second
    latency = recorder.wait_after(appended)
    assert latency is not None and latency < 1.0, (latency, push.stats())
    assert {name for name, _ in recorder.calls} == {cfg.name}


def test_idle_is_renewed_each_period_and_still_reports_new_mail(
    dovecot: Dovecot, dovecot_user: str, recorder: Recorder, watchers: list[PushWatchers]
) -> None:
    # Given a watcher that renews IDLE every 0.3 s
    timing = PushTiming(renew=0.3, backoff_min=0.2, backoff_max=1.0)
    push = start(watchers, recorder, pushed(dovecot.provider_config(dovecot_user)), timing=timing)

    # When it has run for a few periods
    assert wait_for(lambda: only(push).renewals >= 3, 10), push.stats()

    # Then it stayed on one connection, and new mail still triggers a poll
    dovecot.append(dovecot_user, message(2))
    assert recorder.wait_after(time.monotonic() - 0.01) is not None
    stats = only(push)
    assert (stats.connects, stats.failures) == (1, 0)


def test_a_session_killed_by_the_server_reconnects_after_a_backoff_and_polls_once(
    dovecot: Dovecot, dovecot_user: str, recorder: Recorder, watchers: list[PushWatchers]
) -> None:
    # Given a watched mailbox
    push = start(watchers, recorder, pushed(dovecot.provider_config(dovecot_user)))
    assert wait_for(lambda: idling(push), 10), push.stats()

    # When the server kills the IMAP session
    kicked = time.monotonic()
    dovecot.doveadm("kick", dovecot_user)

    # Then the watcher reconnects after a backoff within the configured bounds ...
    assert wait_for(lambda: idling(push, connects=2), 10), push.stats()
    stats = only(push)
    assert stats.failures == 1
    assert FAST.backoff_min * 0.5 <= stats.last_backoff <= FAST.backoff_min
    # ... asks for one poll for what may have arrived while it was away ...
    assert recorder.wait_after(kicked) is not None
    # ... and reports new mail again
    dovecot.append(dovecot_user, message(3))
    appended = time.monotonic()
    latency = recorder.wait_after(appended)
    assert latency is not None and latency < 1.0
    # ... and a later kill, after a healthy session, starts the backoff over (not doubled)
    dovecot.doveadm("kick", dovecot_user)
    assert wait_for(lambda: idling(push, connects=3), 10), push.stats()
    assert only(push).failures == 2
    assert only(push).last_backoff <= FAST.backoff_min


def test_an_unreachable_server_is_retried_with_growing_backoff_and_never_triggers(
    dovecot: Dovecot, dovecot_user: str, recorder: Recorder, watchers: list[PushWatchers]
) -> None:
    # Given a watched instance whose server port has nothing listening
    cfg = dovecot.provider_config(dovecot_user, port=free_port(), timeout=2)
    timing = PushTiming(renew=600.0, backoff_min=0.05, backoff_max=0.4)
    push = start(watchers, recorder, pushed(cfg), timing=timing)

    # When it has failed several times
    assert wait_for(lambda: only(push).failures >= 5, 10), push.stats()

    # Then it waits longer each time, up to the cap, and asked for no poll
    stats = only(push)
    assert stats.state == "backoff"
    assert timing.backoff_max * 0.5 <= stats.last_backoff <= timing.backoff_max
    assert recorder.calls == []


class _NoIdleClient(IMAPClient):
    """Dovecot as a server without IDLE: the capability is hidden."""

    def capabilities(self) -> tuple[bytes, ...]:
        return tuple(c for c in super().capabilities() if c.upper() != b"IDLE")


class _NoIdleImap(ImapProvider):
    def _create_client(self) -> IMAPClient:
        return _NoIdleClient(
            self.config.email_server or "", self.port, ssl=False, timeout=self.options.timeout
        )


def _no_idle(cfg: ProviderConfiguration) -> Provider:
    return _NoIdleImap(cfg)


def test_a_server_without_idle_falls_back_to_polling_with_one_log_line(
    dovecot: Dovecot,
    dovecot_user: str,
    recorder: Recorder,
    watchers: list[PushWatchers],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that does not offer IDLE
    caplog.set_level(logging.WARNING, logger="router.push")
    cfg = dovecot.provider_config(dovecot_user)
    push = start(watchers, recorder, pushed(cfg), provider_factory=_no_idle)

    # When the watcher has connected
    assert wait_for(lambda: only(push).state == "polling-only", 10), push.stats()

    # Then it stopped after one log line naming the instance, and never reconnects
    lines = [r.getMessage() for r in caplog.records if "IDLE" in r.getMessage()]
    assert len(lines) == 1 and cfg.name in lines[0] and "polled every" in lines[0]
    dovecot.append(dovecot_user, message(4))
    time.sleep(1.0)
    assert recorder.calls == []
    assert only(push).connects == 0


def test_watching_follows_the_configuration(
    dovecot: Dovecot, recorder: Recorder, watchers: list[PushWatchers]
) -> None:
    # Given two pushed mailboxes
    one, two = dovecot.new_user(), dovecot.new_user()
    cfg_one = dovecot.provider_config(one).model_copy(update={"push": "idle"})
    cfg_two = dovecot.provider_config(two).model_copy(update={"push": "idle"})
    push = start(watchers, recorder, Configuration(providers=(cfg_one, cfg_two)))
    assert push.names == sorted([cfg_one.name, cfg_two.name])

    # When the second one stops asking for push
    push.apply(Configuration(providers=(cfg_one, cfg_two.model_copy(update={"push": "none"}))))

    # Then only the first is watched: mail to the second triggers nothing
    assert push.names == [cfg_one.name]
    assert wait_for(lambda: idling(push), 10), push.stats()
    dovecot.append(two, message(5))
    time.sleep(1.0)
    assert all(name == cfg_one.name for name, _ in recorder.calls)


def test_a_connection_cut_without_a_goodbye_is_noticed_and_retried(
    dovecot: Dovecot,
    dovecot_user: str,
    dropping_proxy: Any,
    recorder: Recorder,
    watchers: list[PushWatchers],
) -> None:
    # Given a watcher whose IDLE session runs through a proxy
    cfg = dovecot.provider_config(dovecot_user, port=dropping_proxy.port)
    push = start(watchers, recorder, pushed(cfg))
    assert wait_for(lambda: idling(push), 10), push.stats()

    # When the proxy cuts the connection mid-response (no BYE: one byte, then the TCP
    # connection ends) and keeps cutting every new one
    dropping_proxy.arm(1)
    dovecot.append(dovecot_user, message(5))  # the EXISTS the server then sends is cut

    # Then the watcher notices and backs off instead of spinning on a dead socket ...
    assert wait_for(lambda: only(push).failures >= 2, 10), push.stats()
    assert only(push).connects == 1
    # ... and once connections go through again it is back, and polls for what it missed
    reconnecting = time.monotonic()
    dropping_proxy.limit = None
    assert wait_for(lambda: idling(push, connects=2), 10), push.stats()
    assert recorder.wait_after(reconnecting) is not None


def test_idle_over_implicit_tls_reports_new_mail(
    dovecot: Dovecot, dovecot_user: str, recorder: Recorder, watchers: list[PushWatchers]
) -> None:
    # Given a watcher on the IMAPS port, verifying the server against the test CA
    cfg = dovecot.provider_config(dovecot_user, security="ssl", ca_bundle=str(dovecot.ca_path))
    push = start(watchers, recorder, pushed(cfg))
    assert wait_for(lambda: idling(push), 10), push.stats()

    # When a message is appended, then its poll is asked for
    dovecot.append(dovecot_user, message(6))
    appended = time.monotonic()
    latency = recorder.wait_after(appended)
    assert latency is not None and latency < 1.0, (latency, push.stats())


def keepalive_due_in(remote_port: int) -> float | None:
    """Seconds until the kernel's keepalive probe on our connection to ``remote_port``.

    Read from /proc/net/tcp (``tr`` 2 is the keepalive timer; ``tm->when`` is in clock ticks);
    None when that connection runs no keepalive timer.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            remote, state, timer = fields[2], fields[3], fields[5]
            if int(remote.rsplit(":", 1)[1], 16) == remote_port and state == "01":
                kind, when = timer.split(":")
                return int(when, 16) / os.sysconf("SC_CLK_TCK") if kind == "02" else None
    raise AssertionError(f"no established connection to port {remote_port}")


def test_an_idle_session_has_the_kernel_probe_a_silent_server(
    dovecot: Dovecot,
    dovecot_user: str,
    dropping_proxy: Any,
    recorder: Recorder,
    watchers: list[PushWatchers],
) -> None:
    # Given a watcher idling through a port of its own (the proxy: nothing else connects there)
    timing = PushTiming(renew=600.0, keepalive_idle=45, keepalive_interval=5, keepalive_probes=3)
    cfg = dovecot.provider_config(dovecot_user, port=dropping_proxy.port)
    push = start(watchers, recorder, pushed(cfg), timing=timing)
    assert wait_for(lambda: idling(push), 10), push.stats()

    # Then the kernel will probe the server after 45 s of silence, not the system's 2 hours: a
    # server gone without FIN or RST fails the session within about a minute
    due = keepalive_due_in(dropping_proxy.port)
    assert due is not None and 30 < due <= 45, due
