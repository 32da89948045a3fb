"""Mailboxes defined in the CRM, run by the Celery cluster (workers + beat as subprocesses).

The same world as tests/integration/test_crm_mailboxes.py - mailbox records in the Dataverse
simulator, one IMAP profile on the private Dovecot - but beat schedules the loaded instances and
the workers run them, each process reading the CRM's list on its own: every mailbox's mail lands
once for its own user, and after some mailboxes are unapproved and as many added, beat and the
workers follow within one ``ConfigUpdatePeriod`` + one polling period (+ slack). Beat's
dispatcher is observed where it schedules: the due times in Redis (``DueTimes.due_at``), which
hold exactly the instances beat sends polls for. ``ER_CRM_MAILBOXES_CELERY`` sets the size.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.mailboxes import instance_name
from router.models import Direction
from router.state.redis import DueTimes, RedisStore
from tests.servers.celery_procs import CeleryProcs, wait_until
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.redis_server import PrivateRedis
from tests.servers.simulator import CLIENT_SECRET, SimulatorServer
from tests.support.crm_mailboxes import add_mailboxes, incoming, owners_by_address, write_config

pytestmark = [pytest.mark.slow, pytest.mark.dovecot, pytest.mark.timeout(300)]

MAILBOXES = int(os.environ.get("ER_CRM_MAILBOXES_CELERY", "12"))
CHURN = max(2, MAILBOXES // 15)
UPDATE_MS = 2000
# four pool processes: a poll expires after its period, so a period shorter than one round of
# every mailbox's poll only discards polls (60 mailboxes at 700 ms did, on this 2-core machine)
POLL_MS = max(700, MAILBOXES * 40)


@pytest.fixture
def due(private_redis: PrivateRedis, celery_procs: CeleryProcs) -> Iterator[DueTimes]:
    """The due times beat's dispatcher keeps in the cluster's state store (its key prefix)."""
    prefix = celery_procs.env["ROUTER_KEY_PREFIX"]
    store = RedisStore.from_url(state_url(private_redis), prefix=prefix)
    yield store.due_times()
    store.close()


def test_the_cluster_runs_the_crms_mailboxes_and_follows_approval_changes(
    tmp_path: Path,
    dovecot: Dovecot,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
    due: DueTimes,
) -> None:
    # Given approved mailbox records, each with one message waiting
    addresses = [dovecot.new_user() for _ in range(MAILBOXES + CHURN)]
    first, later = addresses[:MAILBOXES], addresses[MAILBOXES:]
    ids = dict(zip(first, add_mailboxes(simulator, first), strict=True))
    for n, address in enumerate(addresses):
        dovecot.append(address, message(n))
    passwords = {a: PASSWORD for a in addresses}
    config = write_config(tmp_path, simulator, dovecot, passwords, UPDATE_MS, POLL_MS)
    base = private_redis.url.rsplit("/", 1)[0]
    celery_procs.env.update(
        ROUTER_CONFIG=str(config), ROUTER_BROKER_URL=f"{base}/0",
        ROUTER_STATE_URL=state_url(private_redis), TEST_CRM_SECRET=CLIENT_SECRET,
    )  # fmt: skip
    # When two workers and beat run
    celery_procs.worker("w1")
    celery_procs.worker("w2")
    celery_procs.beat()
    wait_until(lambda: len(incoming(simulator)) >= MAILBOXES, 90, "first round", celery_procs)
    # Then each mailbox's message is one activity, owned by the mailbox's user
    owners = owners_by_address(simulator)
    for email in incoming(simulator):
        assert email["ownerid"] == owners[addresses[int(email["subject"].split()[-1])]]
    # and beat's dispatcher has exactly the approved ones scheduled
    assert all(scheduled(due, a) for a in first)
    assert not any(scheduled(due, a) for a in later)
    # When some are unapproved and as many added in the CRM
    changed = time.monotonic()
    gone = first[:CHURN]
    for address in gone:
        simulator.change_row("mailboxes", ids[address], emailrouteraccessapproval=2)
    add_mailboxes(simulator, later)
    total = MAILBOXES + CHURN
    limit = (UPDATE_MS + POLL_MS) / 1000 + 10
    wait_until(lambda: len(incoming(simulator)) >= total, limit, "the new mailboxes", celery_procs)
    followed = time.monotonic() - changed
    # Then beat stops scheduling the unapproved ones (within the same limit from the change)
    # and schedules the added ones: mail arriving now for the unapproved stays where it is
    wait_until(
        lambda: not any(scheduled(due, a) for a in gone),
        max(limit - (time.monotonic() - changed), 1.0),
        "beat to stop scheduling the unapproved mailboxes", celery_procs,
    )  # fmt: skip
    assert all(scheduled(due, a) for a in first[CHURN:] + later)
    time.sleep(2 * POLL_MS / 1000)  # polls sent before beat's change may still run
    for n, address in enumerate(gone):
        dovecot.append(address, message(10_000 + n))
    time.sleep(4 * POLL_MS / 1000)
    final = incoming(simulator)
    assert len(final) == total
    assert set(Counter(e["messageid"] for e in final).values()) == {1}
    owners = owners_by_address(simulator)
    for email in final:
        assert email["ownerid"] == owners[addresses[int(email["subject"].split()[-1])]]
    print(f"\nCelery: {MAILBOXES} CRM mailboxes; {CHURN} unapproved + {CHURN} added followed "
          f"in {followed:.1f}s (limit {limit:.1f}s)")  # fmt: skip


def state_url(redis: PrivateRedis) -> str:
    """The cluster's state store: database 1 of the private Redis (the broker has 0)."""
    return redis.url.rsplit("/", 1)[0] + "/1"


def scheduled(due: DueTimes, address: str) -> bool:
    """Whether beat's dispatcher has the loaded incoming mailbox of ``address`` scheduled."""
    return due.due_at(instance_name(address, Direction.INCOMING)) is not None
