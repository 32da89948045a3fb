"""The process entry of ``email-router run``: one process, a thread pool, no Redis, no Celery.

Use :func:`main` (the ``run`` command calls it) to run every instance of one configuration file
on one machine, like the original Email Router service; :func:`open_runtime` builds the
:class:`~router.runtime.schedule.Scheduler` without running it. This module owns what belongs to
the process: the memory and logging set-up, the metrics server, the IMAP IDLE watchers of the
``<Push>idle</Push>`` instances (:mod:`router.push`; read at start), the signals (SIGTERM/SIGINT
stop the scheduling and wait, bounded, for the runs in flight; a second signal stops waiting) and
the hard exit when a cycle cannot be interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from router import metrics
from router.config import Settings, load_settings
from router.configcheck import load_config
from router.context import open_state_store
from router.logsetup import configure_logging
from router.memtune import limit_malloc_arenas
from router.push import PushWatchers
from router.runtime.schedule import DEFAULT_SHUTDOWN_GRACE, Scheduler

log = logging.getLogger(__name__)

#: The signals that stop the scheduler (a second one stops waiting for the running cycles).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def open_runtime(
    config_path: str | Path | None,
    state_url: str | None = None,
    *,
    settings: Settings | None = None,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Scheduler:
    """Load the configuration (ConfigError when invalid) and open its state store."""
    settings = settings or Settings()
    path = Path(config_path) if config_path else settings.config
    config = load_config(path)
    store = open_state_store(config, settings, state_url)
    return Scheduler(path, store, config, settings, shutdown_grace=shutdown_grace)


@contextmanager
def stopped_by_signals(scheduler: Scheduler) -> Iterator[None]:
    """SIGTERM and SIGINT stop ``scheduler`` while inside (main thread only; else no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping the scheduler", signal.Signals(signum).name)
        scheduler.stop()

    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(
    config_path: str | None,
    state_url: str | None,
    *,
    duration: float | None = None,
    metrics_port: int | None = None,
    metrics_addr: str | None = None,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> int:
    """``email-router run``: returns the exit code (exits hard if a cycle is stuck)."""
    limit_malloc_arenas()  # before the thread pool starts: see router.memtune
    settings = load_settings()
    port = metrics_port if metrics_port is not None else settings.metrics_port
    token = metrics.scrape_token(settings, required=port is not None)  # before anything opens
    runtime = open_runtime(config_path, state_url, settings=settings, shutdown_grace=shutdown_grace)
    system = runtime.config.system
    level = settings.log_level or system.log_level
    configure_logging(level, settings.log_format, log_file=system.log_file)
    if port is not None:
        metrics.start_metrics_server(port, metrics_addr or settings.metrics_addr, token)
    push = PushWatchers(runtime)  # <Push>idle</Push> instances: new mail polls at once
    runtime.follow(push.apply)  # and what a reloaded file says from then on
    try:
        with stopped_by_signals(runtime):
            code = runtime.run(duration)
    finally:
        push.close()
    runtime.store.close()
    if runtime.stuck:
        # the stuck threads cannot be interrupted; their leases are released, so leave now
        logging.shutdown()
        os._exit(code)
    return code
