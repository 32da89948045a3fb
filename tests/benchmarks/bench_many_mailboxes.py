"""Benchmark: one worker watching many mostly empty mailboxes (1,000 Dovecot users by default).

Run (one command; starts its own Dovecot and Redis)::

    .venv/bin/python tests/benchmarks/bench_many_mailboxes.py [--mailboxes 1000] [--rounds 3]
        [--with-mail-every 50] [--celery/--no-celery] [--profile]

Every ``--with-mail-every``-th mailbox holds one message, the others are empty. Rows, each a full
round over every mailbox, best of ``--rounds`` (the first router round also delivers that mail):

* ``bare imapclient`` - the baseline: login, EXAMINE INBOX, logout per mailbox, sequentially;
* ``router poll loop`` - :func:`router.incoming.poll_instance` (``deliver=False``, Redis state,
  what a Celery worker runs per task) for every instance in turn, in this process;
* ``celery worker -P prefork -c 1`` - one real worker process: a ``poll`` task per instance is
  published and the round ends when every instance has recorded its poll (deliveries go to the
  memory CRM through the ``crm`` queue, served by the same worker);
* ``celery worker -P threads -c 8`` - still one process, polls overlapped on threads (polls
  mostly wait for the IMAP server, so threads, not processes, are what make one worker fast).

Columns: round seconds, polls per second, per-poll cost in ms and its ratio to the bare loop,
CPU seconds and peak RSS of the polling process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imapclient import IMAPClient

from router.configcheck import load_config
from router.context import Context
from router.incoming import poll_instance
from router.state.factory import open_store
from tests.benchmarks import common
from tests.benchmarks.common import Mailbox, ProcessSampler
from tests.servers.dovecot import PASSWORD, Dovecot, message, running_dovecot

MEMORY_DEPLOYMENT = """  <Deployment Name="sim">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://memory.invalid</CrmServerUrl>
  </Deployment>"""


def bare_round(dovecot: Dovecot, users: list[str]) -> None:
    for user in users:
        client = IMAPClient("127.0.0.1", dovecot.ports["imap"], ssl=False, timeout=30)
        client.login(user, PASSWORD)
        client.select_folder("INBOX", readonly=True)
        client.logout()


def router_round(ctx: Context, names: list[str]) -> None:
    for name in names:
        poll_instance(ctx, name, deliver=False)


def celery_round(procs: dict[str, Any], names: list[str]) -> None:
    """Publish one poll per instance; wait until each recorded a poll after the start."""
    app, store, timeout = procs["app"], procs["store"], procs["timeout"]
    started = time.time()
    for name in names:
        app.send_task("workers.tasks.poll", args=(name,), queue="incoming")
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        pending = {n for n in pending if (store.get_stats(n).last_poll or 0) < started}
    if pending:
        raise RuntimeError(f"celery round timed out: {len(pending)} instances not polled")


@contextlib.contextmanager
def celery_worker(
    workdir: Path, config: Path, redis_url: str, prefix: str, pool: str = "prefork", size: int = 1
) -> Any:
    """One ``celery worker -P pool -c size`` on queues incoming + crm (one process for
    ``threads``); yields what celery_round needs."""
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    env = common.env_with_password(
        {
            "ROUTER_CONFIG": str(config),
            "ROUTER_BROKER_URL": broker,
            "ROUTER_STATE_URL": redis_url,
            "ROUTER_KEY_PREFIX": prefix,
        }
    )
    celery_bin = str(Path(sys.executable).parent / "celery")
    cmd = [
        celery_bin,
        "-A",
        "workers",
        "worker",
        "-Q",
        "incoming,crm",
        "-c",
        str(size),
        "--pool",
        pool,
        "--loglevel",
        "WARNING",
        "-n",
        f"many-{pool}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    log = (workdir / f"worker-{pool}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=str(workdir))
    from celery import Celery

    app = Celery("bench", broker=broker)
    app.conf.task_serializer = "json"
    store = open_store(redis_url, prefix=prefix)
    try:
        time.sleep(3)  # worker start-up; a round only starts once it consumes
        yield {"app": app, "store": store, "timeout": 600.0, "pid": proc.pid}
    finally:
        store.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def measure(
    label: str, fn: Callable[[], None], rounds: int, pid: int | None, n: int, profile: bool
) -> dict[str, Any]:
    best, cpu, rss = float("inf"), 0.0, 0
    for i in range(rounds):
        sampler = ProcessSampler(pid or os.getpid())
        with sampler, common.Stopwatch() as sw, _profile(label, pid, profile and i == 1):
            fn()
        print(
            f"  {label}: round {i + 1}: {sw.elapsed:.2f} s, CPU {sampler.cpu_seconds:.2f} s",
            flush=True,
        )
        if sw.elapsed < best:
            best, cpu, rss = sw.elapsed, sampler.cpu_seconds, sampler.peak_rss
    return {
        "variant": label,
        "mailboxes": n,
        "round s": best,
        "polls/s": n / best,
        "ms/poll": 1000 * best / n,
        "CPU s": cpu,
        "CPU ms/poll": 1000 * cpu / n,
        "peak RSS MB": rss / 1e6,
    }


def _profile(label: str, pid: int | None, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """py-spy on a worker process, pyinstrument on this one (second round only)."""
    name = f"many-{label.split()[0]}"
    if pid is not None:
        return common.spying(pid, name, enabled)
    return common.profiled(enabled and "router" in label, name)


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--mailboxes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--with-mail-every", type=int, default=50)
    p.add_argument("--celery", action=argparse_bool(), default=True)
    p.add_argument("--threads", type=int, default=8, help="threads of the one-process worker")
    args = p.parse_args()
    os.environ.setdefault(common.PASSWORD_VAR, PASSWORD)
    rows = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-many-")))
        dovecot = stack.enter_context(running_dovecot())
        redis_url = stack.enter_context(common.private_redis(workdir))
        users = [f"m{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(args.mailboxes)]
        for i in range(0, len(users), args.with_mail_every):
            dovecot.append(users[i], message(i, size=8000))
        boxes = [
            Mailbox(f"mb{i}", u, polling_ms=60_000, max_count=100) for i, u in enumerate(users)
        ]
        config = workdir / "router.xml"
        config.write_text(
            common.router_xml(
                boxes,
                imap_port=dovecot.ports["imap"],
                state_url=redis_url,
                deployment=MEMORY_DEPLOYMENT,
            )
        )
        names = [b.name for b in boxes]
        bare_round(dovecot, users[:20])  # warm Dovecot's auth and mail processes
        rows.append(
            measure(
                "bare imapclient",
                lambda: bare_round(dovecot, users),
                args.rounds,
                None,
                len(users),
                False,
            )
        )
        ctx = Context(load_config(config), open_store(redis_url, prefix="loop"))
        stack.callback(ctx.close)
        rows.append(
            measure(
                "router poll loop",
                lambda: router_round(ctx, names),
                args.rounds,
                None,
                len(users),
                args.profile,
            )
        )
        for pool, size in (("prefork", 1), ("threads", args.threads)) if args.celery else ():
            with celery_worker(workdir, config, redis_url, f"cel{pool}", pool, size) as procs:
                label = f"celery worker -P {pool} -c {size}"
                rows.append(
                    measure(
                        label,
                        lambda procs=procs: celery_round(procs, names),
                        args.rounds,
                        procs["pid"],
                        len(users),
                        args.profile,
                    )
                )
    base = rows[0]["ms/poll"]
    for row in rows:
        row["vs bare"] = row["ms/poll"] / base
    common.print_table(
        f"Many mailboxes: {args.mailboxes} mailboxes (1 in {args.with_mail_every} with a "
        f"message), one process, best of {args.rounds} rounds",
        rows,
        [
            "variant",
            "mailboxes",
            "round s",
            "polls/s",
            "ms/poll",
            "vs bare",
            "CPU s",
            "CPU ms/poll",
            "peak RSS MB",
        ],
    )
    common.write_json(
        "many_mailboxes", {"params": vars(args) | {"json": None}, "rows": rows}, args.json
    )
    return 0


def argparse_bool() -> Any:
    import argparse

    return argparse.BooleanOptionalAction


if __name__ == "__main__":
    sys.exit(main())
