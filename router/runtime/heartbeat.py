"""The beat thread: keeps this process's heartbeat fresh in the state store, in both runtimes.

Use :class:`HeartbeatThread` once per process that takes leases: ``email-router run`` starts one
with its scheduler, a Celery worker one in each pool process (``workers.signals``). Every
:data:`~router.service.HEARTBEAT_INTERVAL` seconds it calls :data:`router.service.PULSE`'s
``beat`` with the store and configuration its ``source`` gives; the rules - when a holder is
dead, when this process fences itself off - are the ledger's (:mod:`router.ledger.leases`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from router import service
from router.config import SystemConfiguration
from router.errors import RouterError
from router.state.base import StateStore

log = logging.getLogger(__name__)

#: Gives the store and configuration to beat with, for the duration of one beat (the Celery
#: worker's context may be reloaded between two beats).
Source = Callable[[], AbstractContextManager[tuple[StateStore, SystemConfiguration]]]


class HeartbeatThread:
    """A daemon thread beating every ``interval`` seconds until :meth:`stop` (or exit)."""

    def __init__(self, source: Source, interval: float = service.HEARTBEAT_INTERVAL) -> None:
        self._source = source
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="router-heartbeat", daemon=True)

    @classmethod
    def for_store(
        cls,
        store: StateStore,
        system: Callable[[], SystemConfiguration],
        interval: float = service.HEARTBEAT_INTERVAL,
    ) -> HeartbeatThread:
        """A beat thread for one store opened for the whole process (``email-router run``);
        ``system`` gives the current SystemConfiguration (it may be reloaded)."""

        @contextlib.contextmanager
        def source() -> Iterator[tuple[StateStore, SystemConfiguration]]:
            yield store, system()

        return cls(source, interval)

    def start(self) -> HeartbeatThread:
        """Start beating (the first beat at once); returns self.

        From here on, a lease is taken only after a beat is in the store (the ledger beats on
        the spot if this thread has not yet), so a process killed right after its start does
        not leave a lease no one can tell from a live one.
        """
        service.PULSE.enable()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (the heartbeat then lapses: stop only when no lease is held)."""
        self._stop.set()

    def beat_once(self) -> bool:
        """One beat; False when it could not be written (logged by the ledger)."""
        try:
            with self._source() as (store, system):
                return service.PULSE.beat(store, system)
        except RouterError as exc:  # no context yet (a broken file, an unreachable store)
            log.warning("heartbeat skipped: %s", exc)
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat_once()
            except Exception:  # a bug here must not end the beats: they keep the leases
                log.exception("heartbeat failed")
            self._stop.wait(self._interval)
