"""Prometheus metrics of the router, shared by both runtimes (no Celery import here).

Use the functions, not the metric objects, from runtime code:

* :func:`record_cycle` - after every poll/send cycle: delivered/failed/quarantined counters, the
  per-class counter of messages a classification policy kept out (``classified``) and the
  cycle-duration histogram, from the cycle's report (a :class:`router.report.CycleOutcome`:
  what its :meth:`~router.report.CycleOutcome.tally` counts).
* :func:`record_error` - a cycle that raised.
* :func:`update_lag` - the age of the oldest staged message of an instance (a gauge).
* :func:`crm_timer` / :class:`TimedCrm` / :func:`metered_context` - CRM call latency.
* :func:`start_metrics_server` - serve ``/metrics`` over HTTP (``email-router run
  --metrics-port``, Celery workers from a ``worker_ready`` signal). With
  ``PROMETHEUS_MULTIPROC_DIR`` set (prefork workers) it serves the merged multi-process registry.
  It listens on 127.0.0.1 unless told otherwise and answers only requests carrying
  ``Authorization: Bearer <token>`` (:func:`scrape_token`: ``ROUTER_METRICS_TOKEN`` or
  ``ROUTER_METRICS_TOKEN_FILE``); without a token it refuses to start. Prometheus sends the token
  with ``authorization: {credentials_file: /path/to/token}`` in its scrape config.

Labels carry instance names and CRM operation names only: never addresses, subjects or secrets.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
)

from router.config import ProviderConfiguration, Settings
from router.context import Context
from router.crm.base import CrmAdapter
from router.errors import ConfigError
from router.models import LedgerState
from router.report import CycleOutcome
from router.state.base import StateStore
from router.websurface import DEFAULT_ADDRESS, bearer_ok, warn_if_exposed

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
CLASSIFIED = Counter(
    "email_router_messages_classified_total",
    "Incoming messages a classification policy kept out of the CRM (skipped or quarantined), "
    "by class (auto_reply, bounce, fax, voice_mail, meeting_request, ...)",
    ["instance", "kind"],
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
def record_cycle(report: CycleOutcome) -> None:
    """Count what one cycle did (``report.instance`` names it).

    A cycle that did not run (another worker held the lease) counts nothing.
    """
    if report.not_run():
        return
    instance, tally = report.instance or "unknown", report.tally()
    DELIVERED.labels(instance).inc(tally.delivered)
    FAILED.labels(instance).inc(tally.failed)
    QUARANTINED.labels(instance).inc(tally.quarantined)
    for kind, count in tally.classified.items():
        CLASSIFIED.labels(instance, kind).inc(count)
    POLL_DURATION.labels(instance).observe(report.duration)


def record_error(instance: str, exc: BaseException, duration: float | None = None) -> None:
    """Count a cycle that raised ``exc``."""
    CYCLE_ERRORS.labels(instance, type(exc).__name__).inc()
    if duration is not None:
        POLL_DURATION.labels(instance).observe(duration)


def update_lag(store: StateStore, instance: str, now: float | None = None) -> float:
    """Set and return the lag gauge: seconds since the oldest STAGED entry was staged."""
    oldest = store.list_entries(instance, [LedgerState.STAGED], limit=1)
    return set_lag(instance, oldest[0].updated_at if oldest else None, now)


def set_lag(instance: str, oldest_staged: float | None, now: float | None = None) -> float:
    """Set and return the lag gauge from when the oldest STAGED entry was staged (None: none)."""
    lag = 0.0 if oldest_staged is None else max(0.0, (now or time.time()) - oldest_staged)
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
    """A :class:`~router.context.Context` whose CRM adapters report their latency."""

    def crm(self, cfg: ProviderConfiguration) -> CrmAdapter:
        return cast(CrmAdapter, TimedCrm(super().crm(cfg)))


def metered_context(ctx: Context) -> MeteredContext:
    """The same configuration, store and settings, with timed CRM adapters."""
    if isinstance(ctx, MeteredContext):
        return ctx
    return MeteredContext(ctx.config, ctx.store, ctx.settings)


# -- exporter -------------------------------------------------------------------------------------
def scrape_token(settings: Settings, *, required: bool = False) -> str | None:
    """The bearer token scrapers must send: ``ROUTER_METRICS_TOKEN``, else the file's text.

    ``required`` (a metrics port is set): ConfigError when there is none, before anything starts.
    """
    token = settings.metrics_token or _read_token_file(settings.metrics_token_file)
    token = (token or "").strip() or None
    if required and token is None:
        raise ConfigError(_NO_TOKEN)
    return token


_NO_TOKEN = (
    "environment: ROUTER_METRICS_PORT is set but neither ROUTER_METRICS_TOKEN nor "
    "ROUTER_METRICS_TOKEN_FILE: /metrics is never served without authentication; set one "
    "(Prometheus sends it in the Authorization header) or unset the metrics port"
)


def _read_token_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"environment: ROUTER_METRICS_TOKEN_FILE: cannot read {path} ({exc.strerror}): "
            "make it readable by the router's user or point the variable at another file"
        ) from None


def start_metrics_server(port: int, addr: str = DEFAULT_ADDRESS, token: str | None = None) -> int:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread; return the bound port.

    Every request must carry ``Authorization: Bearer <token>``; without a ``token`` nothing is
    served (ConfigError). ``port`` 0 picks a free port. In containers pass ``addr="0.0.0.0"``
    (a warning is logged for any non-loopback address). When ``PROMETHEUS_MULTIPROC_DIR`` is set
    (Celery prefork), the merged registry of all processes is served instead of this process's.
    """
    if not token:
        raise ConfigError(_NO_TOKEN)
    app = authenticated(make_wsgi_app(_multiprocess_registry() or REGISTRY), token)
    server = make_server(addr, port, app, _server_class(addr), handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    bound = int(server.server_address[1])
    warn_if_exposed("the metrics endpoint", addr)
    log.info("metrics on http://%s:%d/metrics (scrapers must send the token)", addr, bound)
    return bound


def authenticated(app: WSGIApplication, token: str) -> WSGIApplication:
    """``app`` behind a bearer token: any request without it gets 401 and no data."""

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if bearer_ok(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        challenge = ("WWW-Authenticate", 'Bearer realm="email-router metrics"')
        start_response("401 Unauthorized", [challenge, ("Content-Type", "text/plain")])
        return [b"401 Unauthorized: send the metrics token as 'Authorization: Bearer <token>'\n"]

    return guarded


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow client never blocks the next scrape."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: scrapes every few seconds would drown the router's own lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server_class(addr: str) -> type[WSGIServer]:
    # IPv6 addresses need an AF_INET6 socket; getaddrinfo tells which family the address has
    family = socket.getaddrinfo(addr or None, 0, type=socket.SOCK_STREAM)[0][0]
    return type("MetricsServer", (_ThreadingServer,), {"address_family": family})


def _multiprocess_registry() -> CollectorRegistry | None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    registry = CollectorRegistry()
    # prometheus_client leaves this constructor unannotated
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
