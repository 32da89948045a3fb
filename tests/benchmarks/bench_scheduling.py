"""Benchmark: beat and workers with 10,000 instances at PollingPeriod 60 s; Redis per instance.

Run (one command; starts two private redis-servers, beat and a worker)::

    .venv/bin/python tests/benchmarks/bench_scheduling.py [--instances 10000] [--duration 300]
        [--workers 2]

Instances use the ``memory`` incoming provider with empty mailboxes, so a poll is the router's
own overhead (lease, cursor, stats in Redis). Beat runs the router's ``ConfigScheduler`` (through
``tests/benchmarks/lag_probe.py``, which records when each entry was due and when it was sent);
the worker (``-c --workers``, queues incoming + crm) records when each task started.

Reported over ``--duration`` seconds: tasks sent; beat lag (sent - due) and dispatch lag
(started - due) at p50/p99/max; polls that never started (expired after one period); Redis
memory of the state store per idle instance (``used_memory`` growth / instances, state and
broker on separate servers), compared with the 2 KB goal.
"""

from __future__ import annotations

import contextlib
import json
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

BIN = Path(sys.executable).parent


def config_xml(instances: int, state_url: str, period_ms: int) -> str:
    blocks = "".join(
        f"""
  <ProviderConfiguration Name="i{n:05d}">
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


def lags(probe_url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(probe_url)
    sent = [json.loads(r) for r in client.lrange("probe:beat", 0, -1)]
    started = {tid: at for tid, at in (json.loads(r) for r in client.lrange("probe:start", 0, -1))}
    beat_lag = [s - due for _, _, due, s in sent]
    run_lag = [started[tid] - due for tid, _, due, _ in sent if tid in started]
    stats: dict[str, Any] = {
        "sent": len(sent),
        "started": len(run_lag),
        "never_started": len(sent) - len(run_lag),
    }
    for name, values in (("beat_lag", beat_lag), ("dispatch_lag", run_lag)):
        for p in (50, 99):
            stats[f"{name}_p{p}"] = common.percentile(values, p)
        stats[f"{name}_max"] = max(values) if values else None
    return stats


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--instances", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--period-ms", type=int, default=60_000)
    p.add_argument("--workers", type=int, default=2, help="worker processes (-c)")
    args = p.parse_args()
    prefix = f"sched{uuid.uuid4().hex[:6]}"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sched-")))
        state_dir, broker_dir = workdir / "state", workdir / "broker"
        state_dir.mkdir()
        broker_dir.mkdir()
        state_url = stack.enter_context(common.private_redis(state_dir))
        broker_url = stack.enter_context(common.private_redis(broker_dir, appendonly=False))
        config = workdir / "router.xml"
        config.write_text(config_xml(args.instances, state_url, args.period_ms))
        memory_before = used_memory(state_url)
        env = common.env_with_password(
            {
                "ROUTER_CONFIG": str(config),
                "ROUTER_BROKER_URL": broker_url,
                "ROUTER_STATE_URL": state_url,
                "ROUTER_KEY_PREFIX": prefix,
                "BENCH_PROBE_URL": broker_url,
            }
        )
        worker = _spawn(
            stack,
            workdir / "worker.log",
            env,
            [
                "worker",
                "-Q",
                "incoming,crm",
                "-c",
                str(args.workers),
                "--pool",
                "prefork",
                "--loglevel",
                "WARNING",
                "-n",
                "sched@%h",
                "--without-gossip",
                "--without-mingle",
                "-I",
                "tests.benchmarks.lag_probe",
            ],
        )
        time.sleep(3)
        beat = _spawn(
            stack,
            workdir / "beat.log",
            env,
            [
                "beat",
                "-S",
                "tests.benchmarks.lag_probe:ProbeScheduler",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(workdir / "beat-schedule"),
            ],
        )
        print(
            f"beat and {args.workers} worker processes running for {args.duration:.0f} s "
            f"with {args.instances} instances",
            flush=True,
        )
        with (
            ProcessSampler(beat.pid) as beat_use,
            ProcessSampler(worker.pid) as worker_use,
            common.spying(beat.pid, "scheduling-beat", args.profile),
            common.spying(worker.pid, "scheduling-worker", args.profile),
        ):
            time.sleep(args.duration)
            _stop(beat)
            time.sleep(5)  # let the worker start what beat sent last
            _stop(worker)
        memory_after = used_memory(state_url)
        stats = lags(broker_url)
        polled = len(redis.Redis.from_url(state_url).smembers(f"{prefix}:instances"))
        print((workdir / "beat.log").read_text()[-1500:])
    per_instance = (memory_after - memory_before) / max(1, polled)
    rows = [
        {"metric": "tasks sent by beat", "value": stats["sent"]},
        {"metric": "tasks started", "value": stats["started"]},
        {"metric": "sent, never started (expired)", "value": stats["never_started"]},
        *(
            {
                "metric": f"{k.replace('_', ' ')} s",
                "value": v,
                "goal": "<= 2 s" if k == "dispatch_lag_p99" else None,
            }
            for k, v in stats.items()
            if "lag" in k
        ),
        {"metric": "instances with state in Redis", "value": polled},
        {"metric": "Redis bytes per idle instance", "value": per_instance, "goal": "<= 2048"},
        {
            "metric": "beat CPU s / peak RSS MB",
            "value": f"{beat_use.cpu_seconds:.1f} / {beat_use.peak_rss / 1e6:.0f}",
        },
        {
            "metric": "worker CPU s / peak RSS MB",
            "value": f"{worker_use.cpu_seconds:.1f} / {worker_use.peak_rss / 1e6:.0f}",
        },
    ]
    common.print_table(
        f"Scheduling: {args.instances} instances every {args.period_ms / 1000:g} s for "
        f"{args.duration:.0f} s, {args.workers} worker processes",
        rows,
        ["metric", "value", "goal"],
    )
    common.write_json(
        "scheduling",
        {
            "params": vars(args) | {"json": None},
            "stats": stats,
            "redis_bytes_per_instance": per_instance,
            "rows": rows,
        },
        args.json,
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
