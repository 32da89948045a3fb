"""IMAP IDLE push end to end: APPEND -> CRM activity well under the polling period.

Every instance here has ``<PollingPeriod>`` 60 s and ``<Push>idle</Push>``: after the first
poll at start-up, only push can explain an activity that appears within seconds.

* ``email-router run`` (SQLite, the Dataverse simulator): the scheduler holds IDLE itself and
  polls in-process (``Scheduler.poll_now``), at the default SchedulingPeriod of 1 s.
* ``email-router watch`` beside a Celery worker and no beat at all (the FileCrm of the Celery
  end-to-end tests): each notification sends the poll task; nothing else ever polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers.celery_procs import CeleryProcs, Proc
from tests.servers.common import wait_for
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.redis_server import PrivateRedis
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer
from tests.support.celery_world import ClusterWorld, Instance

ROOT = Path(__file__).resolve().parents[2]
#: Each message must arrive within this (the polling period is 60 s).
BOUND = 5.0

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <StateStore>sqlite:///{db}</StateStore>
  </SystemConfiguration>
  <Deployment Name="sim">
    <CrmServerUrl>{crm_url}</CrmServerUrl>
    <TenantId>{tenant}</TenantId>
    <ClientId>{client_id}</ClientId>
    <ClientSecret Env="TEST_CRM_SECRET"/>
    <Authority>{authority}</Authority>
    <CaBundle>{ca}</CaBundle>
  </Deployment>
  <ProviderConfiguration Name="pushed">
    <ProviderClass>imap</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{imap}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{user}</EmailUser>
    <EmailPassword Env="TEST_MAIL_PASSWORD"/>
    <EmailAddress>{user}</EmailAddress>
    <PollingPeriod>60000</PollingPeriod>
    <Push>idle</Push>
  </ProviderConfiguration>
</Configuration>
"""


def latencies(
    dovecot: Dovecot, user: str, arrived: Callable[[str], bool], count: int, start: int = 1
) -> list[float]:
    """APPEND ``count`` messages one after the other; seconds until each is an activity."""
    found = []
    for n in range(start, start + count):
        dovecot.append(user, message(n))
        appended = time.monotonic()
        assert wait_for(lambda n=n: arrived(f"message {n}"), 70, 0.05), f"message {n} missing"
        found.append(time.monotonic() - appended)
    return found


@pytest.fixture
def standalone(
    tmp_path: Path, dovecot: Dovecot, simulator: SimulatorServer
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    user = dovecot.new_user()
    config = tmp_path / "router.xml"
    config.write_text(CONFIG.format(
        db=tmp_path / "state.db", crm_url=simulator.org_url, tenant=TENANT, client_id=CLIENT_ID,
        authority=simulator.authority, ca=simulator.ca_path, imap=dovecot.ports["imap"],
        user=user,
    ))  # fmt: skip
    env = {
        **os.environ,
        "TEST_CRM_SECRET": CLIENT_SECRET,
        "TEST_MAIL_PASSWORD": PASSWORD,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("ROUTER_STATE_URL", None)
    log = tmp_path / "router.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        yield proc, log, user
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_run_turns_an_append_into_an_activity_within_seconds_with_a_60s_polling_period(
    dovecot: Dovecot,
    simulator: SimulatorServer,
    standalone: tuple[subprocess.Popen[bytes], Path, str],
) -> None:
    proc, log, user = standalone
    # Given `email-router run` holding IDLE on a mailbox polled every 60 s
    assert wait_for(lambda: "IMAP IDLE on" in log.read_text(), 30, 0.1), log.read_text()

    def arrived(subject: str) -> bool:
        return any(e["subject"] == subject for e in simulator.emails())

    # When three messages are appended one after the other
    found = latencies(dovecot, user, arrived, 3)

    # Then each became an activity within seconds: only push explains it
    assert max(found) < BOUND, (found, log.read_text()[-3000:])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    print(f"run + push: APPEND -> activity {[round(s, 2) for s in found]} s")


class PushedWorld(ClusterWorld):
    """The Celery end-to-end world with ``<Push>idle</Push>`` on every incoming instance."""

    def _block(self, inst: Instance) -> str:
        block = super()._block(inst)
        if inst.outgoing_port is not None:
            return block
        return block.replace("</PollingPeriod>", "</PollingPeriod>\n    <Push>idle</Push>")


def watch_process(procs: CeleryProcs) -> Proc:
    """``email-router watch`` with the world's environment, as one of the test's processes."""
    log = procs.workdir / "watch.log"
    env = {**os.environ, **procs.env, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "watch"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    proc = Proc("watch", popen, log)
    procs.procs.append(proc)
    return proc


def test_watch_sends_the_poll_task_on_new_mail_and_nothing_else_polls(
    tmp_path: Path, dovecot: Dovecot, private_redis: PrivateRedis, celery_procs: CeleryProcs
) -> None:
    # Given a Celery worker, no beat, and `email-router watch` on a mailbox polled every 60 s
    base = private_redis.url.rsplit("/", 1)[0]
    world = PushedWorld(tmp_path, dovecot, f"{base}/0", f"{base}/1", celery_procs, poll_ms=60_000)
    try:
        (inst,) = world.add_mailboxes(1, 0)
        world.write_config()
        celery_procs.worker("w1", queues="incoming,crm")
        watch = watch_process(celery_procs)
        celery_procs.wait_log(watch, "IMAP IDLE on", 30)

        # When messages are appended
        found: list[float] = []
        for n in range(1, 4):
            dovecot.append(inst.user, message(n))
            appended = time.monotonic()
            assert wait_for(lambda n=n: world.activities() >= n, 70, 0.05), celery_procs.logs()
            found.append(time.monotonic() - appended)

        # Then each became an activity within seconds, through pushed poll tasks only
        assert max(found) < BOUND, (found, celery_procs.logs())
        assert world.activities() == 3
        celery_procs.stop(watch)
        assert watch.popen.returncode == 0, watch.tail()
        print(f"watch + celery: APPEND -> activity {[round(s, 2) for s in found]} s")
    finally:
        world.crm.close()
