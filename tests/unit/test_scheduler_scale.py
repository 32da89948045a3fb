"""ConfigScheduler at scale: instances added together are spread over their period, and a tick
does not walk the whole schedule (bench_scheduling.py measures both with 10,000 instances)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from router.config import Settings
from workers.app import create_app
from workers.scheduler import ConfigScheduler


def xml(count: int, period_ms: int) -> str:
    blocks = "".join(
        f"""<ProviderConfiguration Name="i{n}"><ProviderClass>memory</ProviderClass>
        <Direction>Incoming</Direction><Deployment>crm</Deployment>
        <PollingPeriod>{period_ms}</PollingPeriod></ProviderConfiguration>"""
        for n in range(count)
    )
    return f"""<Configuration><SystemConfiguration><StateStore>memory://</StateStore>
      </SystemConfiguration><Deployment Name="crm"><Adapter>memory</Adapter>
      <CrmServerUrl>https://crm.example</CrmServerUrl></Deployment>{blocks}</Configuration>"""


def scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> ConfigScheduler:
    path = tmp_path / "router.xml"
    path.write_text(xml(count, 60_000))
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    return ConfigScheduler(app=create_app(Settings(config=path, broker_url="memory://")))


def first_due_in(s: ConfigScheduler) -> list[float]:
    """Seconds until each poll entry is first due."""
    return [s.schedule[n].is_due()[1] for n in s.schedule if n.startswith("poll:")]


def test_instances_loaded_together_are_first_due_spread_over_one_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    due = sorted(first_due_in(scheduler(tmp_path, monkeypatch, 200)))
    assert all(0 <= d <= 60 for d in due)
    # Given 200 instances with a 60 s period, when beat starts, then no second holds a burst:
    # the first polls are spread over the whole period instead of all at t + 60 s.
    assert due[0] < 10 and due[-1] > 50
    per_slot = [sum(1 for d in due if k * 6 <= d < (k + 1) * 6) for k in range(10)]
    assert max(per_slot) < 50


def test_an_instance_keeps_its_phase_when_beat_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = scheduler(tmp_path, monkeypatch, 5)
    second = scheduler(tmp_path, monkeypatch, 5)
    for a, b in zip(first_due_in(first), first_due_in(second), strict=True):
        assert abs(a - b) < 1.0


def test_a_tick_does_not_compare_every_schedule_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = scheduler(tmp_path, monkeypatch, 2000)
    sent: list[Any] = []
    s.apply_async = lambda entry, **_: sent.append(entry.name)  # type: ignore[method-assign]
    for entry in s.schedule.values():  # everything due now
        entry.last_run_at = entry.last_run_at.replace(year=2000)
    s._heap = None
    started = time.perf_counter()
    for _ in range(2000):
        s.tick()
    # Celery's own check walks all 2,000 entries per tick (seconds here); ours does not.
    assert len(sent) >= 1900
    assert time.perf_counter() - started < 5.0
