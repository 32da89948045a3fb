"""The Celery worker's per-process :class:`~router.context.Context`, reloaded on file changes.

Use :data:`HOLDER` from tasks: ``with HOLDER.use() as ctx: ...``. The context (configuration,
state store, CRM adapters) is opened on first use in each worker process - never in the parent
before the fork, whose sockets the children must not share - and opened again when the
configuration file has a new valid version, or the mailboxes its ``<LoadMailboxes>`` read from
the CRM changed, which the shared :class:`~router.runtime.watch.ConfigWatcher` reports (looking
at the file at most once per ``ConfigRefreshPeriod`` and at the CRM once per
``ConfigUpdatePeriod``, as ``email-router run`` and beat do). A context being used by a running
task is closed only after that task is done with it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from router.config import Configuration, Settings, SystemConfiguration
from router.configcheck import load_config
from router.context import Context, context_for
from router.errors import ConfigError
from router.metrics import metered_context
from router.runtime.watch import ConfigWatcher

log = logging.getLogger(__name__)


def system_of(settings: Settings) -> SystemConfiguration:
    """The file's SystemConfiguration, or the defaults when it cannot be read (Flower, tests)."""
    try:
        return load_config(settings.config).system
    except Exception as exc:  # any failure: the worker reports it again per task
        log.debug("using default SystemConfiguration: %s", type(exc).__name__)
        return SystemConfiguration()


@dataclass
class _Slot:
    """One opened context and how many tasks are using it."""

    ctx: Context
    users: int = 0
    stale: bool = False


class ContextHolder:
    """Opens the worker's Context lazily and swaps it when the configuration file changes."""

    def __init__(
        self,
        settings: Settings | None = None,
        opener: Callable[[Configuration, Settings], Context] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or Settings()
        self._opener = opener or _open
        self._clock = clock
        self._watcher = ConfigWatcher(self.settings.config, clock=clock)
        self._slot: _Slot | None = None
        self._lock = threading.Lock()

    @property
    def loaded_mtime(self) -> float:
        """Modification time of the configuration version the current context was built from."""
        return self._watcher.loaded_mtime

    @contextlib.contextmanager
    def use(self) -> Iterator[Context]:
        """The current context for the duration of one task."""
        slot = self._acquire()
        try:
            yield slot.ctx
        finally:
            self._release(slot)

    def forget(self) -> None:
        """Drop the context without closing it: called in a fresh child after fork."""
        with self._lock:
            self._slot = None
            self._watcher = ConfigWatcher(self.settings.config, clock=self._clock)

    def close(self) -> None:
        """Close the current context (the worker process is stopping)."""
        with self._lock:
            slot, self._slot = self._slot, None
        self._watcher.close()  # the CRM adapters that read <LoadMailboxes>' records
        if slot is not None:
            _close(slot.ctx)

    def _acquire(self) -> _Slot:
        with self._lock:
            if self._slot is None:  # load() raises ConfigError: nothing to fall back to yet
                self._slot = self._open(self._watcher.load())
            elif (config := self._watcher.poll()) is not None:
                self._reload(config)
            self._slot.users += 1
            return self._slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.users -= 1
            done = slot.stale and slot.users == 0
        if done:
            _close(slot.ctx)

    def _open(self, config: Configuration) -> _Slot:
        slot = _Slot(self._opener(config, self.settings))
        # the CRM mailbox lists this worker reads go to its store: status, console, poll NAME
        self._watcher.record_in(slot.ctx.store)
        return slot

    def _reload(self, config: Configuration) -> None:
        """Open a context for the new version; keep the old one when it cannot be opened."""
        assert self._slot is not None
        try:
            fresh = self._open(config)
        except (ConfigError, ValueError, OSError) as exc:  # e.g. a new StateStore unreachable
            log.error(
                "configuration %s not reloaded, keeping the previous one: %s",
                self.settings.config,
                exc,
            )
            return
        old, self._slot = self._slot, fresh
        old.stale = True
        log.info("configuration %s reloaded", self.settings.config)
        if old.users == 0:
            _close(old.ctx)


def _open(config: Configuration, settings: Settings) -> Context:
    return metered_context(context_for(config, settings))


def _close(ctx: Context) -> None:
    try:
        ctx.close()
    except Exception:  # closing must never fail a task
        log.warning("closing the previous context failed", exc_info=True)


#: The worker process's holder (one per process; reset after fork by workers.signals).
HOLDER = ContextHolder()
