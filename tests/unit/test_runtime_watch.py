"""router.runtime.watch: the one configuration watcher of ``email-router run``, workers and beat.

The first tests drive a :class:`ConfigWatcher` with a fake clock; the last one shows the three
processes that follow the file - the standalone scheduler, a worker's context holder and beat -
seeing a new version at the same moment, because they all use it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from router.config import Configuration, Settings
from router.runtime.schedule import Scheduler
from router.runtime.watch import ConfigWatcher
from router.state.memory import MemoryStore
from tests.unit.test_standalone import FakeClock, config_xml, instance_xml
from workers.app import create_app
from workers.context import ContextHolder
from workers.scheduler import ConfigScheduler


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml("a"), refresh=1000))
    return path


def names(watcher: ConfigWatcher) -> list[str]:
    assert watcher.config is not None
    return [p.name for p in watcher.config.providers]


def test_a_new_version_is_reported_once_the_refresh_period_has_passed(path: Path) -> None:
    # Given a watcher that loaded the file
    clock = FakeClock()
    watcher = ConfigWatcher(path, clock=clock)
    watcher.load()
    # When the file changes
    path.write_text(config_xml(instance_xml("a"), instance_xml("b"), refresh=1000))
    # Then it is not looked at before ConfigRefreshPeriod (1 s) has passed
    clock.now += 0.5
    assert watcher.poll() is None
    clock.now += 0.6
    config = watcher.poll()
    assert config is not None and [p.name for p in config.providers] == ["a", "b"]
    assert names(watcher) == ["a", "b"]
    # And the same version is not reported twice
    clock.now += 2.0
    assert watcher.poll() is None


def test_a_broken_version_is_reported_once_and_the_last_good_one_kept(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    watcher = ConfigWatcher(path, clock=clock)
    watcher.load()
    broken = config_xml(instance_xml("a"), refresh=1000).replace("<PollingPeriod>1000", "<x>")
    path.write_text(broken)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            clock.now += 1.5
            assert watcher.poll() is None
    assert caplog.text.count("not reloaded, keeping the previous one") == 1
    assert f"{path}:" in caplog.text  # FILE:LINE of each problem
    assert names(watcher) == ["a"]
    # a fixed version is taken as soon as it is seen
    path.write_text(config_xml(instance_xml("a"), instance_xml("c"), refresh=1000))
    clock.now += 1.5
    assert watcher.poll() is not None and names(watcher) == ["a", "c"]


def test_the_version_in_use_is_known_by_its_modification_time(path: Path) -> None:
    clock = FakeClock()
    watcher = ConfigWatcher(path, clock=clock)
    assert watcher.loaded_mtime == 0.0
    watcher.load()
    assert watcher.loaded_mtime == path.stat().st_mtime_ns / 1e9
    time.sleep(0.01)
    path.write_text(config_xml(instance_xml("b"), refresh=1000))
    assert watcher.loaded_mtime < path.stat().st_mtime_ns / 1e9  # not loaded yet
    clock.now += 1.5
    watcher.poll()
    assert watcher.loaded_mtime == path.stat().st_mtime_ns / 1e9


def test_a_watcher_built_on_a_loaded_configuration_starts_from_that_version(path: Path) -> None:
    clock = FakeClock()
    first = ConfigWatcher(path, clock=clock)
    watcher = ConfigWatcher(path, first.load(), clock=clock)
    clock.now += 1.5
    assert watcher.poll() is None  # nothing new since it was loaded
    assert watcher.loaded_mtime > 0.0


def test_the_scheduler_a_worker_and_beat_see_a_new_version_at_the_same_refresh(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the three processes following one file (ConfigRefreshPeriod 100 ms)
    path.write_text(config_xml(instance_xml("a"), refresh=100))
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    settings = Settings(config=path, broker_url="memory://")
    holder = ContextHolder(settings)
    scheduler = Scheduler(path, MemoryStore(), holder_config(holder))
    beat = ConfigScheduler(app=create_app(settings))
    try:
        # When an instance is added to the file
        path.write_text(config_xml(instance_xml("a"), instance_xml("b"), refresh=100))
        # Then none of them looks before the refresh period, and all of them after it
        assert not scheduler.reload() and not beat.refresh()
        assert holder_config(holder).providers[-1].name == "a"
        time.sleep(0.15)
        assert scheduler.reload() and beat.refresh()
        assert "b" in scheduler.slots and "poll:b" in beat.schedule
        assert holder_config(holder).providers[-1].name == "b"
    finally:
        scheduler.shutdown()
        holder.close()


def holder_config(holder: ContextHolder) -> Configuration:
    with holder.use() as ctx:
        return ctx.config
