"""beat_schedule.build_schedule and the ConfigScheduler that follows the configuration file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from beat_schedule import build_schedule
from router.config import Configuration, ProviderConfiguration, Settings
from router.models import Direction
from router.runtime.periods import HOUSEKEEPING_PERIOD
from workers.app import create_app
from workers.scheduler import ConfigScheduler


def instance(name: str, direction: str = "Incoming", period: int = 60000, enabled: bool = True):
    return ProviderConfiguration(
        name=name,
        provider_class="memory" if direction == "Incoming" else "memory-out",
        direction=Direction(direction),
        polling_period=period,
        enabled=enabled,
    )


def test_each_enabled_incoming_instance_is_polled_every_polling_period() -> None:
    config = Configuration(providers=(instance("a", period=30000), instance("b", period=1500)))
    schedule = build_schedule(config)
    assert schedule["poll:a"]["task"] == "workers.tasks.poll"
    assert schedule["poll:a"]["args"] == ("a",)
    assert schedule["poll:a"]["schedule"] == 30.0
    assert schedule["poll:b"]["schedule"] == 1.5


def test_polls_expire_after_one_period_so_they_never_pile_up() -> None:
    schedule = build_schedule(Configuration(providers=(instance("a", period=2000),)))
    assert schedule["poll:a"]["options"] == {"expires": 2.0, "queue": "incoming"}


def test_outgoing_instances_get_send_entries_on_the_outgoing_queue() -> None:
    schedule = build_schedule(Configuration(providers=(instance("out", "Outgoing", 5000),)))
    entry = schedule["send:out"]
    assert entry["task"] == "workers.tasks.send"
    assert entry["options"] == {"expires": 5.0, "queue": "outgoing"}


def test_disabled_instances_are_not_scheduled() -> None:
    config = Configuration(providers=(instance("on"), instance("off", enabled=False)))
    assert set(build_schedule(config)) == {"poll:on", "housekeeping"}


def test_housekeeping_runs_every_few_minutes_on_the_crm_queue() -> None:
    entry = build_schedule(Configuration())["housekeeping"]
    assert entry["task"] == "workers.tasks.housekeeping"
    assert entry["schedule"] == HOUSEKEEPING_PERIOD
    assert entry["options"]["queue"] == "crm"


# -- ConfigScheduler ------------------------------------------------------------------------------
def xml(*instances: tuple[str, int], refresh: int = 100) -> str:
    blocks = "".join(
        f"""<ProviderConfiguration Name="{name}"><ProviderClass>memory</ProviderClass>
        <Direction>Incoming</Direction><Deployment>crm</Deployment>
        <PollingPeriod>{period}</PollingPeriod>
        </ProviderConfiguration>"""
        for name, period in instances
    )
    return f"""<Configuration><SystemConfiguration>
      <ConfigRefreshPeriod>{refresh}</ConfigRefreshPeriod><StateStore>memory://</StateStore>
      </SystemConfiguration>
      <Deployment Name="crm"><Adapter>memory</Adapter><CrmServerUrl>https://crm.example</CrmServerUrl>
      </Deployment>{blocks}</Configuration>"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(xml(("a", 1000)))
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    return path


def scheduler_for(path: Path) -> ConfigScheduler:
    app = create_app(Settings(config=path, broker_url="memory://"))
    return ConfigScheduler(app=app)


def rewrite(path: Path, text: str) -> None:
    """Write a new version and wait out the refresh period (100 ms in these files)."""
    path.write_text(text)
    time.sleep(0.15)


def test_scheduler_starts_with_the_entries_of_the_file(config_file: Path) -> None:
    scheduler = scheduler_for(config_file)
    assert set(scheduler.schedule) == {"poll:a", "housekeeping"}
    assert scheduler.schedule["poll:a"].options["expires"] == 1.0


def test_scheduler_picks_up_an_instance_added_to_the_file(config_file: Path) -> None:
    scheduler = scheduler_for(config_file)
    rewrite(config_file, xml(("a", 1000), ("b", 700)))
    assert scheduler.refresh() is True
    assert set(scheduler.schedule) == {"poll:a", "poll:b", "housekeeping"}
    assert scheduler.schedule["poll:b"].args == ("b",)


def test_scheduler_stops_scheduling_a_removed_instance(config_file: Path) -> None:
    config_file.write_text(xml(("a", 1000), ("b", 1000)))
    scheduler = scheduler_for(config_file)
    rewrite(config_file, xml(("b", 1000)))
    scheduler.refresh()
    assert set(scheduler.schedule) == {"poll:b", "housekeeping"}


def test_scheduler_applies_a_changed_polling_period(config_file: Path) -> None:
    scheduler = scheduler_for(config_file)
    rewrite(config_file, xml(("a", 4000)))
    scheduler.refresh()
    entry = scheduler.schedule["poll:a"]
    assert entry.schedule.run_every.total_seconds() == 4.0
    assert entry.options["expires"] == 4.0


def test_scheduler_keeps_its_schedule_when_the_file_stops_validating(config_file: Path) -> None:
    scheduler = scheduler_for(config_file)
    rewrite(config_file, "<Configuration><Broken")
    assert scheduler.refresh() is False
    assert set(scheduler.schedule) == {"poll:a", "housekeeping"}


def test_scheduler_does_not_look_at_the_file_before_the_refresh_period(config_file: Path) -> None:
    config_file.write_text(xml(("a", 1000), refresh=60000))
    scheduler = scheduler_for(config_file)
    config_file.write_text(xml(("a", 1000), ("b", 1000), refresh=60000))
    assert scheduler.refresh() is False
    assert "poll:b" not in scheduler.schedule


def test_scheduler_sleeps_no_longer_than_the_refresh_period(config_file: Path) -> None:
    config_file.write_text(xml(("a", 600000), refresh=2000))
    scheduler = scheduler_for(config_file)
    assert scheduler.max_interval == 2.0
