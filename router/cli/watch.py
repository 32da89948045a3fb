"""``email-router watch``: hold IMAP IDLE on the ``<Push>idle</Push>`` mailboxes, poll on new mail.

Use it beside a Celery cluster (one process, or a few with disjoint files, for thousands of
mailboxes): every new-mail notification sends the instance's normal poll task through the
trigger (``--trigger celery``, :mod:`workers.push`, the default). ``email-router run`` needs
no watch process: it holds IDLE itself. The configuration file is followed like everywhere else
(``ConfigRefreshPeriod``): instances added, removed or changed are watched, dropped or
reconnected without a restart. SIGTERM / SIGINT stop it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from router.cli.common import config_file
from router.config import load_settings
from router.logsetup import configure_logging
from router.memtune import limit_malloc_arenas
from router.push import PushTiming, PushWatchers, load_trigger
from router.runtime.watch import ConfigWatcher

log = logging.getLogger(__name__)

#: Default seconds between IDLE renewals: RFC 2177 asks for one before 29 minutes.
DEFAULT_RENEW = PushTiming().renew


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``watch`` and its options."""
    p = sub.add_parser(
        "watch",
        help="hold IMAP IDLE on <Push>idle</Push> mailboxes and poll them as mail arrives",
        description="Watch every enabled incoming instance with <Push>idle</Push> through IMAP "
        "IDLE; on new mail, start that instance's poll at once through the trigger (Celery by "
        "default). Polling every PollingPeriod goes on as the safety net.",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=None,
        help="configuration file (default: $ROUTER_CONFIG, else ./router.xml)",
    )
    p.add_argument(
        "--trigger",
        default="celery",
        metavar="NAME",
        help="what starts a poll: celery (default) or package.module:Factory",
    )
    p.add_argument(
        "--renew",
        type=_renew_seconds,
        default=DEFAULT_RENEW,
        metavar="SECONDS",
        help=f"end and restart IDLE this often (default {DEFAULT_RENEW:.0f}, under 29 minutes)",
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.set_defaults(func=cmd_watch)


def _renew_seconds(text: str) -> float:
    """``--renew``: more than 0, at most 29 minutes (RFC 2177)."""
    value = float(text)
    if not 0 < value <= 29 * 60:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 1740 (29 minutes)")
    return value


def cmd_watch(args: argparse.Namespace) -> int:
    """Run ``email-router watch`` with the parsed ``args``; return the exit code."""
    limit_malloc_arenas()  # before the watcher threads start: see router.memtune
    settings = load_settings()
    files = ConfigWatcher(config_file(args.config))
    config = files.load()
    configure_logging(
        settings.log_level or config.system.log_level,
        settings.log_format,
        log_file=config.system.log_file,
    )
    push = PushWatchers(load_trigger(args.trigger), PushTiming(renew=args.renew))
    push.apply(config)
    log.info("email-router watch: %d mailboxes with <Push>idle</Push>", len(push.names))
    deadline = None if args.duration is None else time.monotonic() + args.duration
    stop = threading.Event()
    try:
        with _stopped_by_signals(stop):
            while not stop.wait(_wait(deadline)):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                changed = files.poll()
                if changed is not None:
                    push.apply(changed)
                    log.info("configuration reloaded: watching %d mailboxes", len(push.names))
    finally:
        push.close()
    log.info("email-router watch stopped")
    return 0


def _wait(deadline: float | None) -> float:
    """Seconds until the next look at the file (the watcher rate-limits itself)."""
    if deadline is None:
        return 1.0
    return max(0.0, min(1.0, deadline - time.monotonic()))


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while inside (main thread only; else no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping the watchers", signal.Signals(signum).name)
        stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
