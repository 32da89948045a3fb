"""Benchmark: Dataverse deliveries, sequential single requests vs. the adapter's $batch + threads.

Starts ``email-router crm-sim`` with added latency (default 50 ms per Web API request, as a
remote Dataverse would have), then delivers the same number of activities twice through the
Dataverse adapter:

1. baseline - one DeliverIncomingEmail request after another (what a simple client does);
2. adapter  - ``deliver_many``: ``$batch`` of ``--batch-size`` with ``--workers`` batches in flight.

It prints a table (time, requests, deliveries/s, peak requests in flight at the simulator) and
the speed-up. The peak must stay within Dataverse's limit of 52 concurrent requests.

    .venv/bin/python tests/benchmarks/bench_dataverse.py [--count 2000] [--latency-ms 50]
        [--batch-size 10] [--workers 16] [--sample N]

``--sample N`` times the baseline on the first N deliveries only and scales it to ``--count``
(marked in the table), for a quick run: the baseline is linear in the count by construction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.crm.base import DeliveryTarget
from router.crm.dataverse import DELIVER, DataverseAdapter, DataverseOptions
from router.crm.dataverse_payloads import deliver_params
from router.models import Activity, Address, DeliveryResult
from tests.servers.simulator import SimulatorServer, start_simulator

TARGET = DeliveryTarget(mailbox="bench@example.com")


def activities(run: str, count: int) -> list[Activity]:
    return [
        Activity(
            message_id=f"<bench-{run}-{i}@example.net>",
            subject=f"Benchmark {i}",
            body_html="<p>" + "lorem ipsum " * 40 + "</p>",
            sender=Address("customer@example.net"),
            to=(Address("bench@example.com"),),
            received_on=datetime(2024, 5, 1, tzinfo=UTC),
        )
        for i in range(count)
    ]


def run_sequential(sim: SimulatorServer, acts: list[Activity]) -> tuple[float, int]:
    crm = DataverseAdapter.from_deployment(sim.deployment(), DataverseOptions(max_workers=1))
    crm.who_am_i()  # token and connection set-up are not part of the measurement
    before = crm.api.stats["requests"]
    start = time.perf_counter()
    for act in acts:
        crm.api.call(
            "POST", DELIVER, "DeliverIncomingEmail", json=deliver_params(act, TARGET, True)
        )
    elapsed = time.perf_counter() - start
    return elapsed, crm.api.stats["requests"] - before


def run_batched(
    sim: SimulatorServer, acts: list[Activity], batch: int, workers: int
) -> tuple[float, int]:
    options = DataverseOptions(batch_size=batch, max_workers=workers)
    crm = DataverseAdapter.from_deployment(sim.deployment(), options)
    crm.who_am_i()
    before = crm.api.stats["requests"]
    start = time.perf_counter()
    results = crm.deliver_many([(a, TARGET) for a in acts])
    elapsed = time.perf_counter() - start
    failed = [r for r in results if not isinstance(r, DeliveryResult)]
    if failed:
        raise SystemExit(f"{len(failed)} deliveries failed: {failed[0]}")
    return elapsed, crm.api.stats["requests"] - before


def peak(sim: SimulatorServer) -> int:
    return int(sim.stats()["peak"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--sample", type=int, default=0, help="time the baseline on N only")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        start_simulator(Path(tmp), "--latency-ms", str(args.latency_ms)) as sim,
    ):
        n_seq = args.sample or args.count
        sim.admin("POST", "stats")
        seq_time, seq_requests = run_sequential(sim.for_org("sequential"), activities("seq", n_seq))
        seq_peak = peak(sim)
        scale = args.count / n_seq
        sim.admin("POST", "stats")
        bat_time, bat_requests = run_batched(
            sim.for_org("batched"), activities("bat", args.count), args.batch_size, args.workers
        )
        bat_peak = peak(sim)
        stored = len(sim.for_org("batched").emails())

    seq_total = seq_time * scale
    label = "sequential single requests" + (f" (timed on {n_seq}, scaled)" if scale != 1 else "")
    rows = [
        (label, args.count, round(seq_requests * scale), seq_total, seq_peak),
        (
            f"$batch of {args.batch_size} x {args.workers} workers",
            args.count,
            bat_requests,
            bat_time,
            bat_peak,
        ),
    ]
    print(f"\nDataverse deliveries, simulator latency {args.latency_ms:.0f} ms per request\n")
    line = "{:<52} {:>10} {:>9} {:>9} {:>11} {:>15}"
    print(line.format("mode", "deliveries", "requests", "seconds", "per second", "peak in flight"))
    for name, count, requests, seconds, in_flight in rows:
        print(
            line.format(
                name, count, requests, f"{seconds:.2f}", f"{count / seconds:.1f}", in_flight
            )
        )
    ratio = seq_total / bat_time
    print(f"\nspeed-up of the adapter over sequential: {ratio:.1f}x (goal >= 10x)")
    print(f"activities stored by the batched run: {stored}; peak in flight {bat_peak} (limit 52)")
    return 0 if stored == args.count and bat_peak <= 52 else 1


if __name__ == "__main__":
    sys.exit(main())
