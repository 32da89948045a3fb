"""Celery beat entries built from the configuration: housekeeping, and per-instance entries.

With a Redis state store beat dispatches the instances itself (``workers.dispatch``: due times
in Redis, polls sent in batches) and its Celery schedule is housekeeping only
(``build_schedule(config, per_instance=False)``); the per-instance entries are the schedule of
``workers.scheduler.EntryScheduler`` and of a beat whose state store is not Redis.

:func:`build_schedule` is a pure function of the :class:`~router.config.Configuration` (no Celery
import), used by ``workers.scheduler.ConfigScheduler``, which rebuilds and merges it whenever the
file changes. Every entry carries ``expires`` = its period: a poll that could not start before
the next one was due is dropped instead of piling up behind a slow or stopped worker.
Housekeeping runs every ``HOUSEKEEPING_PERIOD``, the period ``email-router run`` uses too
(:mod:`router.runtime.periods`).
"""

from __future__ import annotations

from typing import Any

from router.config import Configuration, ProviderConfiguration
from router.models import Direction
from router.runtime.periods import HOUSEKEEPING_PERIOD

Entry = dict[str, Any]


def build_schedule(config: Configuration, *, per_instance: bool = True) -> dict[str, Entry]:
    """Beat entries: housekeeping, and ``poll:<name>`` / ``send:<name>`` per enabled instance
    unless ``per_instance`` is False (the dispatcher of ``workers.dispatch`` sends those)."""
    chosen = config.providers if per_instance else ()
    entries = {entry_name(p): instance_entry(p) for p in chosen if p.enabled}
    entries["housekeeping"] = {
        "task": "workers.tasks.housekeeping",
        "schedule": HOUSEKEEPING_PERIOD,
        "args": (),
        "options": {"expires": HOUSEKEEPING_PERIOD, "queue": "crm"},
    }
    return entries


def entry_name(cfg: ProviderConfiguration) -> str:
    """``poll:<name>`` for incoming instances, ``send:<name>`` for outgoing ones."""
    return f"{_verb(cfg)}:{cfg.name}"


def instance_entry(cfg: ProviderConfiguration) -> Entry:
    """The beat entry of one instance: its task every PollingPeriod, expiring after one period."""
    verb = _verb(cfg)
    period = cfg.polling_seconds
    return {
        "task": f"workers.tasks.{verb}",
        "schedule": period,
        "args": (cfg.name,),
        "options": {"expires": period, "queue": "incoming" if verb == "poll" else "outgoing"},
    }


def _verb(cfg: ProviderConfiguration) -> str:
    return "poll" if cfg.direction is Direction.INCOMING else "send"
