"""Celery signal handlers: logging, the per-process context, and the metrics hook points.

* ``setup_logging`` - the router's redacting text/JSON logging (``ROUTER_LOG_FORMAT``; level
  ``ROUTER_LOG_LEVEL``, else ``<LogLevel>``) replaces Celery's own in the worker, beat and pool.
* ``worker_process_init`` - a pool child forgets any context inherited from its parent (its
  sockets belong to the parent); the child opens its own on first use. It also forgets the
  parent's heartbeat and starts its own beat thread (:mod:`router.runtime.heartbeat`): the
  leases its tasks take carry its pid, and when it dies they are freed within seconds.
* ``worker_process_shutdown`` - stop the beats, close the child's context (state store, CRM
  sessions).
* ``worker_ready`` - with a ``solo`` or ``threads`` pool the main process runs the tasks, so it
  beats (with prefork only the children do).
* ``worker_ready`` - serve Prometheus ``/metrics`` when ``ROUTER_METRICS_PORT`` is set (with
  ``PROMETHEUS_MULTIPROC_DIR`` set, the merged registry of all pool processes), on
  ``ROUTER_METRICS_ADDR`` (default 127.0.0.1) behind the bearer token ``ROUTER_METRICS_TOKEN``
  (or ``_FILE``); without a token the worker runs but logs an error and serves no metrics.
* :func:`observe_cycle` / :func:`observe_error` / :func:`observe_lag` - what tasks call after a
  cycle; they feed ``router.metrics`` and then any callable registered in :data:`CYCLE_HOOKS`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from router import metrics
from router.config import Settings, SystemConfiguration
from router.errors import ConfigError
from router.logsetup import configure_logging
from router.report import CycleOutcome
from router.runtime.heartbeat import HeartbeatThread
from router.state.base import InstancePeek, StateStore
from workers.context import HOLDER, system_of

log = logging.getLogger(__name__)

#: Extra observers of finished cycles: ``hook(task_name, report_or_exception)``.
CYCLE_HOOKS: list[Callable[[str, object], None]] = []


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Use the router's logging instead of Celery's (connecting this signal disables Celery's)."""
    settings = Settings()
    system = system_of(settings)
    level = settings.log_level or system.log_level
    configure_logging(level, settings.log_format, log_file=system.log_file)


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    HOLDER.forget()  # (the parent's heartbeat state is reset at the fork: router.ledger.leases)
    _start_heartbeat()


@contextlib.contextmanager
def _heartbeat_source() -> Iterator[tuple[StateStore, SystemConfiguration]]:
    """The store and configuration of the worker's current context, for one beat."""
    with HOLDER.use() as ctx:
        yield ctx.store, ctx.config.system


#: This process's beat thread, once started.
_BEATS: list[HeartbeatThread] = []


def _start_heartbeat() -> None:
    # first beat in the thread, not here: a pool child that does not report "up" within
    # seconds is killed by the pool, and Redis may be slow to answer right now
    _BEATS[:] = [HeartbeatThread(_heartbeat_source).start()]


@worker_process_shutdown.connect
def _child_stopping(**_: Any) -> None:
    for beats in _BEATS:
        beats.stop()
    HOLDER.close()


@worker_ready.connect
def _main_process_beats(sender: Any = None, **_: Any) -> None:
    # prefork: the pool children run the tasks and beat (worker_process_init); a beat thread
    # here would be copied, with any lock it holds, into every child forked later
    if sender is not None and not isinstance(sender.pool, PreforkPool):
        _start_heartbeat()


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    settings = Settings()
    if settings.metrics_port is None:
        return
    try:
        token = metrics.scrape_token(settings, required=True)
        metrics.start_metrics_server(settings.metrics_port, settings.metrics_addr, token)
    except ConfigError as exc:  # the worker's tasks matter more than its metrics: keep running
        log.error("metrics not served: %s", exc)


def observe_cycle(task: str, report: CycleOutcome) -> None:
    """Count a finished cycle (never fails the task: metrics are best effort)."""
    _notify(lambda: metrics.record_cycle(report), task, report)


def observe_lag(store: StateStore, instance: str, after: InstancePeek | None = None) -> None:
    """Update the instance's lag gauge (age of its oldest staged message); ``after``: what a
    poll read back at its end (then the store is not asked again)."""

    def record() -> None:
        if after is None:
            metrics.update_lag(store, instance)
        else:
            metrics.set_lag(instance, after.oldest_staged)

    _notify(record, "lag", instance)


def observe_error(task: str, instance: str, exc: BaseException) -> None:
    """Count a cycle that raised."""
    _notify(lambda: metrics.record_error(instance, exc), task, exc)


def _notify(record: Callable[[], None], task: str, what: object) -> None:
    for hook in (lambda _t, _w: record(), *CYCLE_HOOKS):
        try:
            hook(task, what)
        except Exception:  # a broken observer must not fail the task
            log.warning("metrics hook failed for %s", task, exc_info=True)
