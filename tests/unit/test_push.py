"""IMAP IDLE push without a server: timing rules, triggers, configuration, the scheduler's call.

The watchers' behaviour against a real IMAP server is in tests/integration/test_push_idle.py;
here are the rules around it: the backoff, which instances are watched, how a trigger is
loaded, ``<Push>`` in the file, and ``Scheduler.poll_now`` (the in-process trigger of
``email-router run``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.cli import main as cli_main
from router.config import Configuration, ProviderConfiguration
from router.configcheck import load_config
from router.context import Context
from router.errors import ConfigError
from router.models import Direction
from router.push import PushTiming, PushWatchers, Trigger, load_trigger, wants_push
from router.runtime import cycle
from router.runtime.schedule import Scheduler
from router.state.memory import MemoryStore

CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <SchedulingPeriod>{scheduling}</SchedulingPeriod>
    <StateStore>memory://</StateStore>
  </SystemConfiguration>
  <Deployment Name="crm">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="box">
    <ProviderClass>{provider}</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>box@example.com</EmailUser>
    <EmailPassword>pw</EmailPassword>
    <EmailAddress>box@example.com</EmailAddress>
    <PollingPeriod>60000</PollingPeriod>
    {push}
  </ProviderConfiguration>
</Configuration>
"""


def write(
    tmp_path: Path, *, push: str = "", provider: str = "memory", scheduling: int = 50
) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(CONFIG.format(push=push, provider=provider, scheduling=scheduling))
    return path


