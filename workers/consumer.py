"""A Celery consumer whose clean-up after a lost broker connection cannot end the worker.

The cause of "Unrecoverable error: AttributeError 'hostname'" after a Redis restart is fixed in
:mod:`workers.transport`: a channel of the lost connection (closing itself, or acknowledging or
rejecting a task that finished after the loss) raised ``AttributeError`` instead of a connection
error. This subclass is the second line, for a clean-up that fails that way on a path the
transport does not cover: in ``Consumer.on_connection_error_after_connected`` an
``AttributeError`` is taken for what it is - the old connection is gone - and the clean-up
Celery skipped is finished: with ``worker_cancel_long_running_tasks_on_connection_loss`` the
running late-ack tasks are cancelled, which could otherwise acknowledge or reject their message
later on the dead channel. Then the consumer reconnects as usual. Unacknowledged messages stay
in Redis' unacked set and are redelivered after the visibility timeout; the ledger and leases
make the repeat harmless. Selected with ``worker_consumer`` in :mod:`workers.app`.
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
