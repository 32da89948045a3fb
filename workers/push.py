"""The Celery trigger of ``email-router watch``: new mail sends the instance's poll task now.

Use :class:`CeleryTrigger` as ``email-router watch --trigger celery`` (the default; loaded by
name through :func:`router.push.load_trigger`, since ``router`` never imports Celery). It sends
the same ``workers.tasks.poll`` task beat sends, routed to the ``incoming`` queue, with the
instance name as its only argument. The poll takes the instance's lease like any other: a push
that lands while a poll of the instance runs does nothing more than that poll, and beat's
schedule stays the safety net.
"""

from __future__ import annotations

import logging

from workers.tasks import poll

log = logging.getLogger(__name__)

#: Seconds a pushed poll may wait in the queue; later, the next scheduled poll covers it.
PUSH_EXPIRES = 60.0


class CeleryTrigger:
    """Sends ``workers.tasks.poll(instance)`` at once (``router.push.Trigger``)."""

    def poll_now(self, instance: str) -> None:
        """Queue a poll of ``instance`` (the broker connection is Celery's, pooled)."""
        poll.apply_async(args=(instance,), expires=PUSH_EXPIRES)
        log.debug("%s: poll sent (push)", instance)
