"""Helpers of the state-store contract suite: a Redis client and prefix cleanup with SCAN."""

from __future__ import annotations

import redis

from router.state.keys import Keys


def redis_client(url: str) -> redis.Redis:
    """A plain client on ``url`` for looking at (or damaging) what a store wrote."""
    return redis.Redis.from_url(url, socket_timeout=5)


def delete_prefix(url: str, keys: Keys) -> int:
    """Delete every key of ``keys.prefix`` (SCAN, never KEYS or FLUSHDB); return the count."""
    client = redis_client(url)
    doomed = list(client.scan_iter(match=keys.pattern(), count=1000))
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])
    client.close()
    return len(doomed)
