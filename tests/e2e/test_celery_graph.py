"""IMAP, Microsoft Graph and SMTP instances in one Celery cluster, two organisations.

Issue 13's must-show: each organisation (a Deployment on the Dataverse simulator) reads one
Dovecot mailbox over IMAP and one simulated Exchange mailbox through Graph; ``alpha`` sends its
pending emails through SMTP (aiosmtpd), ``beta`` through Graph ``sendMail``. Real processes
throughout: Dovecot, both simulators over HTTPS with their own CAs (the workers get the Graph
CA through the provider's ``ca_bundle`` parameter), a private Redis (broker + state), two
prefork workers and beat. Every message must become exactly one activity in its own
organisation and none in the other; every pending email must go out once.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from router.testing.graphsim import CLIENT_ID as GRAPH_CLIENT
from router.testing.graphsim import CLIENT_SECRET as GRAPH_SECRET
from router.testing.graphsim import TENANT as GRAPH_TENANT
from router.testing.graphsim import GraphSimulator
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

pytestmark = [pytest.mark.slow, pytest.mark.dovecot, pytest.mark.timeout(300)]

ORGS = ("alpha", "beta")
MESSAGES, OUTBOUND = 12, 6  # per mailbox / per organisation
DRAIN_TIMEOUT = float(os.environ.get("E2E_DRAIN_TIMEOUT", "120"))


def graph_instance(name: str, direction: str, org: str, mailbox: str, graph: GraphSimulator) -> str:
    """A graph instance; the workers trust the simulator's CA through ``ca_bundle``."""
    outgoing = direction == "Outgoing"
    extra = (
        f"<UserId>owner-{org}</UserId>" if outgoing else "<AfterProcessing>seen</AfterProcessing>"
    )
    sent_items = '<Parameter Name="save_to_sent_items">false</Parameter>' if outgoing else ""
    return f"""
  <ProviderConfiguration Name="{name}">
    <ProviderClass>graph</ProviderClass>
    <Direction>{direction}</Direction>
    <Deployment>{org}</Deployment>
    <EmailServer>{graph.base_url}</EmailServer>
    <EmailUser>{mailbox}</EmailUser>
    <EmailPassword Env="E2E_GRAPH_SECRET"/>
    <EmailAddress>{mailbox}</EmailAddress>
    <PollingPeriod>700</PollingPeriod>
    {extra}
    <Parameters>
      <Parameter Name="tenant_id">{GRAPH_TENANT}</Parameter>
      <Parameter Name="client_id">{GRAPH_CLIENT}</Parameter>
      <Parameter Name="authority">{graph.authority}</Parameter>
      <Parameter Name="ca_bundle">{graph.ca_path}</Parameter>
      {sent_items}
    </Parameters>
  </ProviderConfiguration>"""


