"""The single-process runtime behind ``email-router run``: a scheduler and a thread pool.

Use :class:`StandaloneRuntime` to run every instance of one configuration file on one machine,
with no Redis and no Celery, like the original Email Router service:

* every ``SchedulingPeriod`` ms the scheduler picks the instances that are due (each at its own
  ``PollingPeriod``) and hands them to a ``ThreadPoolExecutor(MaxThreads)``: incoming instances
  run :func:`router.incoming.poll_instance` (with delivery), outgoing ones
  :func:`router.outgoing.send_cycle`;
* an instance never runs twice at once in this process, and the state-store lease (TTL =
  ``MaxThreadExecution``) keeps other processes off it; a run longer than that is logged;
* the file is re-read every ``ConfigRefreshPeriod`` ms: added, removed and changed instances take
  effect without a restart, and a broken file keeps the last good configuration running;
* an error is logged, recorded in the store and never stops the other instances; a
  :class:`~router.errors.StopError` (credentials, configuration) pauses that instance until its
  configuration changes;
* SIGTERM/SIGINT stop the scheduling, wait (bounded) for the runs in flight, release the leases
  and return; a second signal stops waiting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from router import metrics
from router.config import (
    Configuration,
    Deployment,
    ProviderConfiguration,
    Settings,
    load_config,
    load_settings,
)
from router.crm.base import CrmAdapter
from router.errors import ConfigError, RouterError, StopError
from router.logsetup import configure_logging, log_context
from router.memtune import limit_malloc_arenas
from router.models import Direction
from router.service import Context
from router.state.base import Lease, StateStore
from router.state.factory import open_store

log = logging.getLogger(__name__)

#: Seconds ``run`` waits for in-flight cycles after a stop request, at most.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Seconds between purges of finished ledger entries (as the Celery housekeeping task).
HOUSEKEEPING_PERIOD = 300.0
#: Report attributes that are not "something happened" counters.
_NOT_COUNTERS = frozenset({"duration", "instance", "error", "outcomes"})


# -- one cycle ------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one cycle of one instance ended with (made in the worker thread)."""

    name: str
    report: object | None = None
    error: BaseException | None = None
    duration: float = 0.0

    @property
    def stopped(self) -> bool:
        return isinstance(self.error, StopError)


def run_cycle(ctx: Context, cfg: ProviderConfiguration) -> object:
    """One poll (incoming, with delivery) or send (outgoing) cycle; returns its report."""
    if cfg.direction is Direction.INCOMING:
        from router.incoming import poll_instance

        return poll_instance(ctx, cfg.name, deliver=True)
    from router.outgoing import send_cycle

    return send_cycle(ctx, cfg.name)


def execute(ctx: Context, cfg: ProviderConfiguration) -> RunResult:
    """Run one cycle and turn every outcome into a :class:`RunResult` (never raises)."""
    with log_context(instance=cfg.name):
        return _execute(ctx, cfg)


def _execute(ctx: Context, cfg: ProviderConfiguration) -> RunResult:
    result, started = RunResult(cfg.name), time.monotonic()
    before = _last_error_at(ctx.store, cfg.name)
    try:
        result.report = run_cycle(ctx, cfg)
    except Exception as exc:  # one instance's failure must not stop the others
        result.error = exc
        _record_failure(ctx.store, cfg.name, exc, before)
    result.duration = time.monotonic() - started
    _observe(ctx, cfg, result)
    return result


def _last_error_at(store: StateStore, name: str) -> float | None:
    try:
        return store.get_stats(name).last_error_at
    except RouterError:
        return None


def _record_failure(store: StateStore, name: str, exc: Exception, before: float | None) -> None:
    """Record the error unless the cycle already did (poll_instance records what it raises)."""
    if isinstance(exc, RouterError):
        log.warning("%s: cycle failed: %s: %s", name, type(exc).__name__, exc)
    else:
        log.exception("%s: cycle crashed (a bug): %s", name, type(exc).__name__)
    try:
        if _last_error_at(store, name) == before:
            store.record_poll(name, error=f"{type(exc).__name__}: {exc}"[:500])
    except RouterError as store_exc:
        log.warning("%s: could not record the error: %s", name, store_exc)


