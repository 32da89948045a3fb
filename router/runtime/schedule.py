"""The scheduler of ``email-router run``: which instance runs when, in a thread pool.

Use :class:`Scheduler` to run every instance of one configuration file in this process (the
process entry, :mod:`router.runtime.standalone`, builds one and handles the signals):

* every ``SchedulingPeriod`` ms it picks the instances that are due (each at its own
  ``PollingPeriod``) and hands them to a ``ThreadPoolExecutor(MaxThreads)``, which runs
  :func:`router.runtime.cycle.execute`;
* a poll that stopped at ``MaxMessageCount`` (:func:`router.runtime.cycle.more_waiting`) makes
  its instance due again at once and wakes the scheduler: it runs behind the instances that were
  already due (the oldest due time first), so a backlog drains at full speed and starves no one;
* an instance never runs twice at once in this process, and the state-store lease (TTL =
  ``MaxThreadExecution``) keeps other processes off it; a run longer than that is logged;
* the file is followed by the shared :class:`~router.runtime.watch.ConfigWatcher`: added, removed
  and changed instances take effect without a restart, a broken file keeps the last good one;
* an error is logged, recorded in the store and never stops the other instances; an error whose
  action is "stop" pauses that instance until its configuration changes
  (:mod:`router.runtime.pause`);
* :meth:`Scheduler.poll_now` (IMAP IDLE push, :mod:`router.push`) makes an instance due at
  once and wakes the loop;
* housekeeping runs every :data:`~router.runtime.periods.HOUSEKEEPING_PERIOD`;
* a beat thread (:mod:`router.runtime.heartbeat`) keeps this process's heartbeat fresh, so
  another process may free its leases within seconds if it dies, never while it lives;
* :meth:`Scheduler.stop` ends :meth:`Scheduler.run`, which then waits (bounded) for the runs in
  flight and releases the leases of those it abandons.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

from router import metrics, service
from router.config import Configuration, Deployment, ProviderConfiguration, Settings
from router.context import Context
from router.errors import RouterError
from router.runtime.contexts import Contexts
from router.runtime.cycle import RunResult, execute
from router.runtime.heartbeat import HeartbeatThread
from router.runtime.pause import Pause
from router.runtime.periods import HOUSEKEEPING_PERIOD
from router.runtime.watch import ConfigWatcher
from router.state.base import StateStore

log = logging.getLogger(__name__)

#: Seconds ``run`` waits for in-flight cycles after a stop request, at most.
DEFAULT_SHUTDOWN_GRACE = 30.0


@dataclass
class Slot:
    """Scheduling state of one instance in this process."""

    cfg: ProviderConfiguration
    deployment: Deployment | None
    ctx: Context
    next_due: float
    future: Future[RunResult] | None = None
    started: float = 0.0
    overran: bool = False
    paused: Pause | None = None
    removed: bool = False
    #: generation of the context the running cycle started with (see Contexts.close_retired)
    run_generation: int = 0
    #: when (scheduler clock) this instance's configuration last changed: what lifts a pause
    config_since: float = 0.0

    @property
    def running(self) -> bool:
        """True while a cycle of this instance runs."""
        return self.future is not None


@dataclass
class Scheduler:
    """Schedules every enabled instance of a configuration file in this process."""

    config_path: Path
    store: StateStore
    config: Configuration
    settings: Settings = field(default_factory=Settings)
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    clock: Callable[[], float] = time.monotonic
    executor_factory: Callable[[int], ThreadPoolExecutor] = field(
        default=lambda n: ThreadPoolExecutor(n, thread_name_prefix="router")
    )
    slots: dict[str, Slot] = field(default_factory=dict)
    #: instances whose cycle was still running when :meth:`shutdown` gave up waiting
    stuck: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and poll_now(): tick before the period ends
        self._hurry = threading.Event()
        self._threads = self.config.system.max_threads
        self._executor = self.executor_factory(self._threads)
        # the store records the CRM mailbox lists read, for status, the console and poll NAME
        self._watcher = ConfigWatcher(
            self.config_path, self.config, clock=self.clock, store=self.store
        )
        self._contexts = Contexts(self.store, self.settings)
        self._next_housekeeping = self.clock() + HOUSEKEEPING_PERIOD
        self._heartbeat = HeartbeatThread.for_store(self.store, lambda: self.config.system)
        self._listeners: list[Callable[[Configuration], None]] = []
        self._announce = False
        self._apply(self.config)
        self._announce = True

    # -- life cycle -----------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> int:
        """Schedule until :meth:`stop` (or for ``duration`` seconds), then shut down; return 0."""
        deadline = None if duration is None else self.clock() + duration
        self._log_start()
        self._heartbeat.beat_once()  # before any lease: a lease of ours is never of "no one"
        self._heartbeat.start()
        for name in list(self.slots):
            service.release_dead_leases(self.store, name)
        try:
            while not self._stop.is_set():
                self.tick()
                if deadline is not None and self.clock() >= deadline:
                    break
                self._wake.wait(self.config.system.scheduling_period / 1000)
                self._wake.clear()
        finally:
            self.shutdown()
        return 0

    def stop(self) -> None:
        """Ask :meth:`run` to return; a second call stops waiting for in-flight cycles."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()
        self._wake.set()

    def poll_now(self, instance: str) -> None:
        """Make ``instance`` due now and wake the scheduler (IMAP IDLE push, any thread).

        A cycle of it already running is followed by another one as soon as it returns, so
        mail that arrived after that cycle listed the folder is not left for the next period.
        An unknown name is ignored (the instance left the configuration).
        """
        slot = self.slots.get(instance)
        if slot is None:
            return
        slot.next_due = min(slot.next_due, self.clock())  # one attribute write: thread-safe
        self._wake.set()

    def _log_start(self) -> None:
        enabled = [s for s in self.slots.values() if s.cfg.enabled]
        log.info(
            "email-router run: %d instances (%d enabled), MaxThreads %d, state %s",
            len(self.slots),
            len(enabled),
            self._threads,
            type(self.store).__name__,
        )

    def shutdown(self) -> None:
        """Stop scheduling, wait for in-flight cycles (bounded), release leases left behind."""
        self._stop.set()
        running = self._wait_for_running()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if not running:  # else a cycle still holds an adapter; the process is about to exit
            self._contexts.close_all()
        self.stuck = sorted(s.cfg.name for s in running)
        for name in self.stuck:
            log.warning("%s: still running at shutdown; releasing its lease", name)
            service.release_own_leases(self.store, name)
        self._heartbeat.stop()
        self._watcher.close()  # the CRM connections that read <LoadMailboxes>' records
        log.info("email-router run stopped")

    def _wait_for_running(self) -> list[Slot]:
        """Wait up to the grace period (or a second stop) for the running cycles; the rest."""
        running = {s.future: s for s in self.slots.values() if s.future is not None}
        if running:
            log.info("waiting up to %.0fs for %d running cycles", self.shutdown_grace, len(running))
        deadline = time.monotonic() + self.shutdown_grace
        while running and time.monotonic() < deadline and not self._hurry.is_set():
            wait_futures(list(running), timeout=0.2)
            self._collect()
            running = {f: s for f, s in running.items() if not f.done()}
        return list(running.values())

    # -- the scheduler --------------------------------------------------------------------------
    def tick(self) -> None:
        """One scheduling decision: collect finished runs, reload, start what is due."""
        now = self.clock()
        self._collect(now)
        self.reload()
        self._check_overruns(now)
        self._start_due(now)
        if now >= self._next_housekeeping and self._contexts.current is not None:
            self._next_housekeeping = now + HOUSEKEEPING_PERIOD
            self._housekeep(self._contexts.current)

    def _housekeep(self, ctx: Context) -> None:
        """Purge finished ledger entries past LedgerRetention; a failure only waits a period."""
        try:
            report = service.housekeeping(ctx)
        except RouterError as exc:
            log.warning("housekeeping failed, trying again later: %s", exc)
            return
        if report.total:
            log.info("housekeeping: purged %d finished ledger entries", report.total)

    def _start_due(self, now: float) -> None:
        free = self.config.system.max_threads - sum(s.running for s in self.slots.values())
        due = [s for s in self.slots.values() if self._is_due(s, now)]
        # oldest due time first; on a tie the one that started longest ago (round-robin)
        for slot in sorted(due, key=lambda s: (s.next_due, s.started))[: max(0, free)]:
            slot.started, slot.overran = now, False
            slot.next_due = now + slot.cfg.polling_seconds
            slot.run_generation = self._contexts.generation
            slot.future = self._executor.submit(execute, slot.ctx, slot.cfg)
            slot.future.add_done_callback(self._wake_if_more_waiting)

    def _wake_if_more_waiting(self, future: Future[RunResult]) -> None:
        """Runs in the worker thread: a backlog need not wait for the next tick."""
        if not future.cancelled() and future.result().more_waiting:
            self._wake.set()

    @staticmethod
    def _is_due(slot: Slot, now: float) -> bool:
        return (
            slot.cfg.enabled
            and not slot.removed
            and not slot.running
            and slot.paused is None
            and now >= slot.next_due
        )

    def _collect(self, now: float | None = None) -> None:
        """Take in finished runs: pause on a "stop" error, forget removed instances.

        A poll that left mail waiting makes its instance due as of ``now`` (the tick's time:
        it starts in this tick, behind the instances due before).
        """
        for name, slot in list(self.slots.items()):
            if slot.future is None or not slot.future.done():
                continue
            result = slot.future.result()
            slot.future = None
            if slot.removed:
                del self.slots[name]
                metrics.forget_instance(name)
            else:
                self._pause_if_stopped(slot, result)
                if result.more_waiting:
                    slot.next_due = min(slot.next_due, self.clock() if now is None else now)
        self._close_retired()

    def _pause_if_stopped(self, slot: Slot, result: RunResult) -> None:
        pause = Pause.after(result.error, self.clock())
        if pause is not None:
            slot.paused = pause
            log.error("%s: paused until its configuration changes: %s", slot.cfg.name, pause.reason)

    def _check_overruns(self, now: float) -> None:
        limit = service.lease_ttl(self.config.system)
        for slot in self.slots.values():
            if slot.running and not slot.overran and now - slot.started > limit:
                slot.overran = True
                log.warning(
                    "%s: cycle running for more than MaxThreadExecution (%.0fs): its lease has "
                    "expired and another process may take the instance over; this process "
                    "starts it again only after the cycle returns",
                    slot.cfg.name,
                    limit,
                )

    def _close_retired(self) -> None:
        running = [s.run_generation for s in self.slots.values() if s.running]
        self._contexts.close_retired(min(running, default=None))

    # -- configuration --------------------------------------------------------------------------
    def reload(self) -> bool:
        """Apply the file's new version, if the watcher has one; True when it was applied."""
        config = self._watcher.poll()
        if config is None:
            return False
        if config.system.state_store != self.config.system.state_store:
            log.warning("StateStore changed in the configuration: takes effect after a restart")
        self._apply(config)
        log.info("configuration reloaded: %d instances", len(config.providers))
        for listener in self._listeners:
            try:
                listener(config)
            except Exception:  # a listener's failure must not stop the scheduling
                log.exception("a configuration listener failed on the reload")
        return True

    def follow(self, listener: Callable[[Configuration], None]) -> None:
        """Call ``listener`` with the configuration now and after every reload that applies
        (push watchers use it to watch what the file says now)."""
        self._listeners.append(listener)
        listener(self.config)

    def _apply(self, config: Configuration) -> None:
        """Make the slots match ``config`` (new context: Deployment changes reach the CRM)."""
        self.config = config
        self._resize(config.system.max_threads)
        ctx = self._contexts.renew(config)
        now, wanted = self.clock(), {p.name: p for p in config.providers}
        for name in [n for n in self.slots if n not in wanted]:
            self._remove(name)
        for name, cfg in wanted.items():
            self._update(name, cfg, _deployment(config, cfg), ctx, now)

    def _remove(self, name: str) -> None:
        slot = self.slots[name]
        if not slot.removed:
            log.info("%s: removed from the configuration", name)
        if slot.running:
            slot.removed = True  # forgotten when its cycle returns (_collect)
        else:
            del self.slots[name]
            metrics.forget_instance(name)

    def _update(
        self,
        name: str,
        cfg: ProviderConfiguration,
        dep: Deployment | None,
        ctx: Context,
        now: float,
    ) -> None:
        slot = self.slots.get(name)
        if slot is None:
            self.slots[name] = Slot(cfg, dep, ctx, next_due=now, config_since=now)
            if self._announce:
                log.info("%s: added", name)
            return
        slot.removed = False  # re-added while its last cycle was still running
        if slot.cfg != cfg or slot.deployment != dep:
            slot.cfg, slot.deployment, slot.config_since = cfg, dep, now
            slot.next_due = min(slot.next_due, now)
            self._resume_if_lifted(slot)
        slot.ctx = ctx

    @staticmethod
    def _resume_if_lifted(slot: Slot) -> None:
        if slot.paused is not None and slot.paused.lifted(config_since=slot.config_since):
            log.info("%s: configuration changed, resuming", slot.cfg.name)
            slot.paused = None

    def _resize(self, threads: int) -> None:
        if threads > self._threads:
            # the old pool finishes what it runs; new cycles go to the larger one
            self._executor.shutdown(wait=False)
            self._executor = self.executor_factory(threads)
        self._threads = max(self._threads, threads)


def _deployment(config: Configuration, cfg: ProviderConfiguration) -> Deployment | None:
    try:
        return config.deployment(cfg.deployment) if cfg.deployment else None
    except KeyError:
        return None
