"""What the console's views work with: the configuration in use, the state store, the jobs.

Use :class:`ConsoleHub` (one per console process; :func:`hub` finds it from a view). It follows
the configuration file like ``email-router run`` does (:class:`router.runtime.watch.ConfigWatcher`:
a new valid version is used from the next request on, a broken one keeps the last good one),
keeps one :class:`~router.context.Context` per version (:class:`router.runtime.contexts.Contexts`,
so CRM adapters of unchanged Deployments are kept) and owns the audit log and the job board.
"""

from __future__ import annotations

import threading
from pathlib import Path

from flask import current_app

from router.config import Configuration, Settings
from router.console.audit import AuditLog
from router.console.jobs import JobBoard
from router.context import Context
from router.mailboxes import RecordedMailboxes
from router.runtime.contexts import Contexts
from router.runtime.watch import ConfigWatcher
from router.state.base import StateStore

#: Key of the hub in ``app.extensions``.
EXTENSION = "email_router_console"


class ConsoleHub:
    """The console's shared objects; safe for the server's threads."""

    def __init__(
        self,
        config_path: Path,
        config: Configuration,
        store: StateStore,
        settings: Settings,
        audit: AuditLog,
    ) -> None:
        self.config_path = config_path.resolve()
        self.store = store
        self.audit = audit
        self.jobs = JobBoard()
        self._lock = threading.Lock()
        # the loaded mailboxes as a runtime recorded them: the console never reads the CRM's list
        self._watcher = ConfigWatcher(self.config_path, config, loader=RecordedMailboxes(store))
        self._contexts = Contexts(store, settings)
        self._ctx = self._contexts.renew(config)

    def context(self) -> Context:
        """The context of the newest valid configuration (checked at most every
        ``ConfigRefreshPeriod``)."""
        with self._lock:
            config = self._watcher.poll()
            if config is not None:
                self._ctx = self._contexts.renew(config)
            if not self.jobs.running():  # a running job may still use a retired adapter
                self._contexts.close_retired(None)
            return self._ctx

    @property
    def config_since(self) -> float:
        """Modification time of the configuration in use (what lifts a recorded pause)."""
        return self._watcher.loaded_mtime

    def close(self) -> None:
        """Close the CRM adapters and the state store."""
        self._contexts.close_all()
        self.store.close()


def hub() -> ConsoleHub:
    """The hub of the app serving this request."""
    found = current_app.extensions[EXTENSION]
    if not isinstance(found, ConsoleHub):
        raise TypeError("the console app has no hub")
    return found
