"""Benchmark: draining a backlog from Dovecot into the Dataverse simulator, vs the raw floor.

Run (one command; starts and stops its own Dovecot, simulator and Redis)::

    .venv/bin/python tests/benchmarks/bench_ingest.py [--messages 5000] [--mailboxes 10]
        [--latency 0,50] [--modes floor,standalone,celery1,celery2] [--profile]

The backlog is ``--messages`` messages (``tests/corpus`` plus generated mail: mostly 5-50 KB,
about 1 % with 1-5 MB attachments) spread over ``--mailboxes`` Dovecot mailboxes. For each
simulator latency (ms added to every Web API request) every mode drains the same mailboxes into a
fresh simulator organisation:

* ``floor`` - the raw floor, the baseline of the ratios: one sequential script, per message one
  imapclient ``UID FETCH``, a stdlib ``email`` parse and one DeliverIncomingEmail POST;
* ``standalone`` - ``email-router run`` (one process, SQLite state, MaxThreads = mailboxes);
* ``celery1`` / ``celery2`` - ``celery -A workers worker -c 1|2`` (queues incoming + crm) and
  beat with the configuration scheduler, Redis broker and state (a private redis-server);
* ``celery-threads`` (not in the default ``--modes``) - one worker process, ``-P threads -c 10``.

Router times run from process launch (start-up included) until the ledger holds every message in
a final state; each row also gives peak RSS of the biggest worker process and CPU seconds of the
whole process tree. ``--floor-limit N`` measures the floor on the first N messages only (its rate
is steady, and at 50 ms it is slow). ``--profile`` samples the standalone run with py-spy.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests
from imapclient import IMAPClient

from router.models import LedgerState
from router.state.factory import open_store
from tests.benchmarks import common
from tests.benchmarks.common import Mailbox, ProcessSampler
from tests.servers.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.servers.simulator import ODATA, SimulatorServer, start_simulator

_BROKER_DBS = itertools.count()
FINAL = (LedgerState.DELIVERED, LedgerState.DONE, LedgerState.SKIPPED, LedgerState.QUARANTINED)
BIN = Path(sys.executable).parent
NS = "Microsoft.Dynamics.CRM."


@dataclass
class World:
    """What every mode of one run shares."""

    dovecot: Dovecot
    sim: SimulatorServer
    users: list[str]
    workdir: Path
    redis_url: str
    total: int
    args: Any


@dataclass
class Row:
    mode: str
    latency_ms: float
    messages: int
    seconds: float
    peak_rss_mb: float | None = None
    cpu_s: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


# -- the raw floor --------------------------------------------------------------------------------
def floor(world: World, sim: SimulatorServer, limit: int | None) -> Row:
    """Sequential FETCH + stdlib parse + one POST per message; nothing else."""
    session = requests.Session()
    headers = {**ODATA, "Authorization": f"Bearer {sim.token()}"}
    url = f"{sim.api_url}emails/{NS}DeliverIncomingEmail"
    per_box = None if limit is None else max(1, limit // len(world.users))
    done, failed = 0, 0
    with ProcessSampler() as sampler, common.Stopwatch() as sw:
        for user in world.users:
            with _imap(world.dovecot, user) as client:
                client.select_folder("INBOX", readonly=True)
                for uid in sorted(client.search("ALL"))[:per_box]:
                    raw = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
                    payload = floor_payload(raw, user)
                    answer = session.post(
                        url, json=payload, headers=headers, timeout=120, verify=str(sim.ca_path)
                    )
                    done += 1
                    failed += not answer.ok
    note = f"{failed} refused" if failed else ""
    # no RSS: the floor runs inside this process, which also holds the generated mail
    return Row("floor", 0, done, sw.elapsed, None, sampler.cpu_seconds, note)


@contextlib.contextmanager
def _imap(dovecot: Dovecot, user: str) -> Iterator[IMAPClient]:
    client = IMAPClient("127.0.0.1", dovecot.ports["imap"], ssl=False, timeout=60)
    client.login(user, PASSWORD)
    try:
        yield client
    finally:
        client.logout()


def floor_payload(raw: bytes, mailbox: str) -> dict[str, Any]:
    """DeliverIncomingEmail parameters from a stdlib parse (what a minimal script sends)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    body = _safe(lambda: msg.get_body(("html", "plain")))
    text = _safe(lambda: body.get_content()) if body is not None else ""
    attachments = []
    for part in _safe(lambda: list(msg.iter_attachments())) or []:
        data = _safe(lambda p=part: p.get_payload(decode=True)) or b""
        attachments.append(
            {
                "@odata.type": f"{NS}activitymimeattachment",
                "filename": part.get_filename() or "attachment",
                "mimetype": part.get_content_type(),
                "body": common.b64(data),
            }
        )
    return {
        "MessageId": _header(msg, "Message-ID") or f"<{uuid.uuid4().hex}@floor>",
        "Subject": _header(msg, "Subject"),
        "From": _header(msg, "From"),
        "To": _header(msg, "To"),
        "Cc": _header(msg, "Cc"),
        "Bcc": "",
        "ReceivedOn": _received(msg),
        "SubmittedBy": mailbox,
        "Importance": "normal",
        "Body": text if isinstance(text, str) else "",
        "Attachments": attachments,
        "ExtraProperties": {"@odata.type": f"{NS}email", "directioncode": False},
    }


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # broken corpus MIME: the floor sends what it can
        return None


