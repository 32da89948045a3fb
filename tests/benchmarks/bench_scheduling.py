"""Benchmark: dispatching N idle instances - beat entries per instance vs the Redis dispatcher.

Run (starts private redis-servers, beat and a worker per run)::

    .venv/bin/python tests/benchmarks/bench_scheduling.py [--instances 1000,10000]
        [--dispatcher old,new] [--duration 120] [--period-ms 60000] [--workers 2]

``old`` is one beat entry per instance (``workers.scheduler.EntryScheduler``), one ``poll``
task per poll: the baseline, measured in the same run. ``new`` is the dispatcher
(``workers.dispatch``): due times in a Redis sorted set claimed every 0.2 s, polls sent as
``poll_batch`` tasks of up to 50 instances. Instances use the ``memory`` incoming provider
with empty mailboxes, so a poll is the router's own overhead (lease, cursor, stats in Redis).
Beat and worker carry ``tests/support/dispatch_probe.py``, which records when each instance
was due, when beat sent it and when a worker started polling it (inside a batch too).

Reported per run over ``--duration`` seconds: instance polls sent; beat lag (sent - due) and
dispatch lag (started - due) at p50/p99/max; polls that never started (expired after one
period); worker, beat and Redis CPU per poll; Redis memory of the state store per idle
instance (``used_memory`` growth / instances; state and broker on separate servers); the load
average, since the machine is shared. The first period is a warm-up and not counted, nor are
polls due in the last 10 s (the worker is stopped 5 s after beat).
Sizes above ``--old-max`` run the new dispatcher only (the old one cannot build its schedule
in reasonable time there).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis

from tests.benchmarks import common
from tests.benchmarks.common import ProcessSampler
from tests.support import dispatch_probe

BIN = Path(sys.executable).parent
#: Seconds before beat stops whose due polls are not counted (the run ends around them).
END_GRACE = 10.0
SCHEDULERS = {
    "old": "tests.support.dispatch_probe:ProbeEntryScheduler",
    "new": "tests.support.dispatch_probe:ProbeScheduler",
}


def config_xml(instances: int, state_url: str, period_ms: int) -> str:
    blocks = "".join(
        f"""
  <ProviderConfiguration Name="i{n:06d}">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>mem</Deployment>
    <EmailAddress>i{n}@example.com</EmailAddress>
    <PollingPeriod>{period_ms}</PollingPeriod>
  </ProviderConfiguration>"""
        for n in range(instances)
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreadExecution>60000</MaxThreadExecution>
    <ConfigRefreshPeriod>60000</ConfigRefreshPeriod>
    <LogLevel>WARNING</LogLevel>
    <StateStore>{state_url}</StateStore>
  </SystemConfiguration>
  <Deployment Name="mem">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://memory.invalid</CrmServerUrl>
  </Deployment>{blocks}
</Configuration>
"""


def used_memory(url: str) -> int:
    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def server_pid(url: str) -> int:
    return int(redis.Redis.from_url(url).info("server")["process_id"])


def _first_after(times: list[float], due: float, period: float) -> float | None:
    """The first start in [due, due + period) (sorted ``times``), if any."""
    i = bisect.bisect_left(times, due)
    return times[i] if i < len(times) and times[i] < due + period else None


def lags(
    probe_url: str, counted_from: float, counted_until: float, period: float
) -> dict[str, Any]:
    """Lag statistics of every instance poll due between ``counted_from`` and ``counted_until``."""
    beat_rows, start_rows = dispatch_probe.read(probe_url)
    started: dict[tuple[str, str], float] = {}
    for tid, name, at in start_rows:
        started.setdefault((tid, name), at)
    by_instance = dispatch_probe.starts_by_instance(start_rows)
    sent = [row for row in beat_rows if counted_from <= row[2] < counted_until]
    beat_lag = [s - due for _, _, due, s, _ in sent]
    run_lag = []
    for tid, name, due, _, _ in sent:
        # the rest of a batch over its time budget runs under a new task id: find it by time
        at = started.get((tid, name)) or _first_after(by_instance.get(name, []), due, period)
        if at is not None:
            run_lag.append(at - due)
    stats: dict[str, Any] = {
        "sent": len(sent),
        "started": len(run_lag),
        "never_started": len(sent) - len(run_lag),
        "polls_started_total": len(start_rows),
    }
    for name, values in (("beat_lag", beat_lag), ("dispatch_lag", run_lag)):
        for p in (50, 99):
            stats[f"{name}_p{p}"] = common.percentile(values, p)
        stats[f"{name}_max"] = max(values) if values else None
    return stats


