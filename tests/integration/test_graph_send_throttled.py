"""Sending through a throttling Graph: every email once, nothing before its Retry-After.

Dataverse simulator (pending emails) -> the real send cycle -> Graph simulator answering 20% of
the requests 429 and 10% 503. The simulator's request log says when each answer allowed the
next request and how many were in flight for the mailbox.
"""

from __future__ import annotations

from collections import Counter

from router.outgoing import send_cycle
from router.providers.credentials import SOURCES
from router.testing.graphsim import GraphSimulator
from router.testing.simulator import SimulatorServer
from tests.servers.graphsim import sending_context

OWNER_ID = "5e0d1a8c-0000-4000-8000-0000000000b8"
SENT = 3


def test_throttled_sendmail_waits_out_retry_after_and_sends_each_email_once(
    simulator: SimulatorServer, graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    # Given 40 pending emails and a Graph that throttles 30% of the requests
    SOURCES.clear()
    simulator.seed_pending(40, owner_id=OWNER_ID, sender=graph_mailbox, to=["kunde@example.net"])
    graphsim.set_faults(rate_429=0.2, rate_503=0.1, retry_after=0.05, seed=7)
    since = len(graphsim.request_log())
    ctx = sending_context(simulator, graphsim, graph_mailbox, OWNER_ID)

    # When send cycles run until nothing is pending
    reports = [send_cycle(ctx, "graph-out") for _ in range(3)]
    ctx.close()

    # Then each email went out once and is Sent, after throttled answers were waited out
    assert sum(r.sent for r in reports) == 40
    sent = Counter(e["message_id"] for e in graphsim.sent(graph_mailbox))
    assert len(sent) == 40 and set(sent.values()) == {1}
    assert {e["statuscode"] for e in simulator.emails()} == {SENT}
    log = [r for r in graphsim.request_log(graph_mailbox, since=since)]
    throttled = [r for r in log if r["status"] in (429, 503)]
    assert throttled, "the faults did not fire"
    assert [r for r in log if r["early"] or r["retry_early"]] == []
    assert max(r["in_flight"] for r in log) <= 4
