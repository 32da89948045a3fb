"""Two beats dispatching at once: every instance polled once per period, none skipped.

Real processes: a private redis-server (state, broker and probe in three databases), two
``celery beat`` processes running the dispatcher and one prefork worker. Both beats and the
worker carry the probe of ``tests/support/dispatch_probe.py``, which records every instance's
due instant as a beat sent it and every start of a poll in the worker. Instances use the
memory provider (empty mailboxes), PollingPeriod 1 s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.common import wait_for
from tests.servers.redis_server import PrivateRedis
from tests.support import dispatch_probe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PERIOD = 1.0
REFRESH = 0.5
INSTANCES = 30
RUN = 8.0
WORKER = ["worker", "-Q", "incoming,crm", "-c", "2", "-n", "w@%h", "-l", "INFO"]
#: Slack for a loaded 2-core CI machine on top of the dispatcher's tick.
MARGIN = 1.5


def config_xml(names: list[str]) -> str:
    blocks = "".join(
        f"""<ProviderConfiguration Name="{n}"><ProviderClass>memory</ProviderClass>
        <Direction>Incoming</Direction><Deployment>crm</Deployment>
        <EmailAddress>{n}@example.com</EmailAddress>
        <PollingPeriod>{int(PERIOD * 1000)}</PollingPeriod></ProviderConfiguration>"""
        for n in names
    )
    return f"""<Configuration><SystemConfiguration>
      <ConfigRefreshPeriod>{int(REFRESH * 1000)}</ConfigRefreshPeriod><LogLevel>INFO</LogLevel>
      </SystemConfiguration><Deployment Name="crm"><Adapter>memory</Adapter>
      <CrmServerUrl>https://crm.example</CrmServerUrl></Deployment>{blocks}</Configuration>"""


class Processes:
    """Celery processes of this test, each in its own process group, logs in the temp dir."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> Path:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", *args],
                cwd=ROOT,
                env={**os.environ, **self.env, **(extra or {}), "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((proc, log))
        return log

    def stop_all(self) -> None:
        """Warm shutdown (the probe flushes), SIGKILL what is still running after 20 s."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def procs(tmp_path: Path, private_redis: PrivateRedis) -> Iterator[Processes]:
    base = private_redis.url.rsplit("/", 1)[0]
    env = {
        "ROUTER_CONFIG": str(tmp_path / "router.xml"),
        "ROUTER_STATE_URL": f"{base}/0",
        "ROUTER_BROKER_URL": f"{base}/1",
        "DISPATCH_PROBE_URL": f"{base}/2",
        "ROUTER_KEY_PREFIX": "dispatch",
    }
    p = Processes(tmp_path, env)
    yield p
    p.stop_all()


def ready(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


def test_two_beats_poll_every_instance_once_per_period_and_pick_up_an_added_one(
    tmp_path: Path, procs: Processes
) -> None:
    names = [f"box{n:02d}" for n in range(INSTANCES)]
    (tmp_path / "router.xml").write_text(config_xml(names))
    # Given one worker and two beats running the dispatcher at the same time
    worker = procs.start(
        "worker",
        [*WORKER, "--without-gossip", "--without-mingle", "-I", "tests.support.dispatch_probe"],
        {"DISPATCH_PROBE_WORKER": "1"},
    )
    scheduler = "tests.support.dispatch_probe:ProbeScheduler"
    beats = [procs.start(f"beat{i}", ["beat", "-S", scheduler, "-l", "INFO"]) for i in (1, 2)]
    assert wait_for(
        lambda: ready(worker, " ready.") and all(ready(b, "Starting") for b in beats), 60
    )
    started = time.time()
    time.sleep(RUN)
    # When an instance is added to the file
    (tmp_path / "router.xml").write_text(config_xml([*names, "late"]))
    added_at = time.time()
    time.sleep(REFRESH + PERIOD + MARGIN + 0.5)
    procs.stop_all()

    beat_rows, start_rows = dispatch_probe.read(procs.env["DISPATCH_PROBE_URL"])
    # Then no due instant of any instance was sent twice, and both beats shared the work
    sent = Counter((name, due) for _, name, due, _, _ in beat_rows)
    assert sent and max(sent.values()) == 1
    assert len({pid for *_, pid in beat_rows}) == 2
    # And no due instant was polled twice: each start is traced to the due instant its task
    # carried (a redelivered or doubled task would start the same one again)
    due_of = {(task_id, name): due for task_id, name, due, _, _ in beat_rows}
    polled = Counter((name, due_of[(task_id, name)]) for task_id, name, _ in start_rows
                     if (task_id, name) in due_of)  # fmt: skip
    assert polled and max(polled.values()) == 1, polled.most_common(3)
    starts = dispatch_probe.starts_by_instance(start_rows)
    for name in names:
        times = [t for t in starts.get(name, []) if t < added_at]
        # in the steady run (the first polls wait for the worker's start-up burst, so the gap
        # after one can be short without anything doubled) never twice in one period ...
        steady = [t for t in times if t > started + 2 * PERIOD]
        gaps = [b - a for a, b in itertools.pairwise(steady)]
        assert min(gaps) > PERIOD / 2, (name, gaps)
        # ... and never skipped: no gap reaches two periods
        assert max(gaps) < 2 * PERIOD, (name, gaps)
    # and the added instance was polled within refresh + period + a margin
    assert starts.get("late"), "the added instance was never polled"
    assert starts["late"][0] - added_at <= REFRESH + PERIOD + MARGIN
