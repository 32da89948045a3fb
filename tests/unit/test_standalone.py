"""The single-process scheduler (``email-router run``) with fakes: fast, same process.

Most tests replace the cycle itself (``cycle.run_cycle``) with a recorder and drive the
scheduler with a fake clock, one ``tick()`` at a time; the last ones run real cycles of the memory
provider into a MemoryCrm through ``run()``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from pathlib import Path

import pytest

from router.config import Configuration, ProviderConfiguration
from router.configcheck import load_config
from router.context import Context
from router.crm.factory import MEMORY_CRMS
from router.errors import ProviderAuthError, ProviderUnavailable
from router.models import LedgerState
from router.providers import memory as memprov
from router.runtime import cycle
from router.runtime.periods import HOUSEKEEPING_PERIOD
from router.runtime.schedule import Scheduler
from router.runtime.summary import progress_line
from router.state.memory import MemoryStore
from tests.unit.test_incoming_cycle import make_message


# -- helpers --------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def instance_xml(name: str, *, period: int = 1000, enabled: bool = True, box: str = "") -> str:
    return f"""
  <ProviderConfiguration Name="{name}">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>crm</Deployment>
    <EmailAddress>{box or name}@example.com</EmailAddress>
    <PollingPeriod>{period}</PollingPeriod>
    <Enabled>{"true" if enabled else "false"}</Enabled>
  </ProviderConfiguration>"""


def config_xml(*instances: str, threads: int = 10, crm: str = "crm", refresh: int = 1000) -> str:
    return f"""<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreads>{threads}</MaxThreads>
    <MaxThreadExecution>5000</MaxThreadExecution>
    <SchedulingPeriod>50</SchedulingPeriod>
    <ConfigRefreshPeriod>{refresh}</ConfigRefreshPeriod>
    <StateStore>memory://</StateStore>
  </SystemConfiguration>
  <Deployment Name="crm">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://{crm}.example</CrmServerUrl>
  </Deployment>{"".join(instances)}
</Configuration>
"""


class Recorder:
    """Stands in for ``run_cycle``: counts calls, tracks concurrency, can block or raise."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.max_running: Counter[str] = Counter()
        self.max_total = 0
        self.gate: dict[str, threading.Event] = {}
        self.errors: dict[str, Exception] = {}
        self.sleep = 0.0
        self._lock = threading.Lock()

    def __call__(self, ctx: Context, cfg: ProviderConfiguration) -> object:
        name = cfg.name
        with self._lock:
            self.calls[name] += 1
            self.running[name] += 1
            self.max_running[name] = max(self.max_running[name], self.running[name])
            self.max_total = max(self.max_total, sum(self.running.values()))
        try:
            if name in self.gate:
                assert self.gate[name].wait(10)
            time.sleep(self.sleep)
            if name in self.errors:
                raise self.errors[name]
            return None
        finally:
            with self._lock:
                self.running[name] -= 1


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(cycle, "run_cycle", rec)
    return rec


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(xml: str, clock: Callable[[], float] = time.monotonic) -> Scheduler:
        path = tmp_path / "router.xml"
        path.write_text(xml)
        config = load_config(path)
        runtime = Scheduler(path, MemoryStore(), config, clock=clock, shutdown_grace=5)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.shutdown()


def settle(runtime: Scheduler) -> None:
    """Wait until every cycle started so far has returned."""
    futures = [s.future for s in runtime.slots.values() if s.future is not None]
    wait(futures, timeout=10)


def advance(runtime: Scheduler, clock: FakeClock, seconds: float, step: float) -> None:
    for _ in range(round(seconds / step)):
        clock.now += step
        runtime.tick()
        settle(runtime)


# -- scheduling -----------------------------------------------------------------------------------
def test_each_instance_runs_at_its_own_polling_period(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    # Given a fast (1 s) and a slow (3 s) instance
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("fast"), instance_xml("slow", period=3000)), clock)
    # When 6 seconds pass in half-second scheduling steps
    rt.tick()
    settle(rt)
    advance(rt, clock, 6.0, 0.5)
    # Then each ran at t=0 and then once per period
    assert recorder.calls == {"fast": 7, "slow": 3}


def test_disabled_instances_never_run(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("on"), instance_xml("off", enabled=False)), clock)
    rt.tick()
    advance(rt, clock, 3.0, 0.5)
    assert recorder.calls["off"] == 0
    assert recorder.calls["on"] == 4


