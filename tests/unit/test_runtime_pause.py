"""router.runtime.pause: one pause rule, applied alike by Celery tasks and `email-router run`.

Every error class of ``router.errors`` goes through both runtimes' real code paths: a Celery task
(``workers.tasks.run_for``) and a scheduler slot (``router.runtime.schedule``). Both must pause on
exactly the classes whose action is "stop" - the ones :func:`router.runtime.pause.pauses` names.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from concurrent.futures import wait
from pathlib import Path

import pytest

from router import errors
from router.configcheck import load_config
from router.context import Context
from router.models import Direction
from router.runtime import cycle
from router.runtime.pause import STOP_MARK, Pause, pauses
from router.runtime.schedule import Scheduler
from router.state.base import InstanceStats
from router.state.memory import MemoryStore
from tests.unit.test_standalone import FakeClock, config_xml, instance_xml
from tests.unit.test_tasks import World
from workers import tasks

ERROR_CLASSES = sorted(
    (
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.RouterError)
    ),
    key=lambda c: c.__name__,
)


def celery_pauses(exc: errors.RouterError, world: World) -> bool:
    """Whether a Celery task that failed with ``exc`` leaves the instance's next task idle."""
    ran: list[str] = []

    def failing(_ctx: Context, _name: str) -> tasks.Summary:
        raise exc

    def recording(_ctx: Context, name: str) -> tasks.Summary:
        ran.append(name)
        return {}

    with contextlib.suppress(errors.RouterError):  # "retry" and "crash" errors are raised
        tasks.run_for("t", "box", Direction.INCOMING, failing)
    tasks.run_for("t", "box", Direction.INCOMING, recording)
    return not ran


def standalone_pauses(
    exc: errors.RouterError, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> bool:
    """Whether a scheduler slot whose cycle failed with ``exc`` is left out of the next round."""
    calls: list[str] = []

    def failing(_ctx: Context, cfg: object) -> object:
        calls.append("run")
        raise exc

    monkeypatch.setattr(cycle, "run_cycle", failing)
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml("box")))
    clock = FakeClock()
    scheduler = Scheduler(path, MemoryStore(), load_config(path), clock=clock, shutdown_grace=5)
    try:
        for _ in range(2):  # the first cycle, then one polling period later
            scheduler.tick()
            wait([s.future for s in scheduler.slots.values() if s.future], timeout=10)
            clock.now += 1.0
        scheduler.tick()
        return len(calls) == 1 and scheduler.slots["box"].paused is not None
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_both_runtimes_pause_on_exactly_the_errors_whose_action_is_stop(
    cls: type[errors.RouterError], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an error of this class, and the one rule's verdict on it
    exc = cls("refused")
    expected = errors.action_of(exc) == "stop"
    assert pauses(exc) is expected
    # Then a Celery task and a standalone slot both pause on it, or both carry on
    assert celery_pauses(exc, World(tmp_path, monkeypatch)) is expected
    assert standalone_pauses(exc, tmp_path, monkeypatch) is expected


def test_only_errors_pause_nothing_else() -> None:
    assert not pauses(None)
    assert not pauses(KeyError("a bug"))
    assert Pause.after(None, 1.0) is None
    assert Pause.after(errors.CrmUnavailable("429"), 1.0) is None


def test_a_pause_says_why_and_since_when() -> None:
    pause = Pause.after(errors.ProviderAuthError("LOGIN refused"), 42.0)
    assert pause == Pause("ProviderAuthError: LOGIN refused", 42.0)


def test_a_pause_is_lifted_by_a_configuration_that_appeared_after_it() -> None:
    pause = Pause("CrmAuthError: token refused", since=100.0)
    assert not pause.lifted(config_since=99.0)
    assert pause.lifted(config_since=100.0)  # applied in the same scheduling round
    assert pause.lifted(config_since=130.0)


def test_a_shared_pause_is_also_lifted_by_a_later_success_or_after_the_longest_pause() -> None:
    pause = Pause("CrmAuthError: token refused", since=100.0)
    assert not pause.lifted(config_since=0.0, succeeded_at=90.0, now=150.0, longest=600.0)
    assert pause.lifted(config_since=0.0, succeeded_at=101.0, now=150.0, longest=600.0)
    assert pause.lifted(config_since=0.0, now=701.0, longest=600.0)


def test_a_recorded_pause_is_read_back_from_the_counters_every_worker_shares() -> None:
    store = MemoryStore()
    Pause("ProviderAuthError: LOGIN refused", time.time()).record(store, "box")
    stats = store.get_stats("box")
    assert stats.last_error == f"{STOP_MARK}ProviderAuthError: LOGIN refused"
    recorded = Pause.recorded(stats)
    assert recorded is not None and recorded.reason == "ProviderAuthError: LOGIN refused"
    assert recorded.since == stats.last_error_at
    # an ordinary error in the counters is no pause
    assert (
        Pause.recorded(InstanceStats(last_error="ProviderUnavailable: x", last_error_at=1.0))
        is None
    )
