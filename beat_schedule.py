"""Celery beat entries built from the configuration: one poll/send entry per enabled instance.

:func:`build_schedule` is a pure function of the :class:`~router.config.Configuration` (no Celery
import), used by ``workers.scheduler.ConfigScheduler``, which rebuilds and merges it whenever the
file changes. Every entry carries ``expires`` = its period: a poll that could not start before
the next one was due is dropped instead of piling up behind a slow or stopped worker.
"""

from __future__ import annotations

from typing import Any

from router.config import Configuration, ProviderConfiguration
from router.models import Direction

#: How often housekeeping runs (seconds).
HOUSEKEEPING_SECONDS = 300.0

Entry = dict[str, Any]


def build_schedule(config: Configuration) -> dict[str, Entry]:
    """Beat entries: ``poll:<name>`` / ``send:<name>`` per enabled instance, and housekeeping."""
    entries = {entry_name(p): instance_entry(p) for p in config.providers if p.enabled}
    entries["housekeeping"] = {
        "task": "workers.tasks.housekeeping",
        "schedule": HOUSEKEEPING_SECONDS,
        "args": (),
        "options": {"expires": HOUSEKEEPING_SECONDS, "queue": "crm"},
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
