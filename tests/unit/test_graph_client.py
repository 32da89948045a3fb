"""GraphClient against the Graph simulator: Retry-After, token refresh, the mailbox limit, $batch.

The simulator (one process per test session, HTTPS with its own CA) logs every request with
its mailbox, start and end; the assertions read that log, so they check what reached the
server, not what the client believes it did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest

from router.errors import ProviderAuthError, ProviderUnavailable
from router.graph.client import (
    BatchRequest,
    GraphClient,
    GraphTokens,
    MailboxGate,
    Throttling,
    mailbox_of,
)
from router.oauth import GRAPH_SCOPE
from router.testing.graphsim import CLIENT_ID, CLIENT_SECRET, GraphSimulator


def make_client(sim: GraphSimulator, **kwargs: Any) -> GraphClient:
    tokens = GraphTokens(sim.authority, CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE], str(sim.ca_path))
    return GraphClient(sim.base_url, tokens, ca_bundle=str(sim.ca_path), **kwargs)


def message(i: int) -> bytes:
    return f"Message-ID: <c{i}@test>\r\nSubject: client {i}\r\n\r\nbody {i}\r\n".encode()


def retries_honoured(log: list[dict[str, Any]]) -> None:
    """Every retry of a throttled request started after that answer's Retry-After."""
    assert not [e for e in log if e["retry_early"]], "a retry came before its Retry-After"
    assert not [e for e in log if e["early"]], "a request came before a Retry-After ran out"


@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_request_is_sent_again_only_after_its_retry_after(
    graphsim: GraphSimulator, graph_mailbox: str, status: int
) -> None:
    graphsim.set_faults(**{f"rate_{status}": 0.4, "retry_after": 0.2, "seed": 7})
    client = make_client(graphsim)

    answers = [client.request("GET", f"/users/{graph_mailbox}").status_code for _ in range(6)]

    assert answers == [200] * 6
    log = graphsim.request_log(graph_mailbox)
    throttled = [e for e in log if e["status"] == status]
    assert throttled, "the fault never fired: the test proves nothing"
    for first in throttled:
        retry = next(
            e for e in log if e["request_id"] == first["request_id"] and e["id"] > first["id"]
        )
        assert retry["start"] >= first["end"] + 0.2
    retries_honoured(log)


