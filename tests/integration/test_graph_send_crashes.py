"""300 CRM emails through Graph sendMail while the sender is SIGKILLed every ~20: none twice.

The CRM is the Dataverse simulator (emails seeded in Pending Send), the mail side the Graph
simulator; the sender is a separate process (this module run with ``python -m``) over a SQLite
state store, killed at random moments of its batch (after 10-30 more messages reached Graph,
plus a few milliseconds). The simulator's sent log is the ground truth: every Message-ID at
most once, every email Sent in the CRM was really sent, and every email ends Sent or - when a
kill landed between the ledger's "submitted" and Graph's answer - Failed as "may or may not have
been sent", never silently lost.

``GRAPH_SEND_EMAILS`` (default 300) sets the number of emails, ``GRAPH_SEND_SEED`` the random
seed (printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from router.config import Configuration, SystemConfiguration
from router.context import Context
from router.errors import RouterError
from router.models import Direction
from router.outgoing import send_cycle
from router.service import release_dead_leases
from router.state.sqlite import SqliteStore
from router.testing.graphsim import GraphSimulator
from router.testing.simulator import SimulatorServer
from tests.servers.common import wait_for

ROOT = Path(__file__).resolve().parents[2]
OWNER_ID = "5e0d1a8c-0000-4000-8000-0000000000a7"
SENT, FAILED = 3, 8


def test_sender_sigkilled_every_20_sends_never_sends_an_email_twice(
    simulator: SimulatorServer, graphsim: GraphSimulator, graph_mailbox: str, tmp_path: Path
) -> None:
    # Given N emails pending in Dataverse, From the Graph mailbox, with To and Bcc recipients
    count = int(os.environ.get("GRAPH_SEND_EMAILS", "300"))
    seed = int(os.environ.get("GRAPH_SEND_SEED", str(time.time_ns() % 100_000)))
    rng = random.Random(seed)
    simulator.seed_pending(count, owner_id=OWNER_ID, sender=graph_mailbox,
                           to=["kunde@example.net"], bcc=["hidden@example.net"])  # fmt: skip
    job = _job(simulator, graphsim, graph_mailbox, tmp_path)

    # When a sender process is SIGKILLed after every 10-30 messages Graph took
    progress, kills = _Progress(graphsim, graph_mailbox), 0
    for _ in range(count // 5):
        killed = _run_and_kill(job, progress, rng)
        if killed is None:  # the sender finished: nothing is pending any more
            break
        kills += killed

    # And a last sender runs until nothing is pending
    last = _sender(job)
    try:
        assert last.wait(timeout=120) == 0, f"seed {seed}"
    finally:
        _stop(last)

    # Then Graph got no Message-ID twice, and every email is accounted for
    sent_ids = Counter(entry["message_id"] for entry in graphsim.sent(graph_mailbox))
    twice = {k: v for k, v in sent_ids.items() if v > 1}
    assert not twice, f"seed {seed}: sent twice: {twice}"
    emails = simulator.emails()
    assert len(emails) == count
    marked_sent = {e["messageid"] for e in emails if e["statuscode"] == SENT}
    failed = [e for e in emails if e["statuscode"] == FAILED]
    assert marked_sent <= set(sent_ids), f"seed {seed}: marked Sent but never sent"
    assert len(marked_sent) + len(failed) == count, f"seed {seed}: some left pending"
    assert len(failed) <= kills, f"seed {seed}: more unsure emails than kills"
    print(f"graph send crashes: {count} emails, {kills} kills, {len(failed)} unsure, seed {seed}")
    assert kills >= count // 30, f"seed {seed}: only {kills} kills landed mid-batch"
    # Bcc reached Graph in the header it reads recipients from
    assert all(e["bcc"] == "hidden@example.net" for e in graphsim.sent(graph_mailbox)[:5])


class _Progress:
    """How many sendMail requests of the mailbox Graph answered 202 (read incrementally)."""

    def __init__(self, sim: GraphSimulator, mailbox: str) -> None:
        self.sim, self.mailbox = sim, mailbox
        self.since, self.done = len(sim.request_log()), 0

    def sent(self) -> int:
        rows = self.sim.request_log(self.mailbox, since=self.since)
        for row in rows:
            if row["status"] == 0:  # still in flight: read it again next time
                break
            self.since = row["id"]
            self.done += row["status"] == 202 and row["path"].endswith("/sendMail")
        return self.done


def _run_and_kill(job: Path, progress: _Progress, rng: random.Random) -> int | None:
    """Start a sender, SIGKILL it once 10-30 more messages were sent: 1 if the kill landed,
    0 if it did not, None when the sender finished on its own first."""
    target = progress.sent() + rng.randint(10, 30)
    proc = _sender(job)
    try:
        if not wait_for(lambda: progress.sent() >= target or proc.poll() is not None,
                        timeout=60, interval=0.005):  # fmt: skip
            return 0
        time.sleep(rng.uniform(0.0, 0.01))  # anywhere within the next exchange
        if proc.poll() is not None:
            return None if proc.returncode == 0 else 0
        proc.send_signal(signal.SIGKILL)
        return 1
    finally:
        _stop(proc)


def _sender(job: Path) -> subprocess.Popen[bytes]:
    """A sender process; its log lines go to ``sender.log`` beside the job file."""
    args = [sys.executable, "-m", "tests.integration.test_graph_send_crashes", str(job)]
    with (job.parent / "sender.log").open("ab") as log:
        return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _job(crm: SimulatorServer, graph: GraphSimulator, mailbox: str, tmp_path: Path) -> Path:
    """Write what a sender process needs to find both simulators and its state."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "crm": [crm.port, str(crm.ca_path), crm.org], "graph": [graph.port, str(graph.ca_path)],
        "mailbox": mailbox, "state": str(tmp_path / "state.db"),
    }))  # fmt: skip
    return job


def _context(job: dict[str, Any]) -> Context:
    crm_port, crm_ca, org = job["crm"]
    crm = SimulatorServer(crm_port, Path(crm_ca), org)
    graph = GraphSimulator(job["graph"][0], Path(job["graph"][1]))
    cfg = graph.provider_config(
        job["mailbox"],
        name="graph-out",
        direction=Direction.OUTGOING,
        deployment="sim",
        email_address=job["mailbox"],
        user_ids=(OWNER_ID,),
        max_message_count=50,
        maximum_delivery_attempts=1000,
        parameters={"timeout": "10", "retry_backoff": "0.05", "retry_backoff_max": "0.2"},
    )
    system = SystemConfiguration(max_thread_execution=2000)
    config = Configuration(system=system, deployments=(crm.deployment("sim"),), providers=(cfg,))
    # synchronous=NORMAL: a killed process loses no committed WAL transaction
    return Context(config, SqliteStore(job["state"], synchronous="NORMAL"))


def run_sender(job_path: str, rounds: int = 2000) -> None:
    """Subprocess body: send cycles until nothing is pending (exit 0) or ``rounds`` (exit 3)."""
    ctx = _context(json.loads(Path(job_path).read_text()))
    release_dead_leases(ctx.store, "graph-out")  # the killed predecessor's lease
    for _ in range(rounds):
        try:
            report = send_cycle(ctx, "graph-out")
        except RouterError:
            time.sleep(0.05)
            continue
        if report.busy:
            time.sleep(0.1)
        elif report.pending == 0:
            ctx.close()
            return
    sys.exit(3)


if __name__ == "__main__":
    run_sender(sys.argv[1])
