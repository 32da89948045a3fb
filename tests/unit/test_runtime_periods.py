"""router.runtime.periods: beat and ``email-router run`` run housekeeping at the one period."""

from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path

import pytest

from beat_schedule import build_schedule
from router import service
from router.config import Configuration
from router.configcheck import load_config
from router.context import Context
from router.housekeeping import HousekeepingReport
from router.runtime import cycle
from router.runtime.periods import HOUSEKEEPING_PERIOD
from router.runtime.schedule import Scheduler
from router.state.memory import MemoryStore
from tests.unit.test_standalone import FakeClock, config_xml, instance_xml


def test_beat_schedules_housekeeping_every_housekeeping_period() -> None:
    entry = build_schedule(Configuration())["housekeeping"]
    assert entry["schedule"] == HOUSEKEEPING_PERIOD
    assert entry["options"]["expires"] == HOUSEKEEPING_PERIOD


def test_the_standalone_scheduler_runs_housekeeping_every_housekeeping_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a scheduler whose cycles and housekeeping are counted
    runs: list[float] = []
    clock = FakeClock()

    def housekeeping(_ctx: Context) -> HousekeepingReport:
        runs.append(clock.now)
        return HousekeepingReport()

    monkeypatch.setattr(service, "housekeeping", housekeeping)
    monkeypatch.setattr(cycle, "run_cycle", lambda _ctx, _cfg: None)
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml("box")))
    scheduler = Scheduler(path, MemoryStore(), load_config(path), clock=clock)
    start = clock.now
    try:
        # When two and a half periods pass, one scheduling round every 10 s
        for _ in range(round(2.5 * HOUSEKEEPING_PERIOD / 10)):
            clock.now += 10
            scheduler.tick()
            wait([s.future for s in scheduler.slots.values() if s.future], timeout=10)
    finally:
        scheduler.shutdown()
    # Then housekeeping ran once per period
    assert runs == [start + HOUSEKEEPING_PERIOD, start + 2 * HOUSEKEEPING_PERIOD]