def test_an_expired_token_is_replaced_once_and_the_request_goes_through(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    client = make_client(graphsim)
    assert client.request("GET", f"/users/{graph_mailbox}").status_code == 200

    graphsim.revoke_tokens()  # as if the token had expired
    answer = client.request("GET", f"/users/{graph_mailbox}")

    assert answer.status_code == 200
    assert client.tokens.acquired == 2
    assert [e["status"] for e in graphsim.request_log(graph_mailbox)] == [200, 401, 200]


def test_a_token_refused_even_after_a_refresh_stops_the_instance(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    class StaleTokens(GraphTokens):
        def token(self) -> str:
            return "not-a-token"

        def refresh(self, stale: str | None = None) -> str:
            return "still-not-a-token"

    tokens = StaleTokens(graphsim.authority, CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE])
    client = GraphClient(graphsim.base_url, tokens, ca_bundle=str(graphsim.ca_path))

    with pytest.raises(ProviderAuthError, match="401 InvalidAuthenticationToken"):
        client.request("GET", f"/users/{graph_mailbox}")


def test_never_more_than_four_requests_are_in_flight_for_one_mailbox(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    graphsim.set_faults(op_latency_ms=40)  # Graph at work: the request counts as in flight
    client = make_client(graphsim)
    statuses: list[int] = []

    def work() -> None:
        for _ in range(3):
            statuses.append(client.request("GET", f"/users/{graph_mailbox}").status_code)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    log = graphsim.request_log(graph_mailbox)
    assert statuses == [200] * 36
    assert max(e["in_flight"] for e in log) == 4  # used to the limit, never above
    assert not [e for e in log if e["status"] == 429]


def test_a_batch_of_45_parts_goes_out_as_three_batches_with_answers_in_order(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    ids = graphsim.add_messages(graph_mailbox, [message(i) for i in range(45)])
    client = make_client(graphsim)
    client.request("GET", f"/users/{graph_mailbox}")  # the token, outside the count
    before = client.requests_sent

    answers = client.batch(
        [BatchRequest("GET", f"/users/{graph_mailbox}/messages/{i}/$value") for i in ids]
    )

    assert client.requests_sent - before == 3
    assert [a.content for a in answers] == [message(i) for i in range(45)]
    parts = [e for e in graphsim.request_log(graph_mailbox) if e["batch"]]
    assert len(parts) == 45 and max(e["in_flight"] for e in parts) <= 4


def test_only_the_throttled_parts_of_a_batch_are_sent_again_after_their_retry_after(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    ids = graphsim.add_messages(graph_mailbox, [message(i) for i in range(20)])
    graphsim.set_faults(rate_429=0.3, rate_503=0.1, retry_after=0.2, seed=3)
    client = make_client(graphsim)

    answers = client.batch(
        [
            BatchRequest("PATCH", f"/users/{graph_mailbox}/messages/{i}", {"isRead": True})
            for i in ids
        ]
    )

    assert [a.status for a in answers] == [200] * 20
    log = [e for e in graphsim.request_log(graph_mailbox) if e["batch"]]
    per_part = Counter(e["request_id"] for e in log)
    assert len(per_part) == 20 and sum(per_part.values()) > 20  # some parts went twice
    assert sum(1 for e in log if e["status"] == 200) == 20  # none of the others twice
    retries_honoured(log)
    assert all(m["isRead"] for m in graphsim.folder(graph_mailbox))


def test_a_retry_after_longer_than_the_client_waits_goes_back_to_the_runtime(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    graphsim.set_faults(rate_429=1.0, retry_after=5)
    client = make_client(graphsim, throttling=Throttling(max_retry_after=1.0))

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as caught:
        client.request("GET", f"/users/{graph_mailbox}")

    assert caught.value.retry_after == 5.0
    assert time.monotonic() - started < 2.0
    assert client.gate(graph_mailbox).not_before > time.monotonic() + 3.0


def test_tls_is_verified_by_default(graphsim: GraphSimulator, graph_mailbox: str) -> None:
    tokens = GraphTokens(graphsim.authority, CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE])

    with pytest.raises(ProviderAuthError, match=r"TLS verification failed.*ca_bundle"):
        GraphClient(graphsim.base_url, tokens).request("GET", f"/users/{graph_mailbox}")


def test_no_token_and_no_delta_token_reach_a_log_line(
    graphsim: GraphSimulator, graph_mailbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    graphsim.add_messages(graph_mailbox, [message(i) for i in range(3)])
    graphsim.set_faults(rate_429=0.5, retry_after=0.1, seed=1)
    client = make_client(graphsim)
    caplog.set_level(logging.DEBUG)

    first = client.request(
        "GET",
        f"/users/{graph_mailbox}/mailFolders/inbox/messages/delta",
        headers={"Prefer": "odata.maxpagesize=2"},
    ).json()
    client.request("GET", first["@odata.nextLink"])

    token = client.tokens.token()
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("router."))
    assert "throttled" in ours, "nothing was logged: the test proves nothing"
    assert token not in ours
    assert "skiptoken" not in ours and "Bearer" not in ours


def test_a_gate_holds_requests_back_until_the_retry_after_ran_out() -> None:
    now = [100.0]
    gate = MailboxGate(4, clock=lambda: now[0])
    gate.throttle(2.0)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire(1)))
    waiter.start()
    waiter.join(timeout=0.2)
    assert got == [] and waiter.is_alive()

    now[0] = 102.5
    gate.throttle(0.0)  # wakes the waiter, which sees the clock past the deadline
    waiter.join(timeout=2)

    assert got == [1]


def test_a_batch_takes_one_slot_per_part_up_to_the_limit() -> None:
    gate = MailboxGate(4)
    assert gate.acquire(20) == 4
    gate.release(4)
    assert gate.acquire(2) == 2


def test_the_mailbox_of_a_url_is_its_users_segment() -> None:
    assert mailbox_of("https://g/v1.0/users/A%40B.example/messages/x/$value") == "a@b.example"
    assert mailbox_of("/users/a@b.example/mailFolders/inbox/messages/delta?$x=1") == "a@b.example"
    assert mailbox_of("/$batch") == ""
