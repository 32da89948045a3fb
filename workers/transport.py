"""kombu's Redis transport, made to fail a detached channel with a connection error.

Why: when Redis restarts, Celery's consumer collects the lost broker connection, which detaches
the kombu transport from it (``Transport.client = None``). A channel of that connection that
still has work to do - closing itself (it first gives unacknowledged messages back, which needs
a fresh Redis client), acknowledging or rejecting a task that finished after the loss - then
builds its connection parameters from ``self.connection.client.hostname`` and raises
``AttributeError: 'NoneType' object has no attribute 'hostname'`` (kombu 5.7,
``kombu/transport/redis.py``, ``Channel._connparams``). Celery treats connection errors as
recoverable and reconnects, but an ``AttributeError`` escapes its event loop and the worker exits
with "Unrecoverable error". Seen in ``tests/e2e/test_redis_restart.py``, once every few restarts.

The channels here raise :class:`redis.ConnectionError` instead, which is what the situation is:
the close is ignored, a failed ack or reject is logged by Celery ("Couldn't ack") and the
message stays in Redis' unacked set, delivered again after the visibility timeout (the ledger
and leases make the repeat harmless), and the consumer reconnects as usual.

:func:`install` points kombu's ``redis``, ``rediss`` and ``sentinel`` aliases at these classes
(so URL parsing, TLS for ``rediss://`` and every option stay kombu's own); :mod:`workers.app`
calls it before the Celery app is created.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis

#: kombu transport alias -> the class it resolves to once :func:`install` ran.
ALIASES = {
    "redis": "workers.transport:Transport",
    "rediss": "workers.transport:Transport",
    "sentinel": "workers.transport:SentinelTransport",
}


class _DetachedIsDisconnected:
    """Channel mix-in: no connection parameters from a transport its connection let go of."""

    connection: Any

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[misc]
        return params


class Channel(_DetachedIsDisconnected, kombu_redis.Channel):
    """kombu's Redis channel; a detached one raises ConnectionError (see the module)."""


class SentinelChannel(_DetachedIsDisconnected, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel; a detached one raises ConnectionError (see the module)."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel

    @property
    def supports_batch_publish(self) -> bool:
        # kombu reads self.client.hostname here too: a detached transport publishes nothing
        return self.client is not None and bool(super().supports_batch_publish)


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel

    @property
    def supports_batch_publish(self) -> bool:
        return self.client is not None and bool(super().supports_batch_publish)


def install() -> None:
    """Make kombu resolve the Redis URL schemes to these classes (idempotent).

    Call it before the first broker connection: kombu caches what an alias resolved to.
    """
    kombu_transports.TRANSPORT_ALIASES.update(ALIASES)
