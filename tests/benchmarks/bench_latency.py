"""Benchmark: how quickly a new message shows up in the CRM (append -> activity created).

Run (one command; starts its own Dovecot, simulator and Redis)::

    .venv/bin/python tests/benchmarks/bench_latency.py [--duration 60] [--modes standalone,celery]

One mailbox with PollingPeriod 1 s. While the router runs, one message is APPENDed to the
mailbox every second for ``--duration`` seconds; the latency of a message is the simulator's
``createdon`` of its activity minus the moment its APPEND completed (same machine clock).

* ``standalone`` - ``email-router run`` (SchedulingPeriod 100 ms, SQLite state);
* ``celery`` - ``celery worker -c 2`` (queues incoming + crm) and beat (ConfigScheduler), Redis.

The floor is the polling period itself: a message waits on average half a period (0.5 s) for
the next poll, at worst a whole one.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from email.utils import make_msgid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import common
from tests.benchmarks.common import Mailbox
from tests.servers.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.servers.simulator import SimulatorServer, start_simulator

BIN = Path(sys.executable).parent


def small_message(n: int, message_id: str) -> bytes:
    return (
        f"From: Customer <c{n}@example.org>\r\nTo: sales@example.com\r\n"
        f"Subject: latency probe {n}\r\nMessage-ID: {message_id}\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello {n}.\r\n"
    ).encode()


def append_steadily(dovecot: Dovecot, user: str, seconds: float) -> dict[str, float]:
    """APPEND one message per second (random phase); Message-ID -> when its APPEND completed."""
    appended: dict[str, float] = {}
    rng = random.Random(11)  # jitter: arrivals must not be phase-locked to the polls
    start = time.monotonic()
    with dovecot.imap(user) as client:
        for n in range(int(seconds)):
            time.sleep(max(0.0, start + n + rng.uniform(-0.45, 0.45) - time.monotonic()))
            message_id = make_msgid(f"lat{n}", "bench.example.org")
            client.append("INBOX", small_message(n, message_id))
            appended[message_id] = time.time()
    return appended


def router_procs(mode: str, world: dict[str, Any], stack: contextlib.ExitStack) -> None:
    workdir: Path = world["workdir"]
    sim: SimulatorServer = world["sim"]
    state_url = world["redis_url"] if mode == "celery" else f"sqlite:///{workdir / 'lat.db'}"
    config = workdir / f"router-{mode}.xml"
    config.write_text(
        common.router_xml(
            [Mailbox("lat", world["user"], polling_ms=1000, max_count=100)],
            imap_port=world["dovecot"].ports["imap"],
            state_url=state_url,
            deployment=common.sim_deployment_xml(sim),
            scheduling_ms=100,
        )
    )
    env = common.env_with_password(
        {
            "ROUTER_CONFIG": str(config),
            "ROUTER_STATE_URL": state_url,
            "ROUTER_BROKER_URL": world["redis_url"].rsplit("/", 1)[0] + "/3",
            "ROUTER_KEY_PREFIX": f"lat{uuid.uuid4().hex[:6]}",
        }
    )
    if mode == "standalone":
        _spawn(
            stack,
            workdir / "standalone.log",
            env,
            [str(BIN / "email-router"), "run", "--config", str(config)],
        )
        return
    celery = str(BIN / "celery")
    _spawn(
        stack,
        workdir / "worker.log",
        env,
        [
            celery,
            "-A",
            "workers",
            "worker",
            "-Q",
            "incoming,crm",
            "-c",
            "2",
            "--loglevel",
            "WARNING",
            "-n",
            "lat@%h",
            "--without-gossip",
            "--without-mingle",
        ],
    )
    _spawn(
        stack,
        workdir / "beat.log",
        env,
        [
            celery,
            "-A",
            "workers",
            "beat",
            "-S",
            "workers.scheduler:ConfigScheduler",
            "--loglevel",
            "WARNING",
            "--schedule",
            str(workdir / "beat-schedule"),
        ],
    )


def _spawn(
    stack: contextlib.ExitStack, log_path: Path, env: dict[str, str], cmd: list[str]
) -> None:
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=str(log_path.parent))
    stack.callback(log.close)
    stack.callback(_stop, proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure(mode: str, world: dict[str, Any], duration: float) -> dict[str, Any]:
    sim = world["sim"] = world["base_sim"].for_org(f"lat{uuid.uuid4().hex[:8]}")
    world["user"] = world["dovecot"].new_user()
    with contextlib.ExitStack() as stack:
        router_procs(mode, world, stack)
        time.sleep(4)  # start-up, so the first message does not measure it
        appended = append_steadily(world["dovecot"], world["user"], duration)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = common.crm_activities(sim, "messageid,createdon")
            if len(rows) >= len(appended):
                break
            time.sleep(0.5)
    created = {r["messageid"]: _epoch(r["createdon"]) for r in rows}
    latencies = [created[m] - at for m, at in appended.items() if m in created]
    return {
        "mode": mode,
        "messages": len(appended),
        "arrived": len(latencies),
        "p50 s": common.percentile(latencies, 50),
        "p99 s": common.percentile(latencies, 99),
        "max s": max(latencies) if latencies else None,
        "mean s": sum(latencies) / len(latencies) if latencies else None,
    }


def _epoch(value: Any) -> float:
    """The simulator's ``createdon``: ISO 8601 (``...Z``) or epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--modes", default="standalone,celery")
    args = p.parse_args()
    os.environ.setdefault(common.PASSWORD_VAR, PASSWORD)
    rows = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lat-")))
        world: dict[str, Any] = {
            "workdir": workdir,
            "dovecot": stack.enter_context(running_dovecot()),
            "base_sim": stack.enter_context(start_simulator(workdir)),
            "redis_url": stack.enter_context(common.private_redis(workdir)),
        }
        for mode in args.modes.split(","):
            print(
                f"  {mode}: appending one message per second for {args.duration:.0f} s", flush=True
            )
            rows.append(measure(mode, world, args.duration))
    rows.insert(
        0,
        {
            "mode": "floor: wait for the next poll",
            "messages": None,
            "arrived": None,
            "p50 s": 0.5,
            "p99 s": 0.99,
            "max s": 1.0,
            "mean s": 0.5,
        },
    )
    for row in rows:
        row["goal"] = "p50 <= 1.5, p99 <= 3" if row["messages"] else ""
    common.print_table(
        "Latency: append -> activity created, PollingPeriod 1 s, one message per second",
        rows,
        ["mode", "messages", "arrived", "p50 s", "p99 s", "max s", "mean s", "goal"],
    )
    common.write_json("latency", {"params": vars(args) | {"json": None}, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
