"""Benchmark: the router's fetch + stage rate vs getmail6 (IMAP to a Maildir), same mailbox.

Run (one command; starts its own Dovecot and Redis)::

    .venv/bin/python tests/benchmarks/bench_fetch_peer.py [--messages 2000] [--rounds 2]

One Dovecot mailbox holds ``--messages`` messages (corpus + generated, the ingest mix). Rows:

* ``getmail6`` - the peer and baseline: ``getmail --rcfile`` with a SimpleIMAPRetriever and a
  Maildir destination, ``read_all``, nothing deleted;
* ``router fetch+stage (sqlite)`` / ``(redis)`` - :func:`router.incoming.poll_instance` with
  ``deliver=False`` until the mailbox is drained: lease, list, batched ``UID FETCH``, every message
  staged in the state store (the durable hand-off that plays the Maildir's role), cursor moved;
* ``router fetch only`` - the provider alone (list + fetch, nothing stored), for reference.

Each variant runs ``--rounds`` times alternating with the others; the best round counts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.configcheck import load_config
from router.context import Context
from router.incoming import poll_instance
from router.providers.base import IncomingProvider, InstanceState
from router.providers.registry import resolve
from router.state.factory import open_store
from tests.benchmarks import common
from tests.benchmarks.common import Mailbox
from tests.servers.dovecot import PASSWORD, Dovecot, running_dovecot

MEMORY_DEPLOYMENT = """  <Deployment Name="sim">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://memory.invalid</CrmServerUrl>
  </Deployment>"""

GETMAILRC = """[retriever]
type = SimpleIMAPRetriever
server = 127.0.0.1
port = {port}
username = {user}
password = {password}
mailboxes = ("INBOX",)

[destination]
type = Maildir
path = {maildir}/
user = nobody

[options]
read_all = true
delete = false
verbose = 0
"""


def getmail(dovecot: Dovecot, user: str, workdir: Path) -> int:
    """Run getmail6 once into a fresh Maildir; return the number of messages delivered."""
    run = workdir / f"getmail-{uuid.uuid4().hex[:6]}"
    maildir = run / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    if os.geteuid() == 0:  # getmail refuses to deliver as root: it forks to ``nobody``
        workdir.chmod(0o755)
        for path in (run, maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
            shutil.chown(path, "nobody")
    rc = run / "getmailrc"
    rc.write_text(
        GETMAILRC.format(port=dovecot.ports["imap"], user=user, password=PASSWORD, maildir=maildir)
    )
    getmail_bin = Path(sys.executable).parent / "getmail"
    done = subprocess.run(
        [str(getmail_bin), "--getmaildir", str(run), "--rcfile", str(rc), "--quiet"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    count = len(os.listdir(maildir / "new"))
    if done.returncode and not count:
        raise RuntimeError(f"getmail failed ({done.returncode}): {done.stderr[-500:]}")
    return count


def router_stage(ctx: Context, name: str) -> int:
    """Poll (no delivery) until nothing new is listed; return the messages staged."""
    staged = 0
    while True:
        report = poll_instance(ctx, name, deliver=False)
        staged += report.staged
        if not report.listed:
            return staged


def fetch_only(ctx: Context, name: str) -> int:
    cfg = ctx.instance(name)
    provider = resolve(cfg.provider_class)(cfg)
    assert isinstance(provider, IncomingProvider)
    state, count = InstanceState(None, {}), 0
    with provider:
        while refs := provider.list_new(state, cfg.max_message_count):
            count += sum(1 for _ in provider.fetch_many(refs))
            state = InstanceState(provider.advance(state, refs), {})
    return count


def make_context(config_path: Path, state_url: str) -> Context:
    config = load_config(config_path)
    return Context(config, open_store(state_url, prefix=f"peer{uuid.uuid4().hex[:8]}"))


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--large-share", type=float, default=0.01)
    p.add_argument("--max-count", type=int, default=500)
    args = p.parse_args()
    os.environ.setdefault(common.PASSWORD_VAR, PASSWORD)
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peer-")))
        dovecot = stack.enter_context(running_dovecot())
        redis_url = stack.enter_context(common.private_redis(workdir, appendonly=True))
        user = dovecot.new_user()
        raws = common.mail_mix(args.messages, args.seed, args.large_share)
        mix = common.mix_summary(raws)
        print(f"filling one mailbox: {mix}", flush=True)
        common.fill_mailboxes(dovecot, [user], raws)
        del raws
        config = workdir / "router.xml"
        config.write_text(
            common.router_xml(
                [Mailbox("peer", user, max_count=args.max_count)],
                imap_port=dovecot.ports["imap"],
                state_url="sqlite:///unused.db",
                deployment=MEMORY_DEPLOYMENT,
            )
        )
        variants: dict[str, Callable[[], int]] = {
            "getmail6 (IMAP -> Maildir)": lambda: getmail(dovecot, user, workdir),
            "router fetch+stage (sqlite)": lambda: _staged(config, _sqlite(workdir)),
            "router fetch+stage (redis)": lambda: _staged(config, redis_url),
            "router fetch only": lambda: fetch_only(make_context(config, redis_url), "peer"),
        }
        for round_no in range(args.rounds):
            for label, fn in variants.items():
                with (
                    common.profiled(
                        args.profile and round_no == 0 and "redis" in label, "fetch-peer-redis"
                    ),
                    common.Stopwatch() as sw,
                ):
                    counts[label] = fn()
                print(
                    f"  round {round_no + 1}: {label}: {counts[label]} in {sw.elapsed:.2f} s",
                    flush=True,
                )
                best[label] = min(best.get(label, float("inf")), sw.elapsed)
    rows = _rows(best, counts, mix)
    common.print_table(
        f"Fetch stage vs getmail6: one mailbox, {mix['messages']} messages "
        f"({mix['bytes'] / 1e6:.0f} MB), best of {args.rounds}",
        rows,
        ["variant", "messages", "seconds", "msg/s", "MB/s", "vs getmail6"],
    )
    common.write_json(
        "fetch_peer", {"params": vars(args) | {"json": None}, "mix": mix, "rows": rows}, args.json
    )
    return 0


def _sqlite(workdir: Path) -> str:
    return f"sqlite:///{workdir / ('stage-' + uuid.uuid4().hex[:6] + '.db')}"


def _staged(config: Path, state_url: str) -> int:
    ctx = make_context(config, state_url)
    try:
        return router_stage(ctx, "peer")
    finally:
        ctx.close()


def _rows(
    best: dict[str, float], counts: dict[str, int], mix: dict[str, Any]
) -> list[dict[str, Any]]:
    base_label = next(iter(best))
    base_rate = counts[base_label] / best[base_label]
    rows = []
    for label, seconds in best.items():
        rate = counts[label] / seconds
        rows.append(
            {
                "variant": label,
                "messages": counts[label],
                "seconds": seconds,
                "msg/s": rate,
                "MB/s": mix["bytes"] / 1e6 / seconds,
                "vs getmail6": rate / base_rate,
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