class Polls:
    """Stands in for ``run_cycle``: counts the cycles of each instance."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.ran = threading.Event()

    def __call__(self, ctx: Context, cfg: ProviderConfiguration) -> object:
        self.calls[cfg.name] += 1
        self.ran.set()
        return None


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> Polls:
    rec = Polls()
    monkeypatch.setattr(cycle, "run_cycle", rec)
    return rec


@pytest.fixture
def schedulers() -> Iterator[list[Scheduler]]:
    made: list[Scheduler] = []
    yield made
    for runtime in made:
        runtime.shutdown()


def scheduler(made: list[Scheduler], path: Path, clock: Any = time.monotonic) -> Scheduler:
    runtime = Scheduler(path, MemoryStore(), load_config(path), clock=clock, shutdown_grace=5)
    made.append(runtime)
    return runtime


def settle(runtime: Scheduler) -> None:
    for slot in runtime.slots.values():
        if slot.future is not None:
            slot.future.result(timeout=10)


# -- backoff ---------------------------------------------------------------------------------------
def test_the_reconnect_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    timing = PushTiming(backoff_min=1.0, backoff_max=30.0)
    rng = random.Random(7)
    for failures, full in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        delays = [timing.backoff(failures, rng) for _ in range(50)]
        assert all(full * 0.5 <= d <= full for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jittered: watchers restarted together spread out


def test_idle_is_renewed_before_the_29_minutes_of_rfc_2177_by_default() -> None:
    assert 60 < PushTiming().renew < 29 * 60


# -- which instances are watched ------------------------------------------------------------------
def test_only_enabled_incoming_instances_with_push_idle_are_watched(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, push="<Push>idle</Push>")).provider("box")
    assert wants_push(cfg)
    assert not wants_push(cfg.model_copy(update={"push": "none"}))
    assert not wants_push(cfg.model_copy(update={"enabled": False}))
    assert not wants_push(cfg.model_copy(update={"direction": Direction.OUTGOING}))


def test_push_is_none_unless_the_file_says_idle(tmp_path: Path) -> None:
    assert load_config(write(tmp_path)).provider("box").push == "none"
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, push="<Push>always</Push>"))
    assert any("<Push>" in p for p in raised.value.problems), raised.value.problems


class Noted:
    def __init__(self) -> None:
        self.names: list[str] = []

    def poll_now(self, instance: str) -> None:
        self.names.append(instance)


def test_a_pushed_instance_that_is_not_imap_is_polled_only_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given <Push>idle</Push> on a memory (not IMAP) instance
    caplog.set_level(logging.WARNING, logger="router.push")
    config = load_config(write(tmp_path, push="<Push>idle</Push>"))
    push = PushWatchers(Noted())
    # When the configuration is applied twice (a reload of the same file)
    push.apply(config)
    push.apply(config)
    # Then nothing is watched, and one line says why
    assert push.names == []
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("router.push")]
    assert len(lines) == 1 and "box" in lines[0] and "needs an IMAP provider" in lines[0]


def test_an_instance_without_push_starts_no_watcher(tmp_path: Path) -> None:
    push = PushWatchers(Noted())
    push.apply(load_config(write(tmp_path, provider="imap")))
    assert push.names == []
    push.apply(Configuration())
    push.close()


# -- triggers -------------------------------------------------------------------------------------
def test_the_celery_trigger_is_loaded_by_its_alias_and_sends_the_poll_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers import push as celery_push

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(celery_push.poll, "apply_async", lambda **kw: sent.append(kw))
    trigger = load_trigger("celery")
    assert isinstance(trigger, celery_push.CeleryTrigger)
    trigger.poll_now("box")
    assert sent == [{"args": ("box",), "expires": celery_push.PUSH_EXPIRES}]


class NotATrigger:
    pass


@pytest.mark.parametrize(
    "spec, says",
    [
        ("carrier-pigeon", "use celery or package.module:attribute"),
        ("no_such_module_xyz:Trigger", "cannot load"),
        ("tests.unit.test_push:Missing", "cannot load"),
        ("tests.unit.test_push:NotATrigger", "has no poll_now"),
    ],
)
def test_a_trigger_that_cannot_be_loaded_is_a_configuration_error(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_trigger(spec)


def test_watch_with_an_unknown_trigger_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, push="<Push>idle</Push>")
    code = cli_main(["watch", "--config", str(path), "--trigger", "carrier-pigeon"])
    assert code == 2
    assert "carrier-pigeon" in capsys.readouterr().err


def test_watch_refuses_a_renewal_period_past_29_minutes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, push="<Push>idle</Push>")
    with pytest.raises(SystemExit) as exited:
        cli_main(["watch", "-c", str(path), "--renew", "1800"])
    assert exited.value.code == 2
    assert "29 minutes" in capsys.readouterr().err


def test_watch_with_a_plugged_trigger_runs_for_its_duration_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, push="<Push>idle</Push>")
    started = time.monotonic()
    code = cli_main(
        ["watch", "-c", str(path), "--trigger", "tests.unit.test_push:Noted", "--duration", "0.2"]
    )
    assert code == 0
    assert time.monotonic() - started < 5


# -- the in-process trigger of `email-router run` --------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_poll_now_makes_an_instance_due_long_before_its_polling_period(
    tmp_path: Path, polls: Polls, schedulers: list[Scheduler]
) -> None:
    # Given an instance polled every 60 s that has just run
    clock = FakeClock()
    runtime = scheduler(schedulers, write(tmp_path), clock)
    assert isinstance(runtime, Trigger)
    runtime.tick()
    settle(runtime)
    clock.now += 1.0
    runtime.tick()
    settle(runtime)
    assert polls.calls == {"box": 1}
    # When push asks for a poll
    runtime.poll_now("box")
    runtime.tick()
    settle(runtime)
    # Then it runs at once, and its next scheduled poll is a period later again
    assert polls.calls == {"box": 2}
    clock.now += 30.0
    runtime.tick()
    settle(runtime)
    assert polls.calls == {"box": 2}


def test_poll_now_of_an_unknown_instance_is_ignored(
    tmp_path: Path, polls: Polls, schedulers: list[Scheduler]
) -> None:
    runtime = scheduler(schedulers, write(tmp_path))
    runtime.poll_now("gone")
    assert "gone" not in runtime.slots


def test_poll_now_wakes_the_run_loop_before_the_scheduling_period_ends(
    tmp_path: Path, polls: Polls, schedulers: list[Scheduler]
) -> None:
    # Given `run` with a 5 s SchedulingPeriod, after its first cycle
    runtime = scheduler(schedulers, write(tmp_path, scheduling=5000))
    loop = threading.Thread(target=runtime.run, daemon=True)
    loop.start()
    assert polls.ran.wait(5)
    time.sleep(0.2)  # the loop is asleep now
    polls.ran.clear()
    # When push asks for a poll
    asked = time.monotonic()
    runtime.poll_now("box")
    # Then the cycle starts well before the scheduling period would have ended
    assert polls.ran.wait(4), "poll_now did not wake the loop"
    assert time.monotonic() - asked < 1.0
    assert polls.calls == {"box": 2}
    runtime.stop()
    loop.join(10)
    assert not loop.is_alive()
