"""A broker channel left over from a lost connection fails with a connection error, not a crash.

The path that ended workers with "Unrecoverable error: AttributeError 'hostname'" after a Redis
restart: Celery collects the lost connection (the transport lets go of it), then a task that
finished meanwhile rejects or acknowledges its message on the old channel. kombu's
``reject_log_error`` only catches connection errors; see ``workers/transport.py``.
"""

from __future__ import annotations

import logging

import pytest
import redis
from kombu import Connection

import workers.app  # noqa: F401  (installs the transport, as the celery command does)
from workers.transport import SentinelTransport, Transport


@pytest.fixture
def channel(redis_url: str):  # type: ignore[no-untyped-def]
    conn = Connection(redis_url)
    chan = conn.channel()
    yield conn, chan
    conn.release()


def test_the_redis_schemes_resolve_to_the_fixed_transport(redis_url: str) -> None:
    assert isinstance(Connection(redis_url).transport, Transport)
    secure = Connection("rediss://127.0.0.1:6380/0")
    assert isinstance(secure.transport, Transport)
    assert secure.ssl  # kombu's own handling of rediss:// is kept
    sentinel = Connection("sentinel://127.0.0.1:26379")
    assert isinstance(sentinel.transport, SentinelTransport)


def test_a_reject_on_a_detached_channel_is_a_logged_connection_error(
    channel: tuple[Connection, object], caplog: pytest.LogCaptureFixture
) -> None:
    conn, chan = channel
    message = chan.prepare_message("body")  # type: ignore[attr-defined]
    received = chan.message_to_python(  # type: ignore[attr-defined]
        {**message, "properties": {**message["properties"], "delivery_tag": "t-1"}}
    )
    chan._pool = None  # type: ignore[attr-defined]  # what a restart leaves: no client yet
    conn.collect()  # Celery's clean-up after the loss: the transport lets go of the connection
    logger = logging.getLogger("test-transport")
    # kombu's reject_log_error catches connection errors only; an AttributeError ended workers
    received.reject_log_error(logger, conn.connection_errors)
    assert "Couldn't reject" in caplog.text


def test_a_detached_channel_asks_for_no_connection_parameters(
    channel: tuple[Connection, object],
) -> None:
    conn, chan = channel
    conn.collect()
    with pytest.raises(redis.ConnectionError):
        chan._connparams()  # type: ignore[attr-defined]


def test_a_detached_transport_publishes_without_batches(redis_url: str) -> None:
    conn = Connection(redis_url)
    transport = conn.transport
    conn.collect()
    assert transport.supports_batch_publish is False
