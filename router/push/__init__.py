"""Push: IMAP IDLE watchers that start an instance's normal poll as soon as mail arrives.

Use :class:`PushWatchers` to hold IDLE on every instance whose configuration says
``<Push>idle</Push>``; each new-mail notification calls a :class:`Trigger` with the instance
name. ``email-router run`` passes its scheduler (the poll runs in-process), ``email-router
watch`` a Celery trigger (``workers.push``, loaded by name: this package never imports Celery).
Polling every ``PollingPeriod`` stays the safety net: a missed notification, a dropped
connection or a server without IDLE only costs latency, never mail.
"""

from __future__ import annotations

from router.push.idle import IdleWatcher, PushTiming, WatchStats
from router.push.trigger import TRIGGERS, Trigger, load_trigger
from router.push.watchers import PushWatchers, wants_push

__all__ = [
    "TRIGGERS",
    "IdleWatcher",
    "PushTiming",
    "PushWatchers",
    "Trigger",
    "WatchStats",
    "load_trigger",
    "wants_push",
]
