"""Benchmark: reading a Graph mailbox, a bare sequential requests loop vs. the graph provider.

Starts ``email-router graph-sim`` with added latency (default 50 ms per HTTP request, as a
remote Graph endpoint has), fills two mailboxes with the same ``--count`` messages and reads
each the same way - the folder's delta round, every message's MIME, then marking each read:

1. baseline - one ``requests`` call after another: delta pages, ``GET .../$value`` per
   message, ``PATCH isRead`` per message (what a simple client does);
2. provider - :class:`~router.providers.graph_incoming.GraphIncomingProvider`: ``list_new``,
   ``fetch_many`` (``$batch`` of 20, one batch ahead), ``post_process(seen)`` (``$batch``).

Both use the same delta page size. It prints a table (time, HTTP requests, messages/s, peak
requests in flight per mailbox at the simulator) and the ratio; the issue's goal is >= 4x.

Every plain request costs ``--latency-ms``; how much of it is the network round trip and how
much Graph's work on the operation matters for ``$batch`` (one round trip, but its parts are
worked on four at a time). ``--work-share`` gives that share (repeat it for several tables;
default 0, 0.5 and 1: all network, half, all server work).

    .venv/bin/python tests/benchmarks/bench_graph.py [--count 300] [--latency-ms 50]
        [--work-share 0.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.providers.base import InstanceState
from router.providers.graph_incoming import GraphIncomingProvider
from router.testing.graphsim import CLIENT_ID, CLIENT_SECRET, GraphSimulator, start_graph_simulator

PAGE = 100


def message(i: int) -> bytes:
    body = "lorem ipsum dolor sit amet " * 40
    return (
        f"From: s{i}@example.org\r\nTo: bench@sim.example\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench-{i}@example.org>\r\n\r\n{body}\r\n"
    ).encode()


def token(sim: GraphSimulator) -> str:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
        "scope": "https://graph.microsoft.com/.default",
    }
    answer = requests.post(f"{sim.authority}/oauth2/v2.0/token", data=form,
                           verify=str(sim.ca_path), timeout=30)  # fmt: skip
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def baseline(sim: GraphSimulator, mailbox: str) -> tuple[float, int, int]:
    """The bare loop; returns (seconds, requests, messages)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token(sim)}"
    start, sent = time.perf_counter(), 0
    link: str | None = f"{sim.base_url}/users/{mailbox}/mailFolders/inbox/messages/delta"
    ids: list[str] = []
    while link:
        page = session.get(
            link,
            headers={"Prefer": f"odata.maxpagesize={PAGE}"},
            timeout=60,
            verify=str(sim.ca_path),
        )
        sent += 1
        body: dict[str, Any] = page.json()
        ids += [row["id"] for row in body["value"] if "@removed" not in row]
        link = body.get("@odata.nextLink")
    for mid in ids:
        raw = session.get(
            f"{sim.base_url}/users/{mailbox}/messages/{mid}/$value",
            timeout=60,
            verify=str(sim.ca_path),
        )
        assert raw.status_code == 200 and raw.content.startswith(b"From:")
    for mid in ids:
        done = session.patch(f"{sim.base_url}/users/{mailbox}/messages/{mid}",
                             json={"isRead": True}, timeout=60,
                             verify=str(sim.ca_path))  # fmt: skip
        assert done.status_code == 200
    sent += 2 * len(ids)
    return time.perf_counter() - start, sent, len(ids)


def provider(sim: GraphSimulator, mailbox: str, count: int) -> tuple[float, int, int]:
    """The graph provider; returns (seconds, requests, messages)."""
    cfg = sim.provider_config(mailbox, max_message_count=count,
                              parameters={"page_size": str(PAGE)})  # fmt: skip
    reader = GraphIncomingProvider(cfg)
    reader.open()
    try:
        reader.client.tokens.token()  # the token is not part of the measurement
        start = time.perf_counter()
        state = InstanceState(None, {})
        refs = reader.list_new(state, count)
        fetched = sum(1 for m in reader.fetch_many(refs) if m.raw.startswith(b"From:"))
        reader.post_process(refs, "seen")
        elapsed = time.perf_counter() - start
        return elapsed, reader.client.requests_sent, fetched
    finally:
        reader.close()


def peak(sim: GraphSimulator, mailbox: str) -> int:
    return max(e["in_flight"] for e in sim.request_log(mailbox))


def run(sim: GraphSimulator, count: int, total: float, share: float) -> None:
    latency, op_latency = total * (1 - share), total * share
    sim.set_faults(latency_ms=0, op_latency_ms=0)
    raws = [message(i) for i in range(count)]
    boxes = {"baseline": "bench-base@sim.example", "provider": "bench-prov@sim.example"}
    boxes = {k: f"{share:g}-{v}" for k, v in boxes.items()}
    for box in boxes.values():
        sim.add_messages(box, raws)
    sim.set_faults(latency_ms=latency, op_latency_ms=op_latency)
    rows = {
        "baseline": baseline(sim, boxes["baseline"]),
        "provider": provider(sim, boxes["provider"], count),
    }
    print(f"\n{count} messages, {total:g} ms per request: {latency:g} ms round trip + "
          f"{op_latency:g} ms work ($batch: one round trip, parts 4 at a time)")  # fmt: skip
    print(f"{'':10} {'seconds':>9} {'requests':>9} {'msg/s':>8} {'peak/mailbox':>13}")
    for name, (seconds, sent, done) in rows.items():
        assert done == count, f"{name} read {done} of {count}"
        print(f"{name:10} {seconds:9.2f} {sent:9d} {done / seconds:8.1f} "
              f"{peak(sim, boxes[name]):13d}")  # fmt: skip
    print(f"ratio      {rows['baseline'][0] / rows['provider'][0]:9.1f}x (goal >= 4x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--work-share",
        type=float,
        action="append",
        help="share of the latency that is Graph's work (repeat; default 0, 0.5 and 1)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, start_graph_simulator(Path(workdir)) as sim:
        for share in args.work_share or [0.0, 0.5, 1.0]:
            run(sim, args.count, args.latency_ms, share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
