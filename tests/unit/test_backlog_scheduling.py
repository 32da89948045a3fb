"""A poll that stopped at MaxMessageCount runs again at once, round-robin with the due instances.

``router.runtime.cycle.more_waiting`` is the rule; ``email-router run`` (the scheduler) and the
Celery poll task both apply it. Fakes only: the scheduler is driven one tick at a time with a
fake clock, and a real ``run()`` drains memory mailboxes into a memory CRM.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from router.config import ProviderConfiguration, Settings
from router.configcheck import load_config
from router.context import Context, context_for
from router.crm.factory import MEMORY_CRMS
from router.models import Direction, LedgerState
from router.providers import memory as memprov
from router.report import CycleOutcome
from router.runtime import cycle
from router.runtime.cycle import more_waiting
from router.runtime.schedule import Scheduler
from router.state.base import InstancePeek
from router.state.memory import MemoryStore
from tests.unit.test_incoming_cycle import make_message
from tests.unit.test_standalone import FakeClock, settle
from workers import tasks

LIMIT = 10


@dataclass
class Report(CycleOutcome):
    """The fields of a poll report that ``more_waiting`` reads."""

    instance: str
    listed: int = 0
    staged: int = 0
    skipped: str | None = None
    error: str | None = None
    after: InstancePeek | None = None  # what the poll read back at its end (tasks._poll)


def instance_xml(name: str, *, period: int = 60_000) -> str:
    return f"""
  <ProviderConfiguration Name="{name}">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
    <EmailAddress>{name}@example.com</EmailAddress>
    <PollingPeriod>{period}</PollingPeriod>
    <MaxMessageCount>{LIMIT}</MaxMessageCount>
  </ProviderConfiguration>"""


def config_xml(*instances: str, threads: int = 1) -> str:
    return f"""<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreads>{threads}</MaxThreads>
    <SchedulingPeriod>1000</SchedulingPeriod>
    <StateStore>memory://</StateStore>
  </SystemConfiguration>
  <Deployment Name="crm">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.example</CrmServerUrl>
  </Deployment>{"".join(instances)}
</Configuration>
"""


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(xml: str, clock: Callable[[], float] = time.monotonic) -> Scheduler:
        path = tmp_path / "router.xml"
        path.write_text(xml)
        runtime = Scheduler(path, MemoryStore(), load_config(path), clock=clock, shutdown_grace=5)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.shutdown()


def cfg_of(tmp_path: Path, xml: str) -> ProviderConfiguration:
    path = tmp_path / "one.xml"
    path.write_text(config_xml(xml))
    return load_config(path).providers[0]


# -- the rule -------------------------------------------------------------------------------------
def test_a_poll_that_listed_max_message_count_leaves_more_waiting(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, instance_xml("box"))
    assert more_waiting(cfg, Report("box", listed=LIMIT))
    assert not more_waiting(cfg, Report("box", listed=LIMIT - 1))


def test_a_skipped_failed_or_outgoing_cycle_leaves_nothing_waiting(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, instance_xml("box"))
    assert not more_waiting(cfg, Report("box", listed=LIMIT, skipped="lease held by x"))
    assert not more_waiting(cfg, Report("box", listed=LIMIT, error="ProviderUnavailable"))
    assert not more_waiting(cfg, None)
    out = cfg.model_copy(update={"direction": Direction.OUTGOING})
    assert not more_waiting(out, Report("box", listed=LIMIT))


# -- email-router run -----------------------------------------------------------------------------
class Backlogs:
    """Stands in for ``run_cycle``: each instance has ``left`` chunks of a full MaxMessageCount."""

    def __init__(self, left: dict[str, int]) -> None:
        self.left = left
        self.order: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, ctx: Context, cfg: ProviderConfiguration) -> Report:
        with self._lock:
            self.order.append(cfg.name)
            full = self.left.get(cfg.name, 0) > 0
            self.left[cfg.name] = self.left.get(cfg.name, 0) - 1
        return Report(cfg.name, listed=LIMIT if full else 0)


def test_a_backlog_runs_again_at_once_taking_turns_with_the_other_due_instances(
    make_runtime: Callable[..., Scheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one thread, a mailbox with a backlog of 3 full chunks and two idle ones, all due
    backlogs = Backlogs({"big": 3})
    monkeypatch.setattr(cycle, "run_cycle", backlogs)
    clock = FakeClock()
    rt = make_runtime(
        config_xml(instance_xml("big"), instance_xml("idle1"), instance_xml("idle2")), clock
    )
    # When the scheduler ticks, with the clock far from the next PollingPeriod (60 s)
    for _ in range(8):
        clock.now += 0.01
        rt.tick()
        settle(rt)
    # Then the backlog was polled again at once, chunk after chunk, and never ahead of an
    # instance that was due before it
    assert backlogs.order[:3] == ["big", "idle1", "idle2"]
    assert backlogs.order.count("big") == 4  # 3 full chunks, then the poll that found less
    assert backlogs.order.count("idle1") == backlogs.order.count("idle2") == 1


def test_run_drains_a_backlog_without_waiting_for_the_polling_period(
    make_runtime: Callable[..., Scheduler],
) -> None:
    # Given a memory mailbox with 3.5 chunks of mail and a PollingPeriod of a minute
    box = f"big{uuid.uuid4().hex[:8]}"
    for n in range(35):
        memprov.mailbox(f"{box}@example.com").append(make_message(n))
    MEMORY_CRMS.pop("crm", None)
    rt = make_runtime(config_xml(instance_xml(box)))
    # When the runtime runs for a second
    rt.run(duration=1.0)
    # Then every message was delivered (one poll per period would have taken 4 minutes)
    assert rt.store.count_entries(box) == {LedgerState.DONE: 35}


# -- Celery ---------------------------------------------------------------------------------------
def test_the_celery_poll_task_queues_the_next_poll_at_once_after_a_full_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml("big")))
    ctx = context_for(load_config(path), Settings())
    queued: list[tuple[str, Any]] = []

    def record(name: str) -> Callable[..., None]:
        return lambda args, **options: queued.append((name, args))

    monkeypatch.setattr(tasks.poll, "apply_async", record("poll"))
    monkeypatch.setattr(tasks.deliver, "apply_async", record("deliver"))
    monkeypatch.setattr(tasks, "observe_cycle", lambda *_a: None)
    monkeypatch.setattr(tasks, "observe_lag", lambda *_a: None)
    monkeypatch.setattr(tasks, "_has_staged", lambda *_a: False)
    for listed, expect in ((LIMIT, [("poll", ("big",))]), (LIMIT - 1, [])):
        queued.clear()
        report = Report("big", listed=listed)
        monkeypatch.setattr(tasks.service, "poll_instance", lambda *_a, r=report, **_k: r)
        tasks._poll(ctx, "big")
        assert queued == expect