def test_a_running_instance_is_not_started_again_until_its_cycle_returns(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    # Given an instance whose cycle blocks
    clock = FakeClock()
    recorder.gate["box"] = threading.Event()
    rt = make_runtime(config_xml(instance_xml("box", period=100)), clock)
    # When many polling periods pass while it is still running
    for _ in range(20):
        clock.now += 0.5
        rt.tick()
    # Then it was started once only
    assert recorder.calls["box"] == 1
    # And once it returns, the next tick starts it again
    recorder.gate["box"].set()
    settle(rt)
    clock.now += 0.5
    rt.tick()
    settle(rt)
    assert recorder.calls["box"] == 2
    assert recorder.max_running["box"] == 1


def test_max_threads_bounds_how_many_instances_run_at_once(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    clock = FakeClock()
    gate = threading.Event()
    names = [f"i{n}" for n in range(5)]
    recorder.gate.update({n: gate for n in names})
    rt = make_runtime(config_xml(*(instance_xml(n) for n in names), threads=2), clock)
    rt.tick()
    clock.now += 2
    rt.tick()
    assert sum(recorder.calls.values()) == 2
    gate.set()
    settle(rt)
    advance(rt, clock, 1.0, 0.5)
    assert set(recorder.calls) == set(names)
    assert recorder.max_total == 2


def test_real_time_run_never_overlaps_cycles_of_one_instance(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    # Cycles (0.15 s) longer than the polling period (0.1 s), three instances, real threads
    recorder.sleep = 0.15
    rt = make_runtime(config_xml(*(instance_xml(f"r{n}", period=100) for n in range(3))))
    assert rt.run(duration=1.0) == 0
    assert all(recorder.calls[f"r{n}"] >= 3 for n in range(3))
    assert max(recorder.max_running.values()) == 1
    assert recorder.max_total > 1  # the instances did run side by side


# -- errors ---------------------------------------------------------------------------------------
def test_a_failing_instance_is_recorded_and_the_others_keep_running(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    clock = FakeClock()
    recorder.errors["bad"] = ProviderUnavailable("imap.example: connection refused")
    rt = make_runtime(config_xml(instance_xml("bad"), instance_xml("good")), clock)
    rt.tick()
    settle(rt)
    advance(rt, clock, 2.0, 1.0)
    # a retryable error does not pause: it is tried again every period
    assert recorder.calls == {"bad": 3, "good": 3}
    stats = rt.store.get_stats("bad")
    assert stats.last_error is not None and "connection refused" in stats.last_error
    assert rt.store.get_stats("good").last_error is None


def test_a_crash_in_a_cycle_is_logged_and_recorded(
    recorder: Recorder,
    make_runtime: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    recorder.errors["buggy"] = KeyError("oops")
    rt = make_runtime(config_xml(instance_xml("buggy")), clock)
    with caplog.at_level(logging.ERROR):
        rt.tick()
        settle(rt)
        advance(rt, clock, 1.0, 1.0)
    assert recorder.calls["buggy"] == 2
    assert "KeyError" in (rt.store.get_stats("buggy").last_error or "")
    assert "cycle crashed" in caplog.text


def test_a_stop_error_pauses_the_instance_until_its_configuration_changes(
    recorder: Recorder,
    make_runtime: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an instance whose credentials are refused
    clock = FakeClock()
    recorder.errors["locked"] = ProviderAuthError("imap.example: LOGIN refused")
    rt = make_runtime(config_xml(instance_xml("locked"), instance_xml("fine")), clock)
    with caplog.at_level(logging.ERROR):
        rt.tick()
        settle(rt)
        advance(rt, clock, 5.0, 1.0)
    # Then it ran once and stays paused, while the other instance goes on
    assert recorder.calls == {"locked": 1, "fine": 6}
    assert rt.slots["locked"].paused is not None
    assert "locked: paused until its configuration changes" in caplog.text
    # When its configuration changes (the password was fixed)
    del recorder.errors["locked"]
    rt.config_path.write_text(config_xml(instance_xml("locked", period=2000), instance_xml("fine")))
    clock.now += 1.0
    rt.tick()
    settle(rt)
    # Then it runs again
    assert rt.slots["locked"].paused is None
    assert recorder.calls["locked"] == 2


def test_an_unchanged_configuration_keeps_a_paused_instance_paused(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    clock = FakeClock()
    recorder.errors["locked"] = ProviderAuthError("refused")
    rt = make_runtime(config_xml(instance_xml("locked"), instance_xml("other")), clock)
    rt.tick()
    settle(rt)
    # another instance changes; this one does not
    rt.config_path.write_text(config_xml(instance_xml("locked"), instance_xml("other", period=500)))
    advance(rt, clock, 3.0, 1.0)
    assert recorder.calls["locked"] == 1


# -- configuration reload -------------------------------------------------------------------------
def test_reload_adds_and_removes_instances_without_a_restart(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("old"), instance_xml("kept")), clock)
    rt.tick()
    settle(rt)
    rt.config_path.write_text(config_xml(instance_xml("kept"), instance_xml("new")))
    advance(rt, clock, 3.0, 1.0)  # the refresh period is 1 s
    assert set(rt.slots) == {"kept", "new"}
    assert recorder.calls["old"] == 1
    assert recorder.calls["new"] >= 2
    assert recorder.calls["kept"] == 4


def test_an_instance_removed_while_running_finishes_and_is_not_started_again(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    clock = FakeClock()
    recorder.gate["going"] = threading.Event()
    rt = make_runtime(config_xml(instance_xml("going"), instance_xml("staying")), clock)
    rt.tick()
    rt.config_path.write_text(config_xml(instance_xml("staying")))
    clock.now += 1.0
    rt.tick()
    assert rt.slots["going"].removed
    recorder.gate["going"].set()
    advance(rt, clock, 2.0, 1.0)
    assert "going" not in rt.slots
    assert recorder.calls["going"] == 1


def test_a_broken_configuration_file_keeps_the_running_one_and_says_where(
    recorder: Recorder,
    make_runtime: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("box")), clock)
    rt.tick()
    settle(rt)
    broken = config_xml(instance_xml("box")).replace("<PollingPeriod>1000", "<PollingPeriod>x")
    rt.config_path.write_text(broken)
    with caplog.at_level(logging.ERROR):
        advance(rt, clock, 2.0, 1.0)
    assert recorder.calls["box"] == 3  # still scheduled with the old configuration
    assert f"{rt.config_path}:" in caplog.text
    assert "PollingPeriod" in caplog.text


# -- progress output ------------------------------------------------------------------------------
def test_progress_line_lists_only_what_a_cycle_did() -> None:
    from router.report import CycleReport

    idle = CycleReport("box", listed=3, known=3, duration=0.1)
    busy = CycleReport("box", listed=2, staged=2, delivered=2, duration=0.25)
    assert progress_line(idle, 0.1) is None
    assert progress_line(busy, 0.25) == "box: staged 2, delivered 2 (0.25s)"


# -- real cycles ----------------------------------------------------------------------------------
def test_run_delivers_the_mail_of_every_instance_once(
    make_runtime: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    # Given two memory mailboxes with mail and a memory CRM
    tag = uuid.uuid4().hex[:8]
    boxes = {f"a{tag}": 3, f"b{tag}": 2}
    for box, count in boxes.items():
        for n in range(count):
            memprov.mailbox(f"{box}@example.com").append(make_message(n))
    MEMORY_CRMS.pop("crm", None)
    xml = config_xml(*(instance_xml(box, period=200) for box in boxes))
    rt = make_runtime(xml)
    # When the runtime runs for a second (about five polls per instance)
    with caplog.at_level(logging.INFO):
        rt.run(duration=1.0)
    # Then every message became exactly one activity, and each was post-processed
    crm = MEMORY_CRMS["crm"]
    assert len(crm.activities) == 5  # type: ignore[attr-defined]
    for box, count in boxes.items():
        assert rt.store.count_entries(box) == {LedgerState.DONE: count}
        assert rt.store.get_stats(box).processed == count
    assert f"a{tag}: staged 3, delivered 3" in caplog.text
    assert rt.store.get_lease(f"a{tag}") is None


def test_progress_line_of_a_send_cycle_counts_sent_and_skipped_emails() -> None:
    from router.outgoing import SendReport

    assert progress_line(SendReport("relay", pending=4), 0.1) is None
    assert progress_line(SendReport("relay", pending=4, sent=3, skipped=1), 0.5) == (
        "relay: sent 3, skipped 1 (0.50s)"
    )


def test_leases_left_by_a_dead_process_of_this_host_are_released_at_start() -> None:
    import os
    import socket
    import subprocess
    import sys

    from router.service import release_dead_leases

    # Given leases held by a process that exited, by this process, and by another host
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host, store = socket.gethostname(), MemoryStore()
    store.acquire_lease("crashed", f"{host}:{dead.stdout.strip()}:7", 600)
    store.acquire_lease("crashed#deliver", f"{host}:{dead.stdout.strip()}:8", 600)
    store.acquire_lease("alive", f"{host}:{os.getppid()}:1", 600)
    store.acquire_lease("remote", f"other-{host}:{dead.stdout.strip()}:1", 600)
    # When the runtime starts
    for name in ("crashed", "alive", "remote"):
        release_dead_leases(store, name)
    # Then only the dead process's leases are gone
    assert store.get_lease("crashed") is None
    assert store.get_lease("crashed#deliver") is None
    assert store.get_lease("alive") is not None
    assert store.get_lease("remote") is not None


def test_a_cycle_longer_than_max_thread_execution_is_reported_once(
    recorder: Recorder,
    make_runtime: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a cycle that hangs past MaxThreadExecution (5 s in config_xml)
    clock = FakeClock()
    recorder.gate["stuck"] = threading.Event()
    rt = make_runtime(config_xml(instance_xml("stuck")), clock)
    with caplog.at_level(logging.WARNING):
        rt.tick()
        for _ in range(10):
            clock.now += 1.0
            rt.tick()
    recorder.gate["stuck"].set()
    # Then the overrun is logged once, and the instance was not started a second time
    assert caplog.text.count("stuck: cycle running for more than MaxThreadExecution") == 1
    assert recorder.calls["stuck"] == 1


class ClosableCrm:
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("crm_changes", [False, True])
def test_reload_keeps_the_crm_adapter_of_an_unchanged_deployment_and_closes_a_changed_one(
    recorder: Recorder, make_runtime: Callable[..., Scheduler], crm_changes: bool
) -> None:
    # Given a runtime whose Deployment "crm" has an adapter (with its token and connections)
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("box")), clock)
    adapter = ClosableCrm()
    rt.slots["box"].ctx._crms["crm"] = adapter  # type: ignore[assignment]
    # When the file changes (the instance only, or the Deployment too)
    crm = "crm2" if crm_changes else "crm"
    rt.config_path.write_text(config_xml(instance_xml("box", period=2000), crm=crm))
    clock.now += 1.0
    rt.tick()
    settle(rt)
    clock.now += 1.0
    rt.tick()
    # Then an unchanged Deployment keeps its adapter; a changed one gets a new one, the old closed
    kept = any(crm is adapter for crm in rt.slots["box"].ctx.crm_adapters())
    assert kept is not crm_changes
    assert adapter.closed is crm_changes


def test_the_runtime_purges_finished_ledger_entries_every_housekeeping_period(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    # Given finished and in-flight ledger entries written long ago
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("box")), clock)
    store = rt.store
    assert isinstance(store, MemoryStore)
    store._clock = lambda: 0.0  # entries dated 1970: far past LedgerRetention
    store.create_entry("box", "old-done", LedgerState.DONE)
    store.create_entry("box", "old-staged", LedgerState.STAGED)
    store._clock = time.time
    # When less than a housekeeping period passes, nothing is purged; after it, finished ones go
    rt.tick()
    settle(rt)
    advance(rt, clock, HOUSEKEEPING_PERIOD - 10, 10)
    assert store.get_entry("box", "old-done") is not None
    advance(rt, clock, 20, 10)
    assert store.get_entry("box", "old-done") is None
    assert store.get_entry("box", "old-staged") is not None


def test_a_follower_gets_the_configuration_now_and_after_each_reload_even_if_one_fails(
    recorder: Recorder, make_runtime: Callable[..., Scheduler]
) -> None:
    # Given a runtime followed by a listener that fails on every reload, and one that records
    clock = FakeClock()
    rt = make_runtime(config_xml(instance_xml("first")), clock)
    seen: list[list[str]] = []
    calls: list[Configuration] = []

    def breaks_on_reloads(config: Configuration) -> None:
        calls.append(config)
        if len(calls) > 1:
            raise RuntimeError("listener broke")

    rt.follow(breaks_on_reloads)
    rt.follow(lambda config: seen.append([p.name for p in config.providers]))
    assert seen == [["first"]]

    # When the file changes twice
    rt.config_path.write_text(config_xml(instance_xml("first"), instance_xml("second")))
    advance(rt, clock, 2.0, 1.0)
    rt.config_path.write_text(config_xml(instance_xml("second")))
    advance(rt, clock, 2.0, 1.0)

    # Then the recording follower saw each version, the failing one notwithstanding
    assert seen == [["first"], ["first", "second"], ["second"]]
    assert len(calls) == 3 and set(rt.slots) == {"second"}