def run(mode: str, instances: int, args: Any) -> dict[str, Any]:
    """One beat + worker run of ``mode`` with ``instances`` instances; its statistics."""
    prefix = f"sched{uuid.uuid4().hex[:6]}"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sched-")))
        state_dir, broker_dir = workdir / "state", workdir / "broker"
        state_dir.mkdir()
        broker_dir.mkdir()
        state_url = stack.enter_context(common.private_redis(state_dir))
        broker_url = stack.enter_context(common.private_redis(broker_dir, appendonly=False))
        config = workdir / "router.xml"
        config.write_text(config_xml(instances, state_url, args.period_ms))
        memory_before = used_memory(state_url)
        env = common.env_with_password(
            {
                "ROUTER_CONFIG": str(config),
                "ROUTER_BROKER_URL": broker_url,
                "ROUTER_STATE_URL": state_url,
                "ROUTER_KEY_PREFIX": prefix,
                "DISPATCH_PROBE_URL": broker_url,
            }
        )
        worker_args = ["worker", "-Q", "incoming,crm", "-c", str(args.workers)]
        worker_args += ["--pool", "prefork", "--loglevel", "WARNING", "-n", "sched@%h"]
        worker_args += ["--without-gossip", "--without-mingle"]
        worker_args += ["-I", "tests.support.dispatch_probe"]
        worker = _spawn(
            stack, workdir / "worker.log", env | {"DISPATCH_PROBE_WORKER": "1"}, worker_args
        )
        time.sleep(3)
        beat_args = ["beat", "-S", SCHEDULERS[mode], "--loglevel", "WARNING"]
        beat = _spawn(stack, workdir / "beat.log", env, beat_args)
        started = time.time()
        load_before = os.getloadavg()
        print(
            f"{mode}: beat and {args.workers} worker processes, {instances} instances, "
            f"{args.duration:.0f} s",
            flush=True,
        )
        with (
            ProcessSampler(beat.pid) as beat_use,
            ProcessSampler(worker.pid) as worker_use,
            ProcessSampler(server_pid(state_url)) as redis_use,
            common.spying(beat.pid, f"scheduling-{mode}-beat", args.profile),
            common.spying(worker.pid, f"scheduling-{mode}-worker", args.profile),
        ):
            time.sleep(args.duration)
            stopped = time.time()
            _stop(beat)
            time.sleep(5)  # let the worker start what beat sent last
            _stop(worker)
        load_after = os.getloadavg()
        memory_after = used_memory(state_url)
        # the first period is a warm-up (schedule built, processes forking), and what was due
        # in the last seconds could not start before the worker stopped: neither is counted
        period = args.period_ms / 1000.0
        stats = lags(broker_url, started + period, stopped - END_GRACE, period)
        polled = len(redis.Redis.from_url(state_url).smembers(f"{prefix}:instances"))
        tail = (workdir / "beat.log").read_text()[-800:]
        if "Error" in tail or "Traceback" in tail:
            print(tail)
    polls = max(1, stats["polls_started_total"])
    return stats | {
        "instances_with_state": polled,
        "redis_bytes_per_instance": (memory_after - memory_before) / max(1, polled),
        "worker_cpu_ms_per_poll": worker_use.cpu_seconds * 1000 / polls,
        "redis_cpu_ms_per_poll": redis_use.cpu_seconds * 1000 / polls,
        "beat_cpu_s": beat_use.cpu_seconds,
        "beat_peak_rss_mb": beat_use.peak_rss / 1e6,
        "worker_peak_rss_mb": worker_use.peak_rss / 1e6,
        "load_avg_1m": f"{load_before[0]:.2f} -> {load_after[0]:.2f}",
    }


ROWS = [
    ("instance polls sent (after warm-up)", "sent", None),
    ("sent, never started (expired)", "never_started", "0"),
    ("beat lag p99 s", "beat_lag_p99", None),
    ("dispatch lag p50 s", "dispatch_lag_p50", None),
    ("dispatch lag p99 s", "dispatch_lag_p99", "<= 2 s (10k), <= 5 s (100k)"),
    ("dispatch lag max s", "dispatch_lag_max", None),
    ("worker CPU ms per poll", "worker_cpu_ms_per_poll", None),
    ("Redis (state) CPU ms per poll", "redis_cpu_ms_per_poll", None),
    ("beat CPU s", "beat_cpu_s", None),
    ("Redis bytes per idle instance", "redis_bytes_per_instance", "<= 2048"),
    ("beat / worker peak RSS MB", None, None),
    ("load average (1 min)", "load_avg_1m", None),
]


def _ratio(old: Any, new: Any) -> str | None:
    if isinstance(old, int | float) and isinstance(new, int | float) and new:
        return f"{old / new:.1f}x"
    return None


def table_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for label, key, goal in ROWS:
        row: dict[str, Any] = {"metric": label, "goal": goal}
        for mode, stats in results.items():
            if key is None:
                row[mode] = f"{stats['beat_peak_rss_mb']:.0f} / {stats['worker_peak_rss_mb']:.0f}"
            else:
                row[mode] = stats.get(key)
        if key is not None and "old" in results and "new" in results:
            row["old / new"] = _ratio(results["old"].get(key), results["new"].get(key))
        rows.append(row)
    return rows


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--instances", default="10000", help="comma-separated sizes")
    p.add_argument("--dispatcher", default="old,new", help="old, new or old,new")
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--period-ms", type=int, default=60_000)
    p.add_argument("--workers", type=int, default=2, help="worker processes (-c)")
    p.add_argument("--old-max", type=int, default=20_000, help="largest size run with old")
    args = p.parse_args()
    sizes = [int(n) for n in args.instances.split(",")]
    modes = [m.strip() for m in args.dispatcher.split(",")]
    everything: dict[str, Any] = {}
    for size in sizes:
        results = {m: run(m, size, args) for m in modes if m != "old" or size <= args.old_max}
        everything[str(size)] = results
        columns = ["metric", *results, *(["old / new"] if len(results) == 2 else []), "goal"]
        common.print_table(
            f"Dispatch: {size} idle instances every {args.period_ms / 1000:g} s for "
            f"{args.duration:.0f} s, {args.workers} worker processes",
            table_rows(results),
            columns,
        )
    common.write_json(
        "scheduling", {"params": vars(args) | {"json": None}, "results": everything}, args.json
    )
    return 0


def _spawn(
    stack: contextlib.ExitStack, log_path: Path, env: dict[str, str], args: list[str]
) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(BIN / "celery"), "-A", "workers", *args],
        env=env,
        stdout=log,
        stderr=log,
        cwd=str(common.ROOT),
    )
    stack.callback(log.close)
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
