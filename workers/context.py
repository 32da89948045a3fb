"""The Celery worker's per-process :class:`~router.service.Context`, reloaded on file changes.

Use :data:`HOLDER` from tasks: ``with HOLDER.use() as ctx: ...``. The context (configuration,
state store, CRM adapters) is opened on first use in each worker process - never in the parent
before the fork, whose sockets the children must not share - and opened again when the
configuration file changed. The file is looked at (``stat``) at most once per
``ConfigRefreshPeriod``; a context being used by a running task is closed only after that task
is done with it.

:class:`ConfigFile` is the change detector, shared with the beat scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from router.config import Configuration, Settings, SystemConfiguration, load_config
from router.errors import ConfigError
from router.service import Context, open_context

log = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None


def file_signature(path: Path) -> Signature:
    """What identifies a version of the file: mtime, size and inode (atomic replaces change it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigFile:
    """Tells whether the configuration file changed, looking at most once per refresh period."""

    def __init__(
        self, path: Path, refresh_ms: int = 5000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path, self.refresh_ms, self._clock = Path(path), refresh_ms, clock
        self._signature: Signature = None
        self._checked_at = float("-inf")
        #: Modification time (epoch seconds) of the version last loaded; 0 before any.
        self.loaded_mtime = 0.0

    def load(self) -> Configuration:
        """Read and validate the file now, and remember its version."""
        signature = file_signature(self.path)
        config = load_config(self.path)
        self._signature, self._checked_at = signature, self._clock()
        self.loaded_mtime = signature[0] / 1e9 if signature else 0.0
        self.refresh_ms = config.system.config_refresh_period
        return config

    def changed(self) -> bool:
        """True when the refresh period has passed and the file is not the version last loaded."""
        now = self._clock()
        if now - self._checked_at < self.refresh_ms / 1000.0:
            return False
        self._checked_at = now
        return file_signature(self.path) != self._signature


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
        opener: Callable[[Settings], Context] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or Settings()
        self._opener = opener or _open
        self._file = ConfigFile(self.settings.config, clock=clock)
        self._slot: _Slot | None = None
        self._lock = threading.Lock()

    @property
    def loaded_mtime(self) -> float:
        """Modification time of the configuration version the current context was built from."""
        return self._file.loaded_mtime

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
            self._file = ConfigFile(self.settings.config, clock=self._file._clock)

    def close(self) -> None:
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is not None:
            _close(slot.ctx)

    def _acquire(self) -> _Slot:
        with self._lock:
            if self._slot is None:
                self._slot = self._open()
            elif self._file.changed():
                self._reload()
            self._slot.users += 1
            return self._slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.users -= 1
            done = slot.stale and slot.users == 0
        if done:
            _close(slot.ctx)

    def _open(self) -> _Slot:
        self._file.load()  # raises ConfigError: nothing to fall back to yet
        return _Slot(self._opener(self.settings))

    def _reload(self) -> None:
        """Open a context for the new file; keep the old one when the new file is broken."""
        assert self._slot is not None
        try:
            fresh = self._open()
        except (ConfigError, ValueError, OSError) as exc:
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


def _open(settings: Settings) -> Context:
    from router.metrics import metered_context

    return metered_context(open_context(settings.config, settings.state_url, settings))


def _close(ctx: Context) -> None:
    try:
        ctx.close()
    except Exception:  # closing must never fail a task
        log.warning("closing the previous context failed", exc_info=True)


#: The worker process's holder (one per process; reset after fork by workers.signals).
HOLDER = ContextHolder()
