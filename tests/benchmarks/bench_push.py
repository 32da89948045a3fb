"""Benchmark: IMAP IDLE push on many mailboxes in one process, vs polling and the server floor.

Run (one command; starts its own Dovecot and Dataverse simulator)::

    .venv/bin/python tests/benchmarks/bench_push.py                   # quick: 100 mailboxes
    .venv/bin/python tests/benchmarks/bench_push.py --mailboxes 1000  # the issue's size
    .venv/bin/python tests/benchmarks/bench_push.py --mailboxes 20 --messages 40 --phases floor,push

Three phases on the same Dovecot and the same N mailboxes, run in the order of ``--phases``
(default ``floor,push,polling``):

* ``floor`` - the server floor, no router: bare IDLE clients (imapclient ``idle()`` /
  ``idle_check()``, one thread each) on the first ``--floor-mailboxes`` mailboxes (default
  min(N, 100)); each SELECTs INBOX, IDLEs and notes the wall-clock time an ``EXISTS`` arrives,
  then ends IDLE and IDLEs again. The latency of a message is that time minus the moment its
  APPEND completed (the n-th new message of a mailbox is matched to its n-th unmatched APPEND);
  messages go only to the mailboxes with a client. Dovecot waits 500 ms after a change before
  it tells an IDLE client (``#define NOTIFY_DELAY_MSECS 500`` in its
  src/lib-storage/mailbox-watch.c, to batch changes), so this floor is about 0.5 s and no
  IDLE client can do better. Its RSS and threads columns are left empty (``-``): the clients
  run in the benchmark process, whose footprint says nothing about the router;
* ``push`` - ``email-router run`` (SQLite state, SchedulingPeriod 1 s, MaxThreads 10), every
  instance ``<Push>idle</Push>`` with PollingPeriod 10 minutes: the process holds N IDLE
  sessions; a new message is polled as soon as Dovecot notifies it;
* ``polling`` - the baseline: the same router without push, PollingPeriod ``--poll-ms``
  (default 5 s; a shorter one does not sustain 1,000 mailboxes on 2 cores).

In each phase, once the clients or the router have settled, ``--messages`` messages are APPENDed
to random mailboxes at random intervals (``--rate`` per second on average). In the router
phases the latency of a message is the simulator's ``createdon`` of its activity minus the
moment its APPEND completed (one clock). After the table, the router's push overhead is push
minus floor (p50 and p99) when both ran: what the router adds to what Dovecot imposes.
Memory: the RSS of the router process once settled; the push phase's minus the polling phase's,
divided by N, is the memory per watched mailbox (a thread, an IMAPClient, a provider object).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from email.utils import make_msgid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil

from router.state.factory import open_store
from tests.benchmarks import common
from tests.benchmarks.common import Mailbox
from tests.servers.common import wait_for
from tests.servers.dovecot import MANY_CONNECTIONS, Dovecot, running_dovecot
from tests.servers.simulator import SimulatorServer, start_simulator

BIN = Path(sys.executable).parent
COLUMNS = ["phase", "mailboxes", "period s", "messages", "arrived", "p50 s", "p99 s", "max s"]
COLUMNS += ["settle s", "RSS MB", "threads"]
#: PollingPeriod of the push phase: long enough that no scheduled poll lands in the phase.
PUSH_POLL_MS = 600_000


def probe(n: int, message_id: str) -> bytes:
    return (
        f"From: Customer <c{n}@example.org>\r\nTo: sales@example.com\r\n"
        f"Subject: push probe {n}\r\nMessage-ID: {message_id}\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello {n}.\r\n"
    ).encode()


def config_text(world: dict[str, Any], phase: str, sim: SimulatorServer, db: Path) -> str:
    push = phase == "push"
    period = PUSH_POLL_MS if push else world["args"].poll_ms
    boxes = [Mailbox(f"box{i}", user, polling_ms=period) for i, user in enumerate(world["users"])]
    text = common.router_xml(
        boxes,
        imap_port=world["dovecot"].ports["imap"],
        state_url=f"sqlite:///{db}",
        deployment=common.sim_deployment_xml(sim),
        scheduling_ms=1000,
        log_level="INFO",
    )
    if push:
        text = text.replace("</PollingPeriod>", "</PollingPeriod>\n    <Push>idle</Push>")
    return text


def start_router(
    world: dict[str, Any], phase: str, sim: SimulatorServer
) -> subprocess.Popen[bytes]:
    workdir: Path = world["workdir"]
    config = workdir / f"router-{phase}.xml"
    config.write_text(config_text(world, phase, sim, workdir / f"{phase}.db"))
    log = (workdir / f"{phase}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "email-router"), "run", "--config", str(config)],
        env=common.env_with_password(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(workdir),
    )
    log.close()
    return proc


def settle(world: dict[str, Any], phase: str, proc: subprocess.Popen[bytes]) -> float:
    """Wait until every watcher is IDLE (push) and every instance has had its first poll."""
    n, log = len(world["users"]), world["workdir"] / f"{phase}.log"
    started = time.monotonic()
    if phase == "push":
        ok = wait_for(lambda: log.read_text().count("IMAP IDLE on") >= n, 60 + n / 5, 0.5)
        if not ok:
            got, tail = log.read_text().count("IMAP IDLE on"), log.read_text()[-3000:]
            raise RuntimeError(f"only {got}/{n} IDLE sessions; log:\n{tail}")
    db = world["workdir"] / f"{phase}.db"
    if not wait_for(db.exists, 60, 0.2):
        raise RuntimeError(f"the router created no state:\n{log.read_text()[-3000:]}")
    store = open_store(f"sqlite:///{db}", create=False)
    try:
        names = [f"box{i}" for i in range(n)]
        polled = lambda: all(store.get_stats(name).last_poll for name in names)  # noqa: E731
        if not wait_for(polled, 60 + n / 5, 0.5):
            raise RuntimeError(f"the first poll round did not finish:\n{log.read_text()[-3000:]}")
    finally:
        store.close()
    time.sleep(2.0)  # the last cycles deliver and return
    return time.monotonic() - started


def append_randomly(
    world: dict[str, Any],
    phase: str,
    targets: Sequence[str] | None = None,
    mailbox_of: dict[str, str] | None = None,
) -> dict[str, float]:
    """APPEND to random mailboxes at ``--rate`` per second; Message-ID -> APPEND completed.

    ``targets``: the mailboxes to choose from (default: all); ``mailbox_of``, when given, is
    filled with Message-ID -> the mailbox it went to.
    """
    args, dovecot = world["args"], world["dovecot"]
    rng = random.Random(f"{args.seed}-{phase}")
    choices = list(targets) if targets is not None else world["users"]
    appended: dict[str, float] = {}
    for n in range(args.messages):
        time.sleep(rng.expovariate(args.rate))
        message_id = make_msgid(f"{phase}{n}", "bench.example.org")
        user = rng.choice(choices)
        dovecot.append(user, probe(n, message_id))
        appended[message_id] = time.time()
        if mailbox_of is not None:
            mailbox_of[message_id] = user
    return appended


class BareIdle(threading.Thread):
    """One bare IDLE client: SELECT INBOX, IDLE, note when each ``EXISTS`` arrives.

    ``arrivals`` holds (time.time() when read, message count of the ``EXISTS``); after each
    notification the client ends IDLE and IDLEs again, so later changes are reported too.
    """

    def __init__(self, dovecot: Dovecot, user: str, stop: threading.Event) -> None:
        super().__init__(name=f"floor-{user}", daemon=True)
        self.dovecot, self.user, self.stop = dovecot, user, stop
        self.initial: int | None = None  # EXISTS of the SELECT
        self.count = 0  # the highest EXISTS seen
        self.idling = threading.Event()
        self.arrivals: list[tuple[float, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # dovecot.imap(): plain port, socket timeout 30 s; idle_check() polls with its own
            # timeout and restores the socket's after, so a long IDLE is fine (Dovecot sends
            # "* OK Still here" every 2 minutes)
            with self.dovecot.imap(self.user) as client:
                selected = client.select_folder("INBOX", readonly=True)
                self.initial = self.count = int(selected[b"EXISTS"])
                client.idle()  # Dovecot sends "+ idling" before its first sync
                self.idling.set()
                while not self.stop.is_set():
                    if self._note(client.idle_check(timeout=0.5), time.time()):
                        _text, pending = client.idle_done()
                        self._note(pending, time.time())
                        client.idle()
                client.idle_done()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.idling.set()

    def _note(self, responses: list[Any], at: float) -> bool:
        counts = [
            int(r[0])
            for r in responses
            if len(r) >= 2 and isinstance(r[0], int) and r[1] == b"EXISTS"
        ]
        if counts and max(counts) > self.count:
            self.count = max(counts)
            self.arrivals.append((at, self.count))
        return bool(counts)


def measure_floor(world: dict[str, Any]) -> dict[str, Any]:
    """The server floor: bare IDLE clients, no router (see the module docstring)."""
    boxes = world["users"][: world["args"].floor_mailboxes]
    stop = threading.Event()
    clients = [BareIdle(world["dovecot"], user, stop) for user in boxes]
    started = time.monotonic()
    mailbox_of: dict[str, str] = {}
    try:
        for client in clients:
            client.start()
        if not wait_for(lambda: all(c.idling.is_set() for c in clients), 60 + len(boxes) / 5):
            idle = sum(c.idling.is_set() for c in clients)
            raise RuntimeError(f"only {idle}/{len(boxes)} bare clients IDLE")
        _raise_first(clients)
        settled = time.monotonic() - started
        appended = append_randomly(world, "floor", boxes, mailbox_of)
        sent = {user: 0 for user in boxes}
        for user in mailbox_of.values():
            sent[user] += 1
        by_user = {c.user: c for c in clients}
        everything = lambda: all(  # noqa: E731
            c.error or c.count >= (c.initial or 0) + sent[c.user] for c in clients
        )
        wait_for(everything, 30, 0.1)
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    _raise_first(clients)
    latencies: list[float] = []
    for user, client in by_user.items():
        # the n-th new message of a mailbox is its n-th APPEND (one appender, in order)
        times = sorted(at for m, at in appended.items() if mailbox_of[m] == user)
        seen = client.initial or 0
        for arrived, count in client.arrivals:
            for _ in range(count - seen):
                if times:
                    latencies.append(arrived - times.pop(0))
            seen = count
    # RSS and threads: the clients live in the benchmark process, not meaningful
    return row("floor (bare IDLE)", len(boxes), None, len(appended), latencies, settled)


def _raise_first(clients: Sequence[BareIdle]) -> None:
    for client in clients:
        if client.error is not None:
            raise RuntimeError(f"bare IDLE client {client.user} failed") from client.error


def measure(world: dict[str, Any], phase: str) -> dict[str, Any]:
    sim = world["base_sim"].for_org(f"push{phase}{random.randrange(10**6)}")
    proc = start_router(world, phase, sim)
    try:
        settled = settle(world, phase, proc)
        info = psutil.Process(proc.pid)
        rss, threads = info.memory_info().rss, info.num_threads()
        appended = append_randomly(world, phase)
        # a polling round of many mailboxes may take longer than the period: wait for it
        deadline = time.monotonic() + 60 + max(world["args"].poll_ms / 1000, len(appended) / 2)
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = common.crm_activities(sim, "messageid,createdon")
            if set(appended) <= {r["messageid"] for r in rows}:  # the first poll brings others
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(60)
    created = {r["messageid"]: _epoch(r["createdon"]) for r in rows}
    latencies = [created[m] - at for m, at in appended.items() if m in created]
    period = (PUSH_POLL_MS if phase == "push" else world["args"].poll_ms) / 1000
    return row(
        phase, len(world["users"]), period, len(appended), latencies, settled,
        rss_mb=round(rss / 2**20, 1), threads=threads,
    )  # fmt: skip


def row(
    phase: str,
    mailboxes: int,
    period: float | None,
    messages: int,
    latencies: list[float],
    settled: float,
    *,
    rss_mb: float | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """One row of the table (the keys are :data:`COLUMNS`)."""
    return {
        "phase": phase,
        "mailboxes": mailboxes,
        "period s": period,
        "messages": messages,
        "arrived": len(latencies),
        "p50 s": common.percentile(latencies, 50),
        "p99 s": common.percentile(latencies, 99),
        "max s": max(latencies) if latencies else None,
        "settle s": round(settled, 1),
        "RSS MB": rss_mb,
        "threads": threads,
    }


def _epoch(value: Any) -> float:
    """The simulator's ``createdon``: ISO 8601 (``...Z``) or epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def users(dovecot: Dovecot, count: int) -> list[str]:
    """``count`` fresh mailboxes, each created by one APPEND-less login."""
    made = [dovecot.new_user() for _ in range(count)]
    for user in made:
        with dovecot.imap(user) as client:
            client.select_folder("INBOX", readonly=True)
    return made


INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")


@contextlib.contextmanager
def inotify_instances(needed: int, allowed: bool) -> Iterator[None]:
    """Raise ``fs.inotify.max_user_instances`` to ``needed`` for the run (root, opt-in).

    Dovecot gives every IDLE session an inotify instance under its one uid; past the limit
    (128 by default) it notices new mail only every ``mailbox_idle_check_interval`` (1 s in
    :data:`MANY_CONNECTIONS`), which measures the limit, not push. The old value is restored.
    """
    before = int(INOTIFY.read_text())
    if before >= needed:
        yield
        return
    if not allowed:
        print(
            f"  note: fs.inotify.max_user_instances is {before}; Dovecot checks the mailboxes "
            f"past that every second instead of being told at once (--raise-inotify: {needed})"
        )
        yield
        return
    INOTIFY.write_text(str(needed))
    print(f"  fs.inotify.max_user_instances {before} -> {needed} for this run")
    try:
        yield
    finally:
        INOTIFY.write_text(str(before))


PHASES = ("floor", "push", "polling")


def phase_list(text: str) -> list[str]:
    """``--phases``: comma-separated names out of :data:`PHASES`, in the order to run them."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return names


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--mailboxes", type=int, default=100, help="watched mailboxes (issue: 1000)")
    p.add_argument("--messages", type=int, default=60, help="messages appended per phase")
    p.add_argument("--rate", type=float, default=4.0, help="appends per second (average)")
    p.add_argument("--poll-ms", type=int, default=5000, help="PollingPeriod of the baseline")
    p.add_argument(
        "--phases",
        type=phase_list,
        default=list(PHASES),
        help="comma-separated phases to run, in order (default floor,push,polling)",
    )
    p.add_argument(
        "--floor-mailboxes",
        type=int,
        help="mailboxes with a bare IDLE client in the floor phase (default min(N, 100))",
    )
    p.add_argument(
        "--raise-inotify",
        action="store_true",
        help="as root, raise fs.inotify.max_user_instances for the run (Dovecot needs one per "
        "IDLE session; restored after)",
    )
    args = p.parse_args()
    if args.floor_mailboxes is None:
        args.floor_mailboxes = min(args.mailboxes, 100)
    args.floor_mailboxes = max(1, min(args.floor_mailboxes, args.mailboxes))
    by_phase: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-push-")))
        stack.enter_context(inotify_instances(args.mailboxes + 200, args.raise_inotify))
        dovecot = stack.enter_context(running_dovecot(MANY_CONNECTIONS))
        world: dict[str, Any] = {
            "args": args,
            "workdir": workdir,
            "dovecot": dovecot,
            "base_sim": stack.enter_context(start_simulator(workdir)),
            "users": users(dovecot, args.mailboxes),
        }
        for phase in args.phases:
            boxes = args.floor_mailboxes if phase == "floor" else args.mailboxes
            print(f"  {phase}: {boxes} mailboxes, {args.messages} messages", flush=True)
            by_phase[phase] = measure_floor(world) if phase == "floor" else measure(world, phase)
    results = list(by_phase.values())
    floor, push, polling = (by_phase.get(name) for name in PHASES)
    summary: dict[str, Any] = {}
    if push and polling:
        extra = (push["RSS MB"] - polling["RSS MB"]) * 2**20 / args.mailboxes
        summary["RSS per watched mailbox KB"] = round(extra / 1024, 1)
        summary["p50 ratio push/polling"] = _ratio(push["p50 s"], polling["p50 s"])
        summary["p99 ratio push/polling"] = _ratio(push["p99 s"], polling["p99 s"])
    if push and floor:
        summary["push overhead p50 s"] = _minus(push["p50 s"], floor["p50 s"])
        summary["push overhead p99 s"] = _minus(push["p99 s"], floor["p99 s"])
    common.print_table(
        f"Push (IMAP IDLE) vs polling, {args.mailboxes} mailboxes, one process",
        results,
        COLUMNS,
    )
    if push and floor:
        print(
            f"  router push overhead over the server floor (push - floor): "
            f"p50 {_signed(summary['push overhead p50 s'])}, "
            f"p99 {_signed(summary['push overhead p99 s'])}"
        )
    print("  goals: push p50 <= 0.5 s, p99 <= 1.5 s at 1,000 mailboxes; " + str(summary))
    payload = {"params": vars(args) | {"json": None}, "rows": results, "summary": summary}
    common.write_json("push", payload, args.json)
    return 0


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f} s"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


if __name__ == "__main__":
    sys.exit(main())
