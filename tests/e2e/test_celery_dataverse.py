"""The Celery cluster against the Dataverse simulator: the real Web API adapter in every worker.

Same shape as the flows of test_celery_cluster.py (Dovecot mailboxes, an SMTP sink, workers
and beat as subprocesses), but the CRM is ``email-router crm-sim`` over HTTPS with OAuth client
credentials, reached by the ``dataverse`` adapter from each pool process.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.celery_procs import CeleryProcs, wait_until
from tests.servers.dovecot import Dovecot
from tests.servers.redis_server import PrivateRedis
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer
from tests.servers.smtp import SmtpSink
from tests.support.celery_world import OWNER, ClusterWorld

pytestmark = [pytest.mark.slow, pytest.mark.dovecot, pytest.mark.timeout(600)]

MAILBOXES, MESSAGES, OUTBOUND = 6, 50, 20
DRAIN_TIMEOUT = float(os.environ.get("E2E_DRAIN_TIMEOUT", "240"))
SENT, RECEIVED = 3, 4  # email statuscode values in Dataverse


def deployment_xml(sim: SimulatorServer) -> str:
    return f"""<Deployment Name="test">
    <Adapter>dataverse</Adapter>
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <CrmAuthMode>ClientCredentials</CrmAuthMode>
    <TenantId>{TENANT}</TenantId>
    <ClientId>{CLIENT_ID}</ClientId>
    <ClientSecret Env="E2E_CRM_SECRET"/>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{sim.ca_path}</CaBundle>
  </Deployment>"""


@pytest.fixture
def world(
    tmp_path: Path,
    dovecot: Dovecot,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
) -> Iterator[ClusterWorld]:
    base = private_redis.url.rsplit("/", 1)[0]
    w = ClusterWorld(tmp_path, dovecot, f"{base}/0", f"{base}/1", celery_procs)
    w.deployment_xml = deployment_xml(simulator)
    celery_procs.env["E2E_CRM_SECRET"] = CLIENT_SECRET
    yield w
    w.crm.close()


def received(simulator: SimulatorServer) -> Counter[str]:
    """Message-IDs of the email activities the router created (statuscode Received)."""
    return Counter(str(e["messageid"]) for e in simulator.emails() if e["statuscode"] == RECEIVED)


def test_mail_flows_through_workers_to_the_dataverse_simulator_exactly_once(
    world: ClusterWorld, celery_procs: CeleryProcs, simulator: SimulatorServer
) -> None:
    # Given mailboxes delivering to a simulated Dataverse organisation
    world.add_mailboxes(MAILBOXES, MESSAGES)
    world.write_config()
    expected = MAILBOXES * MESSAGES
    # When two workers and beat run
    started = time.monotonic()
    celery_procs.worker("w1")
    celery_procs.worker("w2")
    celery_procs.beat()
    wait_until(
        lambda: sum(received(simulator).values()) >= expected,
        DRAIN_TIMEOUT,
        "the flow to drain",
        celery_procs,
    )
    elapsed = time.monotonic() - started
    time.sleep(2.0)
    # Then every message is exactly one email activity in the CRM
    counts = received(simulator)
    assert sum(counts.values()) == expected and set(counts.values()) == {1}
    assert world.overlaps() == []
    print(f"\n{expected} messages via the simulator in {elapsed:.1f}s")


def test_pending_crm_emails_are_sent_once_and_marked_sent_in_the_simulator(
    world: ClusterWorld,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
    smtp_server: object,
) -> None:
    # Given emails pending in the organisation for the owner an SMTP instance serves
    sink: SmtpSink = smtp_server()  # type: ignore[operator]
    world.add_outgoing(sink.port, 0)
    pending = set(simulator.seed_pending(OUTBOUND, owner_id=OWNER))
    world.write_config()

    def sent() -> int:
        rows = simulator.emails()
        return sum(1 for e in rows if e["activityid"] in pending and e["statuscode"] == SENT)

    # When a worker and beat run
    celery_procs.worker("w1")
    celery_procs.beat()
    wait_until(lambda: sent() == OUTBOUND, DRAIN_TIMEOUT, "every email Sent", celery_procs)
    time.sleep(2.0)
    # Then each went out through SMTP exactly once
    assert len(sink.messages) == OUTBOUND
