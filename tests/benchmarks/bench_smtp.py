"""Benchmark: 1,000 CRM emails through the router's send cycle vs. a bare smtplib loop.

Both sides talk to the same SMTP sink, which runs as a separate process (so it does not share
the benchmark's GIL). The baseline sends the *same* messages, composed beforehand, over one
connection with ``smtplib.SMTP.sendmail``. The router runs whole send cycles: CRM listing,
ledger claims and transitions, composition, submission, Sent marks. It is measured with the
in-memory state store and with the SQLite store (the single-process default; synchronous=FULL
fsyncs each commit).

Run: ``.venv/bin/python -m tests.benchmarks.bench_smtp [--count 1000] [--rounds 3]``.
Goal: router (memory store) <= 1.5x the bare loop.
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from router.crm.memory import MemoryCrm
from router.mail.compose import compose_message
from router.outgoing import send_cycle
from router.state.base import StateStore
from router.state.memory import MemoryStore
from tests.integration.send_support import (
    OWNER,
    configuration,
    make_context,
    outgoing_cfg,
    sample_email,
)
from tests.servers.smtp import SinkProcess


def bare_loop(port: int, count: int) -> float:
    """Prepared messages over one connection: the lower bound of any SMTP client."""
    emails = [sample_email(i, prefix="b") for i in range(count)]
    prepared = [(compose_message(e), e) for e in emails]
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for composed, email in prepared:
            client.sendmail(email.sender.email, list(composed.recipients), composed.raw)
    return time.perf_counter() - started


def router(port: int, count: int, store: StateStore) -> float:
    """Whole send cycles until the CRM has nothing pending."""
    cfg = outgoing_cfg(port, max_count=count)
    ctx, crm = make_context(configuration(cfg), MemoryCrm(), store)
    for i in range(count):
        crm.add_outbound(sample_email(i, prefix="r"), OWNER)
    started = time.perf_counter()
    report = send_cycle(ctx, cfg.name)
    elapsed = time.perf_counter() - started
    assert report.sent == count, report
    ctx.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians shown")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite variant")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        sink = SinkProcess(Path(tmp) / "sink").start()
        try:
            _run(sink.port, args, Path(tmp))
        finally:
            sink.kill()


def _run(port: int, args: argparse.Namespace, tmp: Path) -> None:
    from router.state.sqlite import SqliteStore

    count = args.count
    runs: list[tuple[str, Callable[[int], float]]] = [
        ("bare smtplib loop (prepared messages)", lambda r: bare_loop(port, count)),
        ("router, memory state store", lambda r: router(port, count, MemoryStore())),
    ]
    if not args.no_sqlite:
        runs.append(
            (
                "router, SQLite state store (FULL sync)",
                lambda r: router(port, count, SqliteStore(str(tmp / f"s{r}.db"))),
            )
        )
    # Alternate bare and router round by round so a busy machine slows them alike; the SQLite
    # rounds come last, as their fsyncs (and the disk write-back after them) disturb the rest.
    times: dict[str, list[float]] = {label: [] for label, _ in runs}
    for r in range(args.rounds):
        for label, run in runs[:2]:
            times[label].append(run(r))
    for r in range(args.rounds):
        for label, run in runs[2:]:
            times[label].append(run(r))
    base = statistics.median(times[runs[0][0]])
    print(f"{count} messages, median of {args.rounds} alternating rounds")
    print(f"{'':40} {'seconds':>8} {'msg/s':>8} {'ratio':>6}")
    for label, _ in runs:
        seconds = statistics.median(times[label])
        print(f"{label:40} {seconds:8.2f} {count / seconds:8.0f} {seconds / base:6.2f}x")


if __name__ == "__main__":
    main()
