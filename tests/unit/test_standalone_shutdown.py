"""``email-router run`` as a subprocess: SIGTERM/SIGINT stop it gracefully.

The instance uses :class:`SlowMemoryProvider` (below, loaded by ``module:Class`` path), a memory
mailbox that fills itself in the child process and takes ``SLOW_LIST_SECONDS`` to list, so the
signal arrives while a cycle is running. State is SQLite, so this process can look at it after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from router.models import LedgerState, MessageRef
from router.providers.base import InstanceState
from router.providers.memory import MemoryIncomingProvider
from router.state.sqlite import SqliteStore
from tests.servers.common import wait_for

ROOT = Path(__file__).resolve().parents[2]


class SlowMemoryProvider(MemoryIncomingProvider):
    """A memory mailbox holding ``SLOW_MESSAGES`` messages whose listing takes a while."""

    def _connect(self) -> None:
        while self.box.next_uid <= int(os.environ.get("SLOW_MESSAGES", "3")):
            n = self.box.next_uid
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", f"m{n}"
            msg["Message-ID"] = f"<slow-{n}@example.com>"
            msg.set_content("hello")
            self.box.append(msg.as_bytes())

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        with open(os.environ["SLOW_MARKER"], "a") as marker:
            marker.write("listing\n")
        time.sleep(float(os.environ.get("SLOW_LIST_SECONDS", "0")))
        return super()._list_new(state, limit)


CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreadExecution>60000</MaxThreadExecution>
    <SchedulingPeriod>50</SchedulingPeriod>
    <StateStore>sqlite:///{db}</StateStore>
  </SystemConfiguration>
  <Deployment Name="crm">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="slow">
    <ProviderClass>tests.unit.test_standalone_shutdown:SlowMemoryProvider</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
    <EmailAddress>slow@example.com</EmailAddress>
    <PollingPeriod>60000</PollingPeriod>
  </ProviderConfiguration>
</Configuration>
"""


def start_router(
    tmp_path: Path, list_seconds: float, *extra: str
) -> tuple[subprocess.Popen[str], Path]:
    db, marker = tmp_path / "state.db", tmp_path / "marker"
    config = tmp_path / "router.xml"
    config.write_text(CONFIG.format(db=db))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SLOW_MARKER": str(marker),
        "SLOW_LIST_SECONDS": str(list_seconds),
    }
    env.pop("ROUTER_STATE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "run", "--config", str(config), *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert wait_for(marker.exists, timeout=30), "the first cycle never started"
    return proc, db


def stop(proc: subprocess.Popen[str], signum: int, timeout: float = 30) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"email-router run did not stop:\n{out}")
    return proc.returncode, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_lets_the_running_cycle_finish_then_exits_0(tmp_path: Path, signum: int) -> None:
    # Given a cycle that is listing the mailbox (1.5 s)
    proc, db = start_router(tmp_path, 1.5)
    # When the runtime is told to stop
    code, out = stop(proc, signum)
    # Then it waited for the cycle: every message reached the CRM, and it exited 0
    assert code == 0, out
    assert "stopping the scheduler" in out
    store = SqliteStore(str(db))
    try:
        assert store.count_entries("slow") == {LedgerState.DONE: 3}
        assert store.get_stats("slow").processed == 3
        # and no lease is left behind for the next start
        assert store.get_lease("slow") is None
        assert store.get_lease("slow#deliver") is None
    finally:
        store.close()


def test_a_cycle_longer_than_the_grace_period_is_abandoned_and_its_lease_released(
    tmp_path: Path,
) -> None:
    # Given a cycle that lists for 30 s and a 0.5 s shutdown grace period
    proc, db = start_router(tmp_path, 30, "--shutdown-grace", "0.5")
    started = time.monotonic()
    code, out = stop(proc, signal.SIGTERM)
    # Then the process leaves quickly, and the next process could take the instance at once
    assert code == 0, out
    assert time.monotonic() - started < 15
    assert "slow: still running at shutdown; releasing its lease" in out
    store = SqliteStore(str(db))
    try:
        assert store.get_lease("slow") is None
        assert store.count_entries("slow") == {}  # nothing was staged: nothing is lost either
    finally:
        store.close()
