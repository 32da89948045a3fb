"""Two Deployments (two simulated Dataverse organisations) served by one Celery cluster.

As in the demo seed, several IMAP and POP3 instances each deliver to their own organisation, and
each organisation has an SMTP instance sending its own pending emails. Real processes throughout:
Dovecot, the simulator over HTTPS, a private Redis (broker + state), two workers and beat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.celery_procs import CeleryProcs, wait_until
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.redis_server import PrivateRedis
from tests.servers.simulator import CLIENT_SECRET, SimulatorServer
from tests.servers.smtp import SmtpSink
from tests.support.dataverse_orgs import (
    SENT,
    deployment,
    incoming,
    message_id,
    received,
    smtp_outgoing,
)

pytestmark = [pytest.mark.slow, pytest.mark.dovecot, pytest.mark.timeout(600)]

ORGS = ("alpha", "beta")
PER_KIND, MESSAGES, OUTBOUND = 2, 25, 15  # per organisation: 2 IMAP + 2 POP3 mailboxes
DRAIN_TIMEOUT = float(os.environ.get("E2E_DRAIN_TIMEOUT", "240"))


def test_each_organisation_gets_exactly_its_own_mail_and_sends_its_own_emails(
    tmp_path: Path,
    dovecot: Dovecot,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
    smtp_server: Callable[..., SmtpSink],
) -> None:
    # Given two organisations, each with IMAP and POP3 mailboxes and emails pending to send;
    # named after this test's fresh organisation because the simulator process serves the whole
    # session: a bare "alpha" would be shared with any other test that also says "alpha"
    sims = {org: simulator.for_org(f"{simulator.org}-{org}") for org in ORGS}
    sink = smtp_server()
    blocks: list[str] = []
    expected: dict[str, set[str]] = {org: set() for org in ORGS}
    pending: dict[str, set[str]] = {}
    for org in ORGS:
        blocks.append(deployment(org, sims[org]))
        for kind in ("imap", "pop3"):
            for n in range(PER_KIND):
                user = dovecot.new_user()
                raws = [message(i, sender=f"{org}{i}@example.org") for i in range(MESSAGES)]
                dovecot.append_many(user, raws)
                expected[org] |= {message_id(raw) for raw in raws}
                blocks.append(incoming(f"{org}-{kind}-{n}", kind, org, user, dovecot.ports[kind]))
        blocks.append(smtp_outgoing(f"out-{org}", org, sink.port))
        pending[org] = set(sims[org].seed_pending(OUTBOUND, owner_id=f"owner-{org}"))
    base = private_redis.url.rsplit("/", 1)[0]
    config = tmp_path / "router.xml"
    config.write_text(
        f"""<Configuration>
  <SystemConfiguration>
    <MaxThreadExecution>10000</MaxThreadExecution>
    <ConfigRefreshPeriod>1000</ConfigRefreshPeriod>
    <StateStore>{base}/1</StateStore>
  </SystemConfiguration>{"".join(blocks)}
</Configuration>
"""
    )
    celery_procs.env.update(
        ROUTER_CONFIG=str(config),
        ROUTER_BROKER_URL=f"{base}/0",
        ROUTER_STATE_URL=f"{base}/1",
        E2E_CRM_SECRET=CLIENT_SECRET,
        E2E_MAIL_PASSWORD=PASSWORD,
    )
    total = sum(len(ids) for ids in expected.values())

    def sent(org: str) -> int:
        return sum(
            1
            for e in sims[org].emails()
            if e["activityid"] in pending[org] and e["statuscode"] == SENT
        )

    def drained() -> bool:
        in_done = sum(sum(received(sims[org]).values()) for org in ORGS) >= total
        return in_done and all(sent(org) == OUTBOUND for org in ORGS)

    # When two workers and beat run
    started = time.monotonic()
    celery_procs.worker("w1")
    celery_procs.worker("w2")
    celery_procs.beat()
    wait_until(drained, DRAIN_TIMEOUT, "both organisations to drain", celery_procs)
    elapsed = time.monotonic() - started
    time.sleep(2.0)  # anything late would show up as a duplicate now
    # Then each organisation holds exactly its own messages, each once, and nothing of the other
    for org, other in zip(ORGS, reversed(ORGS), strict=True):
        counts = received(sims[org])
        assert not set(counts) & expected[other], f"{org} holds mail of {other}"
        assert set(counts) == expected[org], f"{org} holds other mail than its own mailboxes'"
        assert set(counts.values()) == {1}, f"{org} has duplicate activities"
        assert sent(org) == OUTBOUND
    # And every pending email went out through SMTP exactly once
    assert len(sink.messages) == OUTBOUND * len(ORGS)
    print(f"\n{total} messages + {OUTBOUND * len(ORGS)} emails, two organisations, {elapsed:.1f}s")
