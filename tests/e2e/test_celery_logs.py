"""A Celery worker at DEBUG logs no message body and no secret (real Redis, Dovecot, simulator).

The worker and beat run as processes with ``ROUTER_LOG_LEVEL=DEBUG`` (the level that shows
imaplib's traffic, Celery's task messages and urllib3/MSAL), in text and JSON formats; one
mailbox with its own password holds a message with a distinctive body, delivered to the Dataverse
simulator with a distinctive client secret. The worker's whole log must hold none of them, and
still show the poll's ordinary lines.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.servers.celery_procs import CeleryProcs, wait_until
from tests.servers.dovecot import Dovecot
from tests.servers.redis_server import PrivateRedis
from tests.servers.simulator import SimulatorServer
from tests.support.log_probe import (
    Secrets,
    config_xml,
    delivered_bodies,
    hostile_message,
    imap_xml,
    log_messages,
)

pytestmark = [pytest.mark.slow, pytest.mark.dovecot, pytest.mark.timeout(180)]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_debug_worker_logs_neither_the_body_nor_the_password_nor_the_crm_secret(
    fmt: str,
    tmp_path: Path,
    dovecot: Dovecot,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
) -> None:
    # Given a mailbox with its own password holding a message with a distinctive body
    secrets = Secrets.fresh()
    user = dovecot.add_user(f"nolog{uuid.uuid4().hex[:8]}@example.com", secrets.mail_password)
    dovecot.append(user, hostile_message(secrets.body))
    base = private_redis.url.rsplit("/", 1)[0]
    config = tmp_path / "router.xml"
    config.write_text(config_xml(f"{base}/1", simulator, imap_xml(dovecot, user), poll_ms=500))
    celery_procs.env.update(
        ROUTER_CONFIG=str(config), ROUTER_BROKER_URL=f"{base}/0", ROUTER_STATE_URL=f"{base}/1",
        ROUTER_LOG_LEVEL="DEBUG", ROUTER_LOG_FORMAT=fmt, **secrets.env(),
    )  # fmt: skip
    # When a worker at DEBUG polls it (scheduled by beat) and delivers it to the CRM
    worker = celery_procs.worker("nolog", concurrency=1)
    celery_procs.beat()
    wait_until(lambda: delivered_bodies(simulator, secrets.body) == 1, 60, "delivery", celery_procs)
    celery_procs.stop(worker)
    # Then the worker's log shows the poll and the delivery, but no body and no secret
    logs = worker.log_text()
    assert secrets.leaked_in(logs) == []
    messages = log_messages(logs, fmt, strict=False)
    assert "imapclient.imaplib: > " in messages and " UID FETCH " in messages
    assert "workers.tasks.deliver" in messages and "acquired a token from" in messages
