"""The configuration watcher both runtimes use: a new valid file takes effect without a restart.

Use one :class:`ConfigWatcher` per process that follows the file: the ``email-router run``
scheduler, every Celery worker process (its context holder) and Celery beat (its scheduler).
They all get the same rules:

* the file is looked at no more often than once per ``ConfigRefreshPeriod`` of the configuration
  in use;
* a version is new when the file was written or replaced (modification time, size, inode) or
  its content differs (two writes within the file system's timestamp granularity);
* a version that does not load is reported once, and the last good configuration keeps running;
* the configuration in use is the file's plus the mailboxes its ``<LoadMailboxes>`` read from
  the CRM (:func:`router.mailboxes.expand`, through a :class:`~router.mailboxes.MailboxLoader`),
  read again every ``<ConfigUpdatePeriod>``: a changed list is a new configuration too;
* given the runtime's state store, the lists read are recorded there
  (:meth:`~router.mailboxes.MailboxLoader.record_in`), so ``status``, the console and
  ``poll NAME`` know the loaded instances; a process that only shows them (the console) follows
  the recorded lists instead (``loader=RecordedMailboxes(store)``) and never reads the CRM.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.config import Configuration, ProviderConfiguration
from router.configcheck import load_config
from router.errors import ConfigError
from router.mailboxes import MailboxLoader, MailboxSource
from router.state.base import StateStore

log = logging.getLogger(__name__)


class ConfigWatcher:
    """Follows one configuration file: loads it, then reports each new valid version once."""

    def __init__(
        self,
        path: Path,
        config: Configuration | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        loader: MailboxSource | None = None,
        store: StateStore | None = None,
    ) -> None:
        """Watch ``path``; ``config`` is the version already loaded from it, if any (its
        CRM-defined mailboxes, if it has any, come with the first :meth:`poll`). ``store``:
        record the mailbox lists read there (see :meth:`record_in`)."""
        self.path = Path(path)
        #: The configuration in use: the last version that loaded, with the CRM's mailboxes
        #: (None before :meth:`load`).
        self.config = config
        self._file_config = config
        self._loaded: tuple[ProviderConfiguration, ...] = ()  # the last mailboxes expanded
        self._loader = loader or MailboxLoader()
        if store is not None:
            self.record_in(store)
        self._clock = clock
        self._version = _version(self.path) if config is not None else None
        self._checked_at = clock()

    def load(self) -> Configuration:
        """Read the file now and make it the version in use; ConfigError when it is invalid.

        Use it when there is nothing to fall back to (a process starting).
        """
        version = _version(self.path)  # before reading: a write meanwhile is seen next time
        self._adopt(load_config(self.path), version)
        assert self.config is not None
        return self.config

    @property
    def loaded_mtime(self) -> float:
        """Modification time (epoch seconds) of the version in use; 0 before any."""
        return self._version.mtime if self._version else 0.0

    def poll(self) -> Configuration | None:
        """The new configuration when the file has a new valid version (looked at once per
        refresh period) or the CRM's mailbox list changed (read once per update period); None
        otherwise (unchanged, too early, or broken: then it is logged once)."""
        return self._poll_file() or self._poll_mailboxes()

    def record_in(self, store: StateStore) -> None:
        """Record the CRM mailbox lists this watcher reads in ``store`` (those read so far too).

        Call it once the runtime's store is open; a watcher that follows recorded lists
        (:class:`~router.mailboxes.RecordedMailboxes`) has nothing to record.
        """
        self._loader.record_in(store)

    def close(self) -> None:
        """Release the CRM connections used to read mailboxes (the process is stopping)."""
        self._loader.close()

    def _poll_file(self) -> Configuration | None:
        if not self._due():
            return None
        version = _version(self.path)
        if version is None or version == self._version:
            return None
        self._version = version  # a broken version is reported once, not every refresh period
        config = self._try_load()
        if config is None:
            return None
        self._adopt(config, version)
        return self.config

    def _poll_mailboxes(self) -> Configuration | None:
        file_config = self._file_config
        if file_config is None or not self._loader.due(file_config):
            return None
        config = self._expand(file_config)
        if self.config is not None and config.providers == self.config.providers:
            return None
        log.info("mailboxes loaded from the CRM changed: %d instances", len(config.providers))
        self.config = config
        return config

    def _expand(self, file_config: Configuration) -> Configuration:
        """The file's configuration with the CRM's mailboxes (the last ones when unusable)."""
        try:
            config = self._loader.expand(file_config)
        except ConfigError as exc:  # e.g. an unreadable <MailboxCredentials> file
            log.error("mailboxes from the CRM not reloaded, keeping the last ones: %s", exc)
            names = {p.name for p in file_config.providers}
            kept = tuple(p for p in self._loaded if p.name not in names)
            return file_config.model_copy(update={"providers": file_config.providers + kept})
        self._loaded = config.providers[len(file_config.providers) :]
        return config

    def _due(self) -> bool:
        now = self._clock()
        refresh = self.config.system.config_refresh_period if self.config else 0
        if now - self._checked_at < refresh / 1000.0:
            return False
        self._checked_at = now
        return True

    def _try_load(self) -> Configuration | None:
        try:
            return load_config(self.path)
        except ConfigError as exc:
            log.error("configuration %s not reloaded, keeping the previous one:", self.path)
            for problem in exc.problems or [str(exc)]:
                log.error("  %s", problem)
        except Exception as exc:  # whatever is wrong with the file, keep running
            # the type only: the text of a parser's error may quote the file (and its secrets)
            log.error(
                "configuration %s not reloaded (%s), keeping the previous one",
                self.path,
                type(exc).__name__,
            )
        return None

    def _adopt(self, file_config: Configuration, version: Version | None) -> None:
        self._file_config, self._version, self._checked_at = file_config, version, self._clock()
        self.config = self._expand(file_config)


@dataclass(frozen=True)
class Version:
    """What tells two versions of the file apart."""

    mtime: float
    size: int
    inode: int
    digest: str


def _version(path: Path) -> Version | None:
    try:
        st = os.stat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return Version(st.st_mtime_ns / 1e9, st.st_size, st.st_ino, digest)