def _observe(ctx: Context, cfg: ProviderConfiguration, result: RunResult) -> None:
    """Metrics and the progress line of a finished cycle."""
    if result.error is not None:
        metrics.record_error(cfg.name, result.error, result.duration)
    elif result.report is not None:
        metrics.record_cycle(result.report)
        line = progress_line(result.report, result.duration)
        if line:
            log.info("%s", line)
    if cfg.direction is Direction.INCOMING:
        # RouterError: the store is having trouble; the cycle's own error says so
        with suppress(RouterError):
            metrics.update_lag(ctx.store, cfg.name)


def progress_line(report: object, duration: float) -> str | None:
    """``name: staged 2, delivered 2 (0.12s)`` for a cycle that did something, else None."""
    counts = [(k, v) for k, v in _fields(report).items() if _is_count(k, v) and v]
    if not counts:
        return None
    name = getattr(report, "instance", "?")
    done = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in counts)
    return f"{name}: {done} ({duration:.2f}s)"


def _fields(report: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    return dict(vars(report)) if hasattr(report, "__dict__") else {}


def _is_count(key: str, value: object) -> bool:
    # "listed", "known" and "pending" only say what was looked at, not what was done
    return (
        key not in _NOT_COUNTERS
        and key not in ("listed", "known", "pending")
        and isinstance(value, int)
        and not isinstance(value, bool)
    )


# -- configuration watching -----------------------------------------------------------------------
class ConfigWatcher:
    """Re-reads the configuration file when its content changed; keeps the last good one."""

    def __init__(self, path: Path, config: Configuration) -> None:
        self.path = path
        self.config = config
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def poll(self) -> Configuration | None:
        """Return the new configuration when the file changed and is valid, else None."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return None
        self._digest = digest  # a broken file is reported once, not every refresh
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("configuration %s not reloaded, keeping the running one:", self.path)
            for problem in exc.problems or [str(exc)]:
                log.error("  %s", problem)
            return None
        except Exception as exc:  # whatever is wrong with the file, keep running
            log.error(
                "configuration %s not reloaded (%s), keeping the running one",
                self.path,
                type(exc).__name__,
            )
            return None
        self.config = config
        return config


# -- scheduling -----------------------------------------------------------------------------------
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
    paused: str | None = None
    removed: bool = False
    #: configuration generation the running cycle started with (see _close_retired)
    run_generation: int = 0

    @property
    def running(self) -> bool:
        return self.future is not None


def _deployment(config: Configuration, cfg: ProviderConfiguration) -> Deployment | None:
    try:
        return config.deployment(cfg.deployment) if cfg.deployment else None
    except KeyError:
        return None


@dataclass
class StandaloneRuntime:
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
    stuck: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._threads = self.config.system.max_threads
        self._executor = self.executor_factory(self._threads)
        self._watcher = ConfigWatcher(self.config_path, self.config)
        self._next_refresh = self.clock() + self.config.system.config_refresh_period / 1000
        self._next_housekeeping = self.clock() + HOUSEKEEPING_PERIOD
        self._announce = False
        self._generation = 0
        self._ctx: Context | None = None
        self._retired: list[tuple[int, CrmAdapter]] = []
        self._apply(self.config)
        self._announce = True

    # -- life cycle -----------------------------------------------------------------------------
    def run(self, duration: float | None = None, *, handle_signals: bool = True) -> int:
        """Schedule until stopped (signal, :meth:`stop` or ``duration`` seconds); return 0."""
        previous = self._install_signals() if handle_signals else {}
        deadline = None if duration is None else self.clock() + duration
        self._log_start()
        for name in list(self.slots):
            release_dead_leases(self.store, name)
        try:
            while not self._stop.is_set():
                self.tick()
                if deadline is not None and self.clock() >= deadline:
                    break
                self._stop.wait(self.config.system.scheduling_period / 1000)
        finally:
            self.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 0

    def stop(self) -> None:
        """Ask :meth:`run` to return; a second call stops waiting for in-flight cycles."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping the scheduler", signal.Signals(signum).name)
        self.stop()

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
        running = {s.future: s for s in self.slots.values() if s.future is not None}
        if running:
            log.info("waiting up to %.0fs for %d running cycles", self.shutdown_grace, len(running))
            deadline = time.monotonic() + self.shutdown_grace
            while running and time.monotonic() < deadline and not self._hurry.is_set():
                wait_futures(list(running), timeout=0.2)
                self._collect()
                running = {f: s for f, s in running.items() if not f.done()}
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._close_crms(stuck=bool(running))
        self.stuck = sorted(s.cfg.name for s in running.values())
        for name in self.stuck:
            log.warning("%s: still running at shutdown; releasing its lease", name)
            release_own_leases(self.store, name)
        log.info("email-router run stopped")

    def _close_crms(self, *, stuck: bool) -> None:
        if stuck:  # a cycle still holds an adapter; the process is about to exit anyway
            return
        adapters = [crm for _, crm in self._retired]
        adapters += list(self._ctx._crms.values()) if self._ctx is not None else []
        self._retired.clear()
        for crm in adapters:
            with suppress(Exception):  # closing is best effort
                crm.close()

    # -- the scheduler --------------------------------------------------------------------------
    def tick(self) -> None:
        """One scheduling decision: collect finished runs, reload, start what is due."""
        now = self.clock()
        self._collect()
        if now >= self._next_refresh:
            self._next_refresh = now + self.config.system.config_refresh_period / 1000
            self.reload()
        self._check_overruns(now)
        self._start_due(now)
        if now >= self._next_housekeeping and self._ctx is not None:
            self._next_housekeeping = now + HOUSEKEEPING_PERIOD
            self._housekeep(self._ctx)

    def _housekeep(self, ctx: Context) -> None:
        """Purge finished ledger entries past LedgerRetention; a failure only waits a period."""
        from router.housekeeping import housekeeping

        try:
            report = housekeeping(ctx)
        except RouterError as exc:
            log.warning("housekeeping failed, trying again later: %s", exc)
            return
        if report.total:
            log.info("housekeeping: purged %d finished ledger entries", report.total)

    def _start_due(self, now: float) -> None:
        free = self.config.system.max_threads - sum(s.running for s in self.slots.values())
        due = [s for s in self.slots.values() if self._is_due(s, now)]
        for slot in sorted(due, key=lambda s: s.next_due)[: max(0, free)]:
            slot.started, slot.overran = now, False
            slot.next_due = now + slot.cfg.polling_seconds
            slot.run_generation = self._generation
            slot.future = self._executor.submit(execute, slot.ctx, slot.cfg)

    @staticmethod
    def _is_due(slot: Slot, now: float) -> bool:
        return (
            slot.cfg.enabled
            and not slot.removed
            and not slot.running
            and slot.paused is None
            and now >= slot.next_due
        )

    def _collect(self) -> None:
        """Take in finished runs: pause on StopError, forget removed instances."""
        for name, slot in list(self.slots.items()):
            if slot.future is None or not slot.future.done():
                continue
            result = slot.future.result()
            slot.future = None
            if slot.removed:
                del self.slots[name]
                metrics.forget_instance(name)
            elif result.stopped:
                slot.paused = f"{type(result.error).__name__}: {result.error}"
                log.error("%s: paused until its configuration changes: %s", name, slot.paused)
        self._close_retired()

    def _check_overruns(self, now: float) -> None:
        limit = self.config.system.max_thread_execution / 1000
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

    # -- configuration --------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the configuration file; True when a new configuration was applied."""
        config = self._watcher.poll()
        if config is None:
            return False
        if config.system.state_store != self.config.system.state_store:
            log.warning("StateStore changed in the configuration: takes effect after a restart")
        self._apply(config)
        log.info("configuration reloaded: %d instances", len(config.providers))
        return True

    def _apply(self, config: Configuration) -> None:
        """Make the slots match ``config`` (new context: Deployment changes reach the CRM)."""
        self.config = config
        self._resize(config.system.max_threads)
        ctx = self._new_context(config)
        now, wanted = self.clock(), {p.name: p for p in config.providers}
        for name in [n for n in self.slots if n not in wanted]:
            self._remove(name)
        for name, cfg in wanted.items():
            self._update(name, cfg, _deployment(config, cfg), ctx, now)

    def _new_context(self, config: Configuration) -> Context:
        """A context for ``config`` that keeps the CRM adapters of unchanged Deployments.

        Keeping them keeps their tokens and connections across reloads; the adapters of changed
        or removed Deployments are closed once the cycles that may use them have returned.
        """
        ctx = metrics.metered_context(Context(config, self.store, self.settings))
        old, self._ctx = self._ctx, ctx
        if old is not None:
            for name, crm in old._crms.items():
                if _same_deployment(old.config, config, name):
                    ctx._crms[name] = crm
                else:
                    self._retired.append((self._generation, crm))
            self._generation += 1
        return ctx

    def _close_retired(self) -> None:
        running = [s.run_generation for s in self.slots.values() if s.running]
        oldest = min(running, default=self._generation)
        for item in [r for r in self._retired if r[0] < oldest]:
            self._retired.remove(item)
            with suppress(Exception):  # closing is best effort
                item[1].close()

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
            self.slots[name] = Slot(cfg, dep, ctx, next_due=now)
            if self._announce:
                log.info("%s: added", name)
            return
        slot.removed = False  # re-added while its last cycle was still running
        if slot.cfg != cfg or slot.deployment != dep:
            if slot.paused:
                log.info("%s: configuration changed, resuming", name)
            slot.cfg, slot.deployment, slot.paused = cfg, dep, None
            slot.next_due = min(slot.next_due, now)
        slot.ctx = ctx

    def _resize(self, threads: int) -> None:
        if threads > self._threads:
            # the old pool finishes what it runs; new cycles go to the larger one
            self._executor.shutdown(wait=False)
            self._executor = self.executor_factory(threads)
        self._threads = max(self._threads, threads)