def test_imap_graph_and_smtp_instances_in_one_cluster_deliver_each_message_once_per_org(
    tmp_path: Path,
    dovecot: Dovecot,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
    graphsim: GraphSimulator,
    smtp_server: Callable[..., SmtpSink],
) -> None:
    # Given two organisations, each reading an IMAP and a Graph mailbox; alpha sends through
    # SMTP and beta through Graph sendMail
    # (named after this test's fresh organisation: the simulator process serves the whole session)
    sims = {org: simulator.for_org(f"{simulator.org}-{org}") for org in ORGS}
    sink = smtp_server()
    sender = f"beta-{time.time_ns()}@sim.example"
    blocks: list[str] = []
    expected: dict[str, set[str]] = {}
    for org in ORGS:
        expected[org] = _fill_mailboxes(org, sims[org], dovecot, graphsim, blocks)
    blocks.append(smtp_outgoing("alpha-smtp", "alpha", sink.port))
    blocks.append(graph_instance("beta-graph-out", "Outgoing", "beta", sender, graphsim))
    pending: dict[str, set[str]] = {}
    pending["alpha"] = set(sims["alpha"].seed_pending(OUTBOUND, owner_id="owner-alpha"))
    pending["beta"] = set(sims["beta"].seed_pending(OUTBOUND, owner_id="owner-beta", sender=sender))
    _configure(celery_procs, private_redis, tmp_path / "router.xml", "".join(blocks))

    def sent(org: str) -> int:
        rows = sims[org].emails()
        return sum(1 for e in rows if e["activityid"] in pending[org] and e["statuscode"] == SENT)

    def drained() -> bool:
        arrived = all(sum(received(sims[org]).values()) >= len(expected[org]) for org in ORGS)
        return arrived and all(sent(org) == OUTBOUND for org in ORGS)

    # When two workers and beat run
    started = time.monotonic()
    celery_procs.worker("w1")
    celery_procs.worker("w2")
    celery_procs.beat()
    wait_until(drained, DRAIN_TIMEOUT, "both organisations to drain", celery_procs)
    elapsed = time.monotonic() - started
    time.sleep(2.0)  # anything late would show up as a duplicate now
    # Then each organisation holds exactly its own IMAP and Graph messages, each once
    for org in ORGS:
        counts = received(sims[org])
        assert set(counts) == expected[org], f"{org} holds mail of another organisation"
        assert set(counts.values()) == {1}, f"{org} has duplicate activities"
        assert sent(org) == OUTBOUND
    # And alpha's emails went out through SMTP once each, beta's through Graph once each
    assert len(sink.messages) == OUTBOUND
    graph_sent = Counter(row["message_id"] for row in graphsim.sent(sender))
    assert len(graph_sent) == OUTBOUND and set(graph_sent.values()) == {1}
    assert _sink_message_ids(sink).isdisjoint(graph_sent)
    print(f"\n{MESSAGES * 4} messages + {OUTBOUND * 2} emails, IMAP+Graph+SMTP, {elapsed:.1f}s")


def _fill_mailboxes(
    org: str, sim: SimulatorServer, dovecot: Dovecot, graph: GraphSimulator, blocks: list[str]
) -> set[str]:
    """Mail into a fresh IMAP and a fresh Graph mailbox of ``org``, their instances appended to
    ``blocks``; the Message-IDs that must end up in ``org``'s CRM."""
    user, mailbox = dovecot.new_user(), f"{org}-{time.time_ns()}@sim.example"
    imap_raws = [message(i, sender=f"{org}-imap{i}@example.org") for i in range(MESSAGES)]
    graph_raws = [message(i, sender=f"{org}-graph{i}@example.org") for i in range(MESSAGES)]
    dovecot.append_many(user, imap_raws)
    graph.add_messages(mailbox, graph_raws)
    blocks.append(deployment(org, sim))
    blocks.append(incoming(f"{org}-imap", "imap", org, user, dovecot.ports["imap"]))
    blocks.append(graph_instance(f"{org}-graph", "Incoming", org, mailbox, graph))
    return {message_id(raw) for raw in imap_raws + graph_raws}


def _configure(procs: CeleryProcs, redis: PrivateRedis, config: Path, blocks: str) -> None:
    """Write the cluster's configuration and the environment its processes read."""
    base = redis.url.rsplit("/", 1)[0]
    config.write_text(
        f"""<Configuration>
  <SystemConfiguration>
    <MaxThreadExecution>10000</MaxThreadExecution>
    <ConfigRefreshPeriod>1000</ConfigRefreshPeriod>
    <StateStore>{base}/1</StateStore>
  </SystemConfiguration>{blocks}
</Configuration>
"""
    )
    procs.env.update(
        ROUTER_CONFIG=str(config),
        ROUTER_BROKER_URL=f"{base}/0",
        ROUTER_STATE_URL=f"{base}/1",
        E2E_CRM_SECRET=CLIENT_SECRET,
        E2E_MAIL_PASSWORD=PASSWORD,
        E2E_GRAPH_SECRET=GRAPH_SECRET,
    )


def _sink_message_ids(sink: SmtpSink) -> set[str]:
    return {message_id(received.data) for received in sink.messages}
