"""Prometheus metrics of the router, shared by both runtimes (no Celery import here).

Use the functions, not the metric objects, from runtime code:

* :func:`record_cycle` - after every poll/send cycle: delivered/failed/quarantined counters and
  the cycle-duration histogram, from the cycle's report (incoming ``CycleReport`` or the outgoing
  report: any object with those integer attributes).
* :func:`record_error` - a cycle that raised.
* :func:`update_lag` - the age of the oldest staged message of an instance (a gauge).
* :func:`crm_timer` / :class:`TimedCrm` / :func:`metered_context` - CRM call latency.
* :func:`start_metrics_server` - serve ``/metrics`` over HTTP (``email-router run
  --metrics-port``, Celery workers from a ``worker_process_init``/``worker_ready`` signal). With
  ``PROMETHEUS_MULTIPROC_DIR`` set (prefork workers) it serves the merged multi-process registry.

Labels carry instance names and CRM operation names only: never addresses, subjects or secrets.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from router.config import ProviderConfiguration
from router.crm.base import CrmAdapter
from router.models import LedgerState
from router.service import Context
from router.state.base import StateStore

log = logging.getLogger(__name__)

DELIVERED = Counter(
    "email_router_messages_delivered_total",
    "Messages that reached their destination (CRM activity created, or email sent)",
    ["instance"],
)
FAILED = Counter(
    "email_router_messages_failed_total",
    "Outbound emails marked Failed, plus cycles that ended in an error",
    ["instance"],
)
QUARANTINED = Counter(
    "email_router_messages_quarantined_total",
    "Messages put aside with a reason (unparseable, refused by the CRM, too large, ...)",
    ["instance"],
)
CYCLE_ERRORS = Counter(
    "email_router_cycle_errors_total",
    "Poll/send cycles that raised, by error class",
    ["instance", "error"],
)
POLL_DURATION = Histogram(
    "email_router_poll_duration_seconds",
    "Duration of one poll (incoming) or send (outgoing) cycle",
    ["instance"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
CRM_LATENCY = Histogram(
    "email_router_crm_latency_seconds",
    "Latency of one CRM adapter call",
    ["operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG = Gauge(
    "email_router_lag_seconds",
    "Age of the oldest staged (not yet delivered) message of an instance; 0 when none",
    ["instance"],
    multiprocess_mode="max",
)

#: CrmAdapter methods whose latency is measured.
CRM_OPERATIONS = frozenset(
    {
        "check_incoming",
        "deliver",
        "deliver_many",
        "list_pending",
        "mark_sent",
        "mark_failed",
        "record_attempt",
        "who_am_i",
    }
)


# -- cycles ---------------------------------------------------------------------------------------
def _count(report: object, *names: str) -> int:
    return sum(int(getattr(report, n, 0) or 0) for n in names)


def is_busy(report: object) -> bool:
    """True for a cycle that did not run because another worker held the lease.

    Incoming reports say so in ``skipped`` (a reason string), outgoing ones in ``busy``
    (their ``skipped`` is a count of emails).
    """
    skipped = getattr(report, "skipped", None)
    return (isinstance(skipped, str) and bool(skipped)) or bool(getattr(report, "busy", None))


def record_cycle(report: object) -> None:
    """Count what one cycle did (``report.instance`` names it); skipped cycles count nothing."""
    instance = str(getattr(report, "instance", "") or "unknown")
    if is_busy(report):
        return
    DELIVERED.labels(instance).inc(_count(report, "delivered", "sent"))
    FAILED.labels(instance).inc(_count(report, "failed"))
    QUARANTINED.labels(instance).inc(_count(report, "quarantined"))
    duration = float(getattr(report, "duration", 0.0) or 0.0)
    POLL_DURATION.labels(instance).observe(duration)


def record_error(instance: str, exc: BaseException, duration: float | None = None) -> None:
    """Count a cycle that raised ``exc``."""
    CYCLE_ERRORS.labels(instance, type(exc).__name__).inc()
    if duration is not None:
        POLL_DURATION.labels(instance).observe(duration)


def update_lag(store: StateStore, instance: str, now: float | None = None) -> float:
    """Set and return the lag gauge: seconds since the oldest STAGED entry was staged."""
    oldest = store.list_entries(instance, [LedgerState.STAGED], limit=1)
    lag = max(0.0, (now or time.time()) - oldest[0].updated_at) if oldest else 0.0
    LAG.labels(instance).set(lag)
    return lag


def forget_instance(instance: str) -> None:
    """Drop an instance's series (it was removed from the configuration)."""
    for metric in (DELIVERED, FAILED, QUARANTINED, POLL_DURATION, LAG):
        with suppress(KeyError):  # KeyError: never observed in this process
            metric.remove(instance)


# -- CRM latency ----------------------------------------------------------------------------------
@contextmanager
def crm_timer(operation: str) -> Iterator[None]:
    """Observe the duration of the enclosed CRM call (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        CRM_LATENCY.labels(operation).observe(time.perf_counter() - started)


class TimedCrm:
    """A transparent proxy around a :class:`CrmAdapter` that times its calls.

    Use it where the adapter is handed out (see :func:`metered_context`), so adapters themselves
    need no metrics code.
    """

    def __init__(self, inner: CrmAdapter) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in CRM_OPERATIONS or not callable(value):
            return value
        return _timed(name, value)

    def __repr__(self) -> str:
        return f"TimedCrm({self._inner!r})"


def _timed(operation: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with crm_timer(operation):
            return func(*args, **kwargs)

    return call


class MeteredContext(Context):
    """A :class:`~router.service.Context` whose CRM adapters report their latency."""

    def crm(self, cfg: ProviderConfiguration) -> CrmAdapter:
        return cast(CrmAdapter, TimedCrm(super().crm(cfg)))


def metered_context(ctx: Context) -> MeteredContext:
    """The same configuration, store and settings, with timed CRM adapters."""
    if isinstance(ctx, MeteredContext):
        return ctx
    return MeteredContext(ctx.config, ctx.store, ctx.settings)


# -- exporter -------------------------------------------------------------------------------------
def start_metrics_server(port: int, addr: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread; return the bound port.

    ``port`` 0 picks a free port. In containers pass ``addr="0.0.0.0"``. When
    ``PROMETHEUS_MULTIPROC_DIR`` is set (Celery prefork), the merged registry of all processes
    is served instead of this process's own.
    """
    registry = _multiprocess_registry()
    if registry is not None:
        server, _thread = start_http_server(port, addr, registry=registry)
    else:
        server, _thread = start_http_server(port, addr)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return bound


def _multiprocess_registry() -> CollectorRegistry | None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