def _header(msg: EmailMessage, name: str) -> str:
    value = _safe(lambda: msg.get(name))
    return str(value)[:800] if value is not None else ""


def _received(msg: EmailMessage) -> str:
    when = _safe(lambda: parsedate_to_datetime(str(msg["Date"])))
    return when.isoformat() if when is not None else "2026-01-01T00:00:00Z"


# -- router modes ---------------------------------------------------------------------------------
def write_config(world: World, sim: SimulatorServer, state_url: str, tag: str) -> Path:
    boxes = [
        Mailbox(f"box{i}", user, polling_ms=1000, max_count=world.args.max_count)
        for i, user in enumerate(world.users)
    ]
    text = common.router_xml(
        boxes,
        imap_port=world.dovecot.ports["imap"],
        state_url=state_url,
        deployment=common.sim_deployment_xml(sim),
        max_threads=len(world.users),
    )
    path = world.workdir / f"router-{tag}.xml"
    path.write_text(text)
    return path


def final_count(state_url: str, prefix: str, names: list[str]) -> int:
    store = open_store(state_url, prefix=prefix)
    try:
        return sum(
            sum(n for state, n in store.count_entries(name).items() if state in FINAL)
            for name in names
        )
    finally:
        store.close()


def wait_drained(
    world: World, state_url: str, prefix: str, procs: list[subprocess.Popen[bytes]]
) -> tuple[float, int]:
    """Seconds until every message is final in the ledger (or the timeout); the count then."""
    names = [f"box{i}" for i in range(len(world.users))]
    started = time.perf_counter()
    deadline = started + world.args.timeout
    count = 0
    while time.perf_counter() < deadline:
        with contextlib.suppress(Exception):  # the store may not exist yet
            count = final_count(state_url, prefix, names)
        if count >= world.total:
            break
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a router process exited early; see its log in the work dir")
        time.sleep(0.25)
    return time.perf_counter() - started, count


def standalone(world: World, sim: SimulatorServer, latency: float) -> Row:
    tag = f"standalone-{latency:g}"
    state_url = f"sqlite:///{world.workdir / (tag + '.db')}"
    config = write_config(world, sim, state_url, tag)
    log = (world.workdir / f"{tag}.log").open("wb")
    cmd = [str(BIN / "email-router"), "run", "--config", str(config), "--shutdown-grace", "5"]
    with contextlib.ExitStack() as stack:
        proc = subprocess.Popen(cmd, env=common.env_with_password(), stdout=log, stderr=log)
        stack.callback(_stop, proc)
        sampler = stack.enter_context(ProcessSampler(proc.pid))
        stack.enter_context(common.spying(proc.pid, f"ingest-{tag}", world.args.profile))
        seconds, count = wait_drained(world, state_url, "er", [proc])
    log.close()
    return _router_row("standalone", latency, seconds, count, sampler, world.total)


def celery(
    world: World, sim: SimulatorServer, latency: float, workers: int, pool: str = "prefork"
) -> Row:
    tag = f"celery{workers}{pool[0]}-{latency:g}"
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    broker = world.redis_url.rsplit("/", 1)[0] + f"/{next(_BROKER_DBS) % 15 + 1}"  # fresh queues
    config = write_config(world, sim, world.redis_url, tag)
    env = common.env_with_password(
        {
            "ROUTER_CONFIG": str(config),
            "ROUTER_BROKER_URL": broker,
            "ROUTER_STATE_URL": world.redis_url,
            "ROUTER_KEY_PREFIX": prefix,
        }
    )
    celery_bin = str(BIN / "celery")
    worker_cmd = [
        celery_bin,
        "-A",
        "workers",
        "worker",
        "-Q",
        "incoming,crm",
        "-c",
        str(workers),
        "--pool",
        pool,
        "--loglevel",
        "WARNING",
        "-n",
        f"{tag}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    beat_cmd = [
        celery_bin,
        "-A",
        "workers",
        "beat",
        "-S",
        "workers.scheduler:ConfigScheduler",
        "--loglevel",
        "WARNING",
    ]
    with contextlib.ExitStack() as stack:
        worker = _spawn(worker_cmd, env, world.workdir / f"{tag}-worker.log", stack)
        beat = _spawn(beat_cmd, env, world.workdir / f"{tag}-beat.log", stack)
        sampler = stack.enter_context(ProcessSampler(worker.pid))
        stack.enter_context(common.spying(worker.pid, f"ingest-{tag}", world.args.profile))
        seconds, count = wait_drained(world, world.redis_url, prefix, [worker, beat])
    mode = f"celery -c {workers}" if pool == "prefork" else f"celery -P {pool} -c {workers}"
    return _router_row(mode, latency, seconds, count, sampler, world.total)


