"""An idle poll's cost on the real Redis: how many round trips the Celery poll task makes.

Every poll of every idle mailbox pays them, so at 100,000 mailboxes they are the worker's work
(README, "Scale"). A round trip is one packed send on a redis-py connection: a pipeline sends all
its commands in one, a script is one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from router.config import Configuration, Deployment, ProviderConfiguration
from router.context import Context
from router.crm.memory import MemoryCrm
from router.models import Direction, LedgerState
from router.providers import memory as memprov
from router.state.redis import RedisStore
from tests.contract.state_helpers import delete_prefix
from workers import tasks


def make_message(n: int) -> bytes:
    return (
        f"From: sender{n}@example.com\r\nTo: sales@example.com\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}.{uuid.uuid4().hex}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


class Counter:
    """Counts the packed sends of every redis-py connection while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sends: list[bytes] = []
        original = redis.Connection.send_packed_command

        def counting(conn: redis.Connection, command: Any, check_health: bool = True) -> None:
            parts = command if isinstance(command, list) else [command]
            self.sends.append(b"".join(bytes(p) for p in parts)[:60])
            original(conn, command, check_health)

        monkeypatch.setattr(redis.Connection, "send_packed_command", counting)


@pytest.fixture
def rig(redis_url: str, redis_prefix: str) -> Iterator[tuple[Context, memprov.Mailbox]]:
    address = f"box-{uuid.uuid4().hex[:8]}@example.com"
    fields = {
        "name": "box",
        "provider_class": "memory",
        "direction": Direction.INCOMING,
        "deployment": "crm",
        "email_address": address,
    }
    dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
    config = Configuration(
        deployments=(dep,), providers=(ProviderConfiguration.model_validate(fields),)
    )
    store = RedisStore.from_url(redis_url, prefix=redis_prefix)
    ctx = Context(config, store)
    ctx._crms["crm"] = MemoryCrm()
    try:
        yield ctx, memprov.mailbox(address)
    finally:
        store.close()
        delete_prefix(redis_url, store.keys)


def test_an_idle_poll_task_makes_two_redis_round_trips(
    rig: tuple[Context, memprov.Mailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an instance polled once already (its scripts are loaded, its state exists)
    ctx, _ = rig
    monkeypatch.setattr(tasks.deliver, "apply_async", lambda *a, **k: None)
    tasks._poll(ctx, "box")
    # When it is polled again with nothing new
    counter = Counter(monkeypatch)
    tasks._poll(ctx, "box")
    # Then the poll took the lease and read its state in one round trip, and released, recorded
    # and read back the staged leftovers in another
    assert len(counter.sends) == 2, counter.sends


def test_a_poll_that_staged_mail_queues_its_delivery_from_what_it_read_back(
    rig: tuple[Context, memprov.Mailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a mailbox with two new messages
    ctx, box = rig
    box.append(make_message(1))
    box.append(make_message(2))
    queued: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tasks.deliver, "apply_async", lambda args, **k: queued.append(args))
    # When the poll task stages them (the Celery runtime delivers in a separate task)
    tasks._poll(ctx, "box")
    # Then it queued the delivery, knowing from its last step that mail is staged
    assert queued == [("box",)]
    assert ctx.store.count_entries("box") == {LedgerState.STAGED: 2}
    # And an idle poll after that still queues it while the mail waits, and not once delivered
    tasks._poll(ctx, "box")
    assert queued == [("box",), ("box",)]
    tasks._deliver(ctx, "box", None)
    tasks._poll(ctx, "box")
    assert len(queued) == 2
