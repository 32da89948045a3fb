"""The beat scheduler whose schedule follows the configuration file, without a restart.

Run beat with it (the app's default scheduler)::

    celery -A workers beat -S workers.scheduler:ConfigScheduler

With a Redis state store (the cluster's) the instances are dispatched by
:class:`workers.dispatch.Dispatcher`: due times in Redis, claimed atomically every
``dispatch.TICK`` seconds and sent as batched ``poll_batch`` tasks; two beats running at once
share the work safely. The Celery schedule then holds housekeeping only. With any other store
(and with :class:`EntryScheduler`, kept as the measured baseline) every instance has its own
beat entry, as before; run a single beat replica then.

At start the schedule is built from the file (``beat_schedule.build_schedule``); then the shared
:class:`~router.runtime.watch.ConfigWatcher` looks at the file at most once per
``ConfigRefreshPeriod``, and each new valid version is applied: added instances start being
scheduled, removed or disabled ones stop, a changed PollingPeriod takes effect. A file that no
longer validates is reported and the previous schedule kept. The per-instance state (cursors,
ledger, leases) is in the state store, so a second beat only produces polls that the leases
and the ledger turn into no-ops.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import schedule as every

from beat_schedule import build_schedule
from router.config import Configuration, Settings
from router.context import open_state_store
from router.errors import StateUnavailable
from router.runtime.watch import ConfigWatcher
from router.state.redis import RedisStore
from workers import dispatch
from workers.dispatch import Dispatcher, Message

log = logging.getLogger(__name__)


def spread(entry: ScheduleEntry) -> None:
    """Give a new entry a stable phase within its period (from a hash of its name).

    Without it every instance added at once - all of them when beat starts - is due at the same
    instant, one period later: a burst of N polls and a dispatch lag of N / throughput.
    """
    # build_schedule makes every entry an interval ("every N seconds"), never a crontab
    period = entry.schedule.seconds if isinstance(entry.schedule, every) else 0.0
    if period <= 0 or entry.last_run_at is None:
        return
    entry.last_run_at = entry.last_run_at - timedelta(seconds=dispatch.phase(entry.name) * period)


class ConfigScheduler(Scheduler):
    """Use with ``celery beat -S``: the schedule is rebuilt whenever the configuration changes."""

    #: False: one beat entry per instance even with a Redis state store (:class:`EntryScheduler`)
    use_dispatcher = True
    #: The dispatcher beat runs (a subclass may observe what it sends, as the benchmarks do)
    dispatcher_class: type[Dispatcher] = Dispatcher

    def setup_schedule(self) -> None:
        self._watcher = ConfigWatcher(Settings().config)
        self._loop_max = float(self.app.conf.beat_max_loop_interval or 300)
        config = self._watcher.load()  # a broken file at start: beat does not start
        self._dispatcher = self._open_dispatcher(config) if self.use_dispatcher else None
        self._apply(config)

    def _open_dispatcher(self, config: Configuration) -> Dispatcher | None:
        store = open_state_store(config, Settings())
        if isinstance(store, RedisStore):
            log.info("beat: dispatching from due times in Redis (%s)", store)
            return self.dispatcher_class(store.due_times(), self._send)
        log.warning("beat: the state store is not Redis; one beat entry per instance")
        store.close()
        return None

    def _send(self, message: Message) -> None:
        """Publish one message; a failure costs its instances this round, never beat itself."""
        try:
            self.app.send_task(
                message.task, args=message.args, producer=self.producer, **message.options
            )
        except Exception as exc:  # as Celery's own apply_entry: log, keep beating
            log.error(
                "beat: could not send %s (%d instances): %r", message.task, _size(message), exc
            )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.refresh()
        delay = float(super().tick(*args, **kwargs))
        if self._dispatcher is None:
            return delay
        if time.monotonic() >= self._resync_at:
            self._sync(self._config)
        try:
            self._dispatcher.tick()
        except StateUnavailable as exc:  # the due times stay in Redis: the next tick resumes
            log.warning("beat: dispatch skipped: %s", exc)
        return min(delay, dispatch.TICK)

    def refresh(self) -> bool:
        """Reload the schedule if the file has a new valid version; True when it was reloaded.

        A version that does not load is logged by the watcher; the schedule stays as it was.
        """
        config = self._watcher.poll()
        if config is None:
            return False
        self._apply(config)
        return True

    def schedules_equal(self, old_schedules: Any, new_schedules: Any) -> bool:
        """Cheap stand-in for Celery's check, which ``tick`` runs before sending every task.

        Celery compares the whole schedule entry by entry on each tick: O(entries) per task
        sent, so with 10,000 instances a round of polls cost minutes of beat CPU (measured:
        p99 beat lag 16 s at 3,000 instances every 20 s). The schedule only changes in
        :meth:`_apply`, which drops the heap itself, so comparing the sizes is enough.
        """
        if old_schedules is None or new_schedules is None:
            return old_schedules is new_schedules
        return len(old_schedules) == len(new_schedules)

    def _apply(self, config: Configuration) -> None:
        wanted = build_schedule(config, per_instance=self._dispatcher is None)
        if self._dispatcher is not None:
            self._sync(config)
        before = set(self.schedule)
        self.merge_inplace(wanted)
        for name in set(wanted) - before:
            spread(self.schedule[name])
        self._heap = None  # rebuild the heap: periods may have changed in place
        # Sleep no longer than the refresh period, so changes are seen in time.
        self.max_interval = min(self._loop_max, config.system.config_refresh_period / 1000.0)
        added, removed = set(wanted) - before, before - set(wanted)
        if added or removed:
            log.info(
                "beat: schedule now has %d entries (added %s, removed %s)",
                len(wanted),
                sorted(added) or "none",
                sorted(removed) or "none",
            )

    def _sync(self, config: Configuration) -> None:
        """Sync the due times; again every RESYNC_PERIOD (a Redis that lost them, a failure)."""
        assert self._dispatcher is not None
        self._config = config
        try:
            self._dispatcher.sync(config)
            self._resync_at = time.monotonic() + dispatch.RESYNC_PERIOD
        except StateUnavailable as exc:
            log.warning("beat: schedule not synced to Redis, retrying: %s", exc)
            self._resync_at = time.monotonic() + dispatch.TICK * 10

    @property
    def info(self) -> str:
        return f"    . config -> {Settings().config}"


def _size(message: Message) -> int:
    first = message.args[0] if message.args else None
    return len(first) if isinstance(first, list) else 1


class EntryScheduler(ConfigScheduler):
    """One beat entry per instance whatever the store: the baseline the benchmarks measure.

    Use it (``-S workers.scheduler:EntryScheduler``) only with a single beat replica and a few
    thousand instances at most (``tests/benchmarks/bench_scheduling.py --dispatcher old``).
    """

    use_dispatcher = False
