"""A Celery consumer that survives the broker going away twice in quick succession.

Celery 5.7 with kombu's Redis transport: when the connection is lost while a message is
delivered but not yet acknowledged (``acks_late``) and Redis is still down, the clean-up in
``Consumer.on_connection_error_after_connected`` closes a channel whose connection was already
collected, kombu raises ``AttributeError`` (``'NoneType' object has no attribute 'hostname'``)
instead of a connection error, and the worker stops with "Unrecoverable error". Seen in
tests/e2e/test_celery_cluster.py when Redis is killed and restarted twice a few seconds apart.

This subclass treats that ``AttributeError`` as what it is - the old connection is gone - and
finishes the clean-up Celery skipped: with ``worker_cancel_long_running_tasks_on_connection_loss``
it cancels the running late-ack tasks, which could otherwise acknowledge or reject their message
later on the dead channel (the same ``AttributeError``, this time fatal). Then the consumer
reconnects as usual. Unacknowledged messages stay in Redis' unacked set and are redelivered
after the visibility timeout; the ledger and leases make the repeat harmless. Selected with
``worker_consumer`` in :mod:`workers.app`.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer
from celery.worker.state import active_requests

log = logging.getLogger(__name__)


class RobustConsumer(Consumer):
    """Consumer whose clean-up after a lost broker connection cannot kill the worker."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            log.warning(
                "broker connection clean-up failed (kombu closed a collected channel); "
                "reconnecting anyway",
                exc_info=True,
            )
            self.connection = None
            if self.app.conf.worker_cancel_long_running_tasks_on_connection_loss:
                self._cancel_late_ack_tasks()

    def _cancel_late_ack_tasks(self) -> None:
        """What Celery does after a connection loss, had the clean-up not failed."""
        for request in tuple(active_requests):
            if request.task.acks_late and not request.acknowledged:
                try:
                    request.cancel(self.pool)
                except Exception:  # one request must not stop the others' cancellation
                    log.warning("could not cancel %r after the connection loss", request)
