"""The Celery application: Redis broker, JSON only, three queues, limits from the configuration.

``celery -A workers worker|beat|flower`` finds :data:`app` (exported as ``workers.celery``).

Queues and what goes where (so each kind of work scales on its own)::

    incoming   poll(instance)          - read a mailbox, stage new messages
    outgoing   send(instance)          - pending CRM emails -> SMTP
    crm        deliver(instance, keys) - staged messages -> CRM activities; housekeeping()

Reliability settings and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies (kill -9, OOM) is
  delivered again; the ledger and leases in the state store make the repeat harmless.
* ``worker_prefetch_multiplier=1``: a worker reserves one task per process, so a slow mailbox
  does not hold other tasks hostage.
* the Redis transport is kombu's with one fix (:mod:`workers.transport`): a channel left over
  from a lost connection raises a connection error, so a Redis restart never ends the worker;
  and running tasks are not cancelled when the broker connection is lost (see the setting).
* soft time limit = ``MaxThreadExecution`` (also the lease TTL), hard limit a margin later; the
  broker's ``visibility_timeout`` exceeds the hard limit plus the longest retry countdown, so a
  running or waiting task is never handed to a second worker by Redis.
"""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from kombu import Queue

from router.config import Settings, SystemConfiguration
from router.memtune import limit_malloc_arenas
from router.service import lease_ttl
from workers import transport
from workers.context import system_of

QUEUES = ("incoming", "outgoing", "crm")
ROUTES = {
    "workers.tasks.poll": {"queue": "incoming"},
    "workers.tasks.poll_batch": {"queue": "incoming"},
    "workers.tasks.send": {"queue": "outgoing"},
    "workers.tasks.deliver": {"queue": "crm"},
    "workers.tasks.housekeeping": {"queue": "crm"},
}
#: Longest delay between two retries of a task (seconds).
RETRY_BACKOFF_MAX = 300
#: How many times a task is retried after a RetryableError before it gives up.
MAX_RETRIES = 8


def time_limits(system: SystemConfiguration) -> tuple[float, float]:
    """(soft, hard) task time limits in seconds: the lease TTL, then a margin for cleanup."""
    soft = lease_ttl(system)
    return soft, soft + max(30.0, soft * 0.1)


def visibility_timeout(system: SystemConfiguration) -> float:
    """Seconds Redis waits before handing an unacknowledged task to another worker."""
    return time_limits(system)[1] + RETRY_BACKOFF_MAX + 60.0


def broker_tls(settings: Settings) -> dict[str, Any] | bool:
    """TLS options of a ``rediss://`` broker: verified like every other TLS connection.

    kombu connects to ``rediss://`` with ``ssl_cert_reqs=CERT_NONE`` unless told otherwise, which
    would accept any certificate; here the certificate and host name are always checked, against
    ``ROUTER_BROKER_CA_FILE`` when set. False (no TLS) for any other scheme.
    """
    if not settings.broker_url.startswith("rediss://"):
        return False
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    if settings.broker_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.broker_ca_file)
    return options


def celery_config(settings: Settings, system: SystemConfiguration) -> dict[str, Any]:
    """Every Celery setting the router relies on (pure: unit tests check it)."""
    soft, hard = time_limits(system)
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": visibility_timeout(system)},
        "broker_use_ssl": broker_tls(settings),
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "crm",
        "task_routes": ROUTES,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # off: the cancel SIGTERMs pool children, one may die writing its result to the parent,
        # whose next read of the pipe fails to decode and ends the worker (a Redis restart
        # under load did this). A late-ack task that runs on acks on the dead channel, which
        # fails harmlessly (workers.transport); its message is delivered again later.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_consumer": "workers.consumer:RobustConsumer",
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_scheduler": "workers.scheduler:ConfigScheduler",
        "beat_max_loop_interval": system.config_refresh_period / 1000.0,
        "timezone": "UTC",
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app; limits come from the file's SystemConfiguration when readable."""
    settings = settings or Settings()
    app = Celery("email_router", include=["workers.tasks"])
    app.conf.update(celery_config(settings, system_of(settings)))
    return app


transport.install()  # before any broker connection: see workers.transport
#: The application the ``celery`` command runs.
app = create_app()
limit_malloc_arenas()  # before the pools start threads: see router.memtune

import workers.signals  # noqa: E402,F401  (connects the worker/beat signal handlers)
