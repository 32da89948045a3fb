"""Benchmark: one mailbox with a backlog, drained by ``email-router run``, vs the raw floor.

Run (one command; starts and stops its own Dovecot and simulator)::

    .venv/bin/python tests/benchmarks/bench_backlog.py [--messages 5000] [--max-count 100]
        [--polling-ms 500] [--latency 0] [--modes floor,run,run-unlimited]
        [--before-src DIR]

The issue's case (issue 15, item 1): ``--messages`` messages (the same mix as
``bench_ingest.py``) in ONE Dovecot mailbox, the Dataverse simulator answering after
``--latency`` ms. Modes, each into a fresh simulator organisation:

* ``floor`` - the baseline of the ratios, measured in the same run: one sequential script doing
  imapclient ``UID FETCH`` + stdlib parse + one DeliverIncomingEmail POST per message
  (``bench_ingest.floor``; ``--floor-limit`` measures it on the first N messages only);
* ``run`` - ``email-router run`` with ``MaxMessageCount`` = ``--max-count`` and
  ``PollingPeriod`` = ``--polling-ms``: a poll that stops at the limit runs again at once;
* ``run-unlimited`` - the same with ``MaxMessageCount`` = every message (one cycle drains all);
* ``celery2`` (not in the default ``--modes``) - ``celery -A workers worker -c 2`` and beat, Redis
  broker and state (``bench_ingest.celery``: its configuration polls every 1000 ms);
* ``run-before`` (added when ``--before-src DIR`` is given) - ``run`` with the router found in
  ``DIR`` (e.g. ``git archive HEAD | tar -x -C DIR`` of a version without backlog scheduling):
  the before/after ratio, measured in the same run.

Times run from process launch (start-up included) until the ledger holds every message in a
final state. Output: a table on stdout, JSON in ``benchmark-results/``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import common
from tests.benchmarks.bench_ingest import Row, World, celery, floor, wait_drained
from tests.benchmarks.common import Mailbox, ProcessSampler
from tests.servers.dovecot import PASSWORD, running_dovecot
from tests.servers.simulator import SimulatorServer, start_simulator


def write_config(world: World, sim: SimulatorServer, state_url: str, tag: str, limit: int) -> Path:
    box = Mailbox("box0", world.users[0], polling_ms=world.args.polling_ms, max_count=limit)
    text = common.router_xml(
        [box],
        imap_port=world.dovecot.ports["imap"],
        state_url=state_url,
        deployment=common.sim_deployment_xml(sim),
        max_threads=2,
    )
    path = world.workdir / f"router-{tag}.xml"
    path.write_text(text)
    return path


def run_mode(
    world: World, sim: SimulatorServer, mode: str, limit: int, src: Path | None = None
) -> Row:
    """``email-router run`` (from ``src`` when given) until the backlog is final."""
    tag = f"{mode}-{uuid.uuid4().hex[:6]}"
    state_url = f"sqlite:///{world.workdir / (tag + '.db')}"
    config = write_config(world, sim, state_url, tag, limit)
    cmd = [sys.executable, "-m", "router.cli", "run", "--config", str(config)]
    extra = {"PYTHONPATH": str(src)} if src is not None else {}
    log = (world.workdir / f"{tag}.log").open("wb")
    with contextlib.ExitStack() as stack:
        proc = subprocess.Popen(
            [*cmd, "--shutdown-grace", "5"],
            cwd=src or Path.cwd(),
            env=common.env_with_password(extra),
            stdout=log,
            stderr=log,
        )
        stack.callback(_stop, proc)
        sampler = stack.enter_context(ProcessSampler(proc.pid))
        seconds, count = wait_drained(world, state_url, "er", [proc])
    log.close()
    note = "" if count >= world.total else f"TIMEOUT: {count}/{world.total} final"
    peak = sampler.peak_rss_single / 1e6
    return Row(mode, 0, count, seconds, peak, sampler.cpu_seconds, note)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def measure(world: World, latency: float, modes: list[str]) -> list[Row]:
    world.sim.set_faults(latency_ms=latency)
    rows = []
    for mode in modes:
        sim = world.sim.for_org(f"backlog{uuid.uuid4().hex[:8]}")
        print(f"  latency {latency:g} ms: {mode} ...", flush=True)
        if mode == "floor":
            row = floor(world, sim, world.args.floor_limit)
        elif mode == "run-unlimited":
            row = run_mode(world, sim, mode, world.total)
        elif mode == "celery2":
            row = celery(world, sim, latency, 2)
        elif mode == "run-before":
            row = run_mode(world, sim, mode, world.args.max_count, world.args.before_src)
        else:
            row = run_mode(world, sim, mode, world.args.max_count)
        row.latency_ms = latency
        print(f"    {row.messages} msgs in {row.seconds:.1f} s = {row.rate:.1f} msg/s {row.note}")
        rows.append(row)
    return rows


def table(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        same = [r for r in rows if r.latency_ms == row.latency_ms]
        base = next((r for r in same if r.mode == "floor"), None)
        before = next((r for r in same if r.mode == "run-before"), None)
        out.append(
            {
                "mode": row.mode,
                "latency_ms": row.latency_ms,
                "messages": row.messages,
                "seconds": row.seconds,
                "msg/s": row.rate,
                "vs floor": row.rate / base.rate if base and base.rate else None,
                "vs before": row.rate / before.rate if before and before.rate else None,
                "peak RSS MB": row.peak_rss_mb,
                "note": row.note,
            }
        )
    return out


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--max-count", type=int, default=100, help="MaxMessageCount of the mailbox")
    p.add_argument("--polling-ms", type=int, default=500, help="PollingPeriod of the mailbox")
    p.add_argument("--latency", default="0", help="simulator latencies in ms, comma separated")
    p.add_argument("--modes", default="floor,run,run-unlimited")
    p.add_argument("--before-src", type=Path, help="a router source tree to run as run-before")
    p.add_argument("--large-share", type=float, default=0.01, help="share with 1-5 MB attachments")
    p.add_argument("--floor-limit", type=int, help="measure the floor on this many messages only")
    p.add_argument("--timeout", type=float, default=1800, help="per mode, seconds")
    args = p.parse_args()
    modes = args.modes.split(",") + (["run-before"] if args.before_src else [])
    os.environ.setdefault(common.PASSWORD_VAR, PASSWORD)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-backlog-")))
        dovecot = stack.enter_context(running_dovecot())
        sim = stack.enter_context(start_simulator(workdir))
        redis_url = ""
        if any(m.startswith("celery") for m in modes):
            redis_url = stack.enter_context(common.private_redis(workdir))
        users = [dovecot.new_user()]
        raws = common.mail_mix(args.messages, args.seed, args.large_share)
        mix = common.mix_summary(raws)
        print(f"filling one mailbox: {mix}", flush=True)
        common.fill_mailboxes(dovecot, users, raws)
        del raws
        world = World(dovecot, sim, users, workdir, redis_url, mix["messages"], args)
        rows: list[Row] = []
        for latency in (float(x) for x in args.latency.split(",")):
            rows += measure(world, latency, modes)
    result = table(rows)
    common.print_table(
        f"Backlog: {mix['messages']} messages in one mailbox, MaxMessageCount "
        f"{args.max_count}, PollingPeriod {args.polling_ms} ms",
        result,
        ["mode", "latency_ms", "messages", "seconds", "msg/s", "vs floor", "vs before", "note"],
    )
    common.write_json(
        "backlog",
        {"params": vars(args) | {"json": None, "before_src": str(args.before_src)}, "rows": result},
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
