"""Celery workers ride out Redis restarts: same processes, nothing lost, nothing twice.

Real Redis (broker and state, AOF ``fsync always``), Dovecot, beat and two prefork workers.
Redis is SIGKILLed and started again while mail arrives and polls and deliveries run; no
supervisor restarts anything here, so a worker that exits on a reconnect path fails the test
(see ``workers/consumer.py`` for the paths that used to end in "Unrecoverable error").

``E2E_REDIS_RESTARTS`` sets the number of restarts (default 3; the issue's goal is 5).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.models import LedgerState
from tests.servers.celery_procs import CeleryProcs, Proc, wait_until
from tests.servers.dovecot import Dovecot
from tests.servers.redis_server import PrivateRedis
from tests.support.celery_world import ClusterWorld

pytestmark = [pytest.mark.slow, pytest.mark.dovecot, pytest.mark.timeout(600)]

RESTARTS = int(os.environ.get("E2E_REDIS_RESTARTS", "3"))
MAILBOXES = 4
NEW_PER_RESTART = 15


@pytest.fixture
def world(
    tmp_path: Path,
    dovecot: Dovecot,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
) -> Iterator[ClusterWorld]:
    base = private_redis.url.rsplit("/", 1)[0]
    w = ClusterWorld(tmp_path, dovecot, f"{base}/0", f"{base}/1", celery_procs)
    w.poll_ms = 500
    # the default MaxThreadExecution (10 minutes), as deployed: with the world's 10 s, Celery's
    # soft time limit can fire on a pool process that finished while the worker was busy
    # reconnecting, and billiard's pool then fails to read that process's result
    w.lease_ms = 600_000
    yield w
    w.crm.close()


def restart(redis: PrivateRedis, down: float) -> None:
    """SIGKILL the server (no shutdown save: the AOF is what survives), start it again."""
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGKILL)
    redis.proc.wait(10)
    time.sleep(down)
    redis.start()


def pids(procs: list[Proc]) -> dict[str, int | None]:
    """Main pid of each process still running (None for one that exited)."""
    return {p.name: p.popen.pid if p.alive else None for p in procs}


def test_workers_survive_redis_restarts_under_load_with_the_same_processes(
    world: ClusterWorld, celery_procs: CeleryProcs, private_redis: PrivateRedis
) -> None:
    # Given two workers and beat draining four mailboxes
    mailboxes = world.add_mailboxes(MAILBOXES, 20)
    world.write_config()
    procs = [celery_procs.worker("w1"), celery_procs.worker("w2"), celery_procs.beat()]
    before = pids(procs)
    expected = MAILBOXES * 20
    wait_until(lambda: world.activities() > 0, 60, "the first activity", celery_procs)
    # When Redis is killed and restarted RESTARTS times while new mail keeps arriving
    for n in range(RESTARTS):
        for inst in mailboxes:
            world.fill(inst, NEW_PER_RESTART, start=1000 * (n + 1))
        expected += NEW_PER_RESTART * MAILBOXES
        time.sleep(1.0)  # polls and deliveries in flight when the server goes away
        restart(private_redis, down=1.0 + n % 3)  # 1-3 s down, as a restart or failover
    started = time.monotonic()
    wait_until(lambda: world.activities() >= expected, 180, "the flow to drain", celery_procs)
    drained_in = time.monotonic() - started
    time.sleep(3 * world.poll_ms / 1000)
    # Then the very same worker and beat processes still run
    assert pids(procs) == before, celery_procs.logs()
    logs = "".join(p.log_text() for p in procs)
    assert "Unrecoverable error" not in logs
    # And every message became exactly one activity
    subjects = world.crm.subjects()
    assert len(subjects) == len(set(subjects)) == expected
    for inst in mailboxes:
        assert world.ledger(inst.name).get(LedgerState.STAGED, 0) == 0
    # (a delivery cut off by the lost connection is asked again and answered "duplicate" by
    # Message-ID: no second activity, as the subjects show)
    print(
        f"\n{RESTARTS} Redis restarts: {expected} messages, drained {drained_in:.1f}s after; "
        f"CRM duplicate answers: {world.crm.duplicate_calls()}"
    )