def _same_deployment(old: Configuration, new: Configuration, name: str) -> bool:
    try:
        return old.deployment(name) == new.deployment(name)
    except KeyError:
        return False


def release_own_leases(store: StateStore, name: str) -> None:
    """Release the leases of ``name`` held by this process (shutdown with a cycle stuck)."""
    mine = f"{socket.gethostname()}:{os.getpid()}:"
    _release_if(store, name, lambda holder: holder.startswith(mine))


def release_dead_leases(store: StateStore, name: str) -> None:
    """Release leases of ``name`` left by a process of this host that no longer exists.

    After a crash (kill -9, power loss) the instance would otherwise wait for the lease TTL
    (MaxThreadExecution). Holders are ``host:pid:thread``; a live pid is never touched.
    """
    _release_if(store, name, _holder_is_dead)


def _holder_is_dead(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def _release_if(store: StateStore, name: str, check: Callable[[str], bool]) -> None:
    for key in (name, f"{name}#deliver"):
        try:
            info = store.get_lease(key)
            if info is not None and check(info.holder):
                store.release_lease(Lease(key, info.holder, info.token, info.expires_at))
                log.info("%s: released the lease held by %s", key, info.holder)
        except RouterError as exc:
            log.warning("%s: lease not released: %s", key, exc)


# -- entry point ----------------------------------------------------------------------------------
def open_runtime(
    config_path: str | Path | None,
    state_url: str | None = None,
    *,
    settings: Settings | None = None,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> StandaloneRuntime:
    """Load the configuration (ConfigError when invalid) and open its state store."""
    settings = settings or Settings()
    path = Path(config_path) if config_path else settings.config
    config = load_config(path)
    url = state_url or settings.state_url or config.system.state_store
    store = open_store(url, prefix=settings.key_prefix)
    return StandaloneRuntime(path, store, config, settings, shutdown_grace=shutdown_grace)


def main(
    config_path: str | None,
    state_url: str | None,
    *,
    duration: float | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> int:
    """``email-router run``: returns the exit code (exits hard if a cycle is stuck)."""
    limit_malloc_arenas()  # before the thread pool starts: see router.memtune
    settings = load_settings()
    runtime = open_runtime(config_path, state_url, settings=settings, shutdown_grace=shutdown_grace)
    configure_logging(settings.log_level or runtime.config.system.log_level, settings.log_format)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        metrics.start_metrics_server(port, metrics_addr)
    code = runtime.run(duration)
    runtime.store.close()
    if runtime.stuck:
        # the stuck threads cannot be interrupted; their leases are released, so leave now
        logging.shutdown()
        os._exit(code)
    return code