def _spawn(
    cmd: list[str], env: dict[str, str], log_path: Path, stack: contextlib.ExitStack
) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=str(log_path.parent))
    stack.callback(log.close)
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _router_row(
    mode: str, latency: float, seconds: float, count: int, sampler: ProcessSampler, total: int
) -> Row:
    note = "" if count >= total else f"TIMEOUT: {count}/{total} final"
    return Row(
        mode, latency, count, seconds, sampler.peak_rss_single / 1e6, sampler.cpu_seconds, note
    )


# -- main -----------------------------------------------------------------------------------------
MODES: dict[str, Callable[[World, SimulatorServer, float], Row]] = {
    "standalone": standalone,
    "celery1": lambda w, s, lat: celery(w, s, lat, 1),
    "celery2": lambda w, s, lat: celery(w, s, lat, 2),
    "celery-threads": lambda w, s, lat: celery(w, s, lat, 10, "threads"),
}


def run_latency(world: World, latency: float, modes: list[str]) -> list[Row]:
    world.sim.set_faults(latency_ms=latency)
    rows: list[Row] = []
    for mode in modes:
        sim = world.sim.for_org(f"ingest{uuid.uuid4().hex[:8]}")
        print(f"  latency {latency:g} ms: {mode} ...", flush=True)
        if mode == "floor":
            row = floor(world, sim, world.args.floor_limit)
            row.latency_ms = latency
        else:
            row = MODES[mode](world, sim, latency)
        if mode != "floor" and not row.note:
            delivered = len(common.crm_activities(sim))
            row.note = f"{delivered} activities in the CRM"
        print(f"    {row.messages} msgs in {row.seconds:.1f} s = {row.rate:.1f} msg/s {row.note}")
        rows.append(row)
    return rows


def table(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        base = next((r for r in rows if r.mode == "floor" and r.latency_ms == row.latency_ms), None)
        ratio = row.rate / base.rate if base and base.rate else None
        out.append(
            {
                "mode": row.mode,
                "latency_ms": row.latency_ms,
                "messages": row.messages,
                "seconds": row.seconds,
                "msg/s": row.rate,
                "vs floor": ratio,
                "peak RSS MB": row.peak_rss_mb,
                "CPU s": row.cpu_s,
                "note": row.note,
            }
        )
    return out


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--mailboxes", type=int, default=10)
    p.add_argument("--latency", default="0,50", help="simulator latencies in ms, comma separated")
    p.add_argument("--modes", default="floor,standalone,celery1,celery2")
    p.add_argument("--large-share", type=float, default=0.01, help="share with 1-5 MB attachments")
    p.add_argument("--floor-limit", type=int, help="measure the floor on this many messages only")
    p.add_argument("--max-count", type=int, default=500, help="MaxMessageCount of the instances")
    p.add_argument("--timeout", type=float, default=1800, help="per mode, seconds")
    args = p.parse_args()
    modes = args.modes.split(",")
    os.environ.setdefault(common.PASSWORD_VAR, PASSWORD)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        dovecot = stack.enter_context(running_dovecot())
        sim = stack.enter_context(start_simulator(workdir))
        redis_url = stack.enter_context(common.private_redis(workdir))
        users = [dovecot.new_user() for _ in range(args.mailboxes)]
        raws = common.mail_mix(args.messages, args.seed, args.large_share)
        mix = common.mix_summary(raws)
        print(f"filling {args.mailboxes} mailboxes: {mix}", flush=True)
        common.fill_mailboxes(dovecot, users, raws)
        del raws
        world = World(dovecot, sim, users, workdir, redis_url, mix["messages"], args)
        rows: list[Row] = []
        for latency in (float(x) for x in args.latency.split(",")):
            rows += run_latency(world, latency, modes)
    result = table(rows)
    common.print_table(
        f"Ingest: {mix['messages']} messages ({mix['bytes'] / 1e6:.0f} MB) over "
        f"{args.mailboxes} mailboxes, Dovecot -> simulator",
        result,
        [
            "mode",
            "latency_ms",
            "messages",
            "seconds",
            "msg/s",
            "vs floor",
            "peak RSS MB",
            "CPU s",
            "note",
        ],
    )
    common.write_json(
        "ingest", {"params": vars(args) | {"json": None}, "mix": mix, "rows": result}, args.json
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
