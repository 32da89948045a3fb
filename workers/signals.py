"""Celery signal handlers: logging, the per-process context, and the metrics hook points.

* ``setup_logging`` - the router's redacting text/JSON logging (``ROUTER_LOG_FORMAT``; level
  ``ROUTER_LOG_LEVEL``, else ``<LogLevel>``) replaces Celery's own in the worker, beat and pool.
* ``worker_process_init`` - a pool child forgets any context inherited from its parent (its
  sockets belong to the parent); the child opens its own on first use.
* ``worker_process_shutdown`` - close the child's context (state store, CRM sessions).
* ``worker_ready`` - serve Prometheus ``/metrics`` when ``ROUTER_METRICS_PORT`` is set (with
  ``PROMETHEUS_MULTIPROC_DIR`` set, the merged registry of all pool processes).
* :func:`observe_cycle` / :func:`observe_error` / :func:`observe_lag` - what tasks call after a
  cycle; they feed ``router.metrics`` and then any callable registered in :data:`CYCLE_HOOKS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from router import metrics
from router.config import Settings
from router.state.base import StateStore
from workers.context import HOLDER, system_of

log = logging.getLogger(__name__)

#: Extra observers of finished cycles: ``hook(task_name, report_or_exception)``.
CYCLE_HOOKS: list[Callable[[str, object], None]] = []


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Use the router's logging instead of Celery's (connecting this signal disables Celery's)."""
    from router.logsetup import configure_logging

    settings = Settings()
    configure_logging(settings.log_level or system_of(settings).log_level, settings.log_format)


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    HOLDER.forget()


@worker_process_shutdown.connect
def _child_stopping(**_: Any) -> None:
    HOLDER.close()


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    port = Settings().metrics_port
    if port is not None:
        metrics.start_metrics_server(port, "0.0.0.0")  # scraped from outside the host


def observe_cycle(task: str, report: object) -> None:
    """Count a finished cycle (never fails the task: metrics are best effort)."""
    _notify(lambda: metrics.record_cycle(report), task, report)


def observe_lag(store: StateStore, instance: str) -> None:
    """Update the instance's lag gauge (age of its oldest staged message)."""

    def record() -> None:
        metrics.update_lag(store, instance)

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
