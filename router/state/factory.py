"""Open a state store from its URL (``memory://``, ``sqlite:///path``, ``redis://...``).

Use :func:`open_store` wherever a store is built from configuration (``<StateStore>`` or
``ROUTER_STATE_URL``); each backend parses the rest of its own URL (``from_url``).
"""

from __future__ import annotations

from router.errors import ConfigError
from router.state.base import StateStore
from router.state.memory import MemoryStore
from router.state.redis import RedisStore
from router.state.sqlite import SqliteStore


def open_store(url: str, *, prefix: str = "er", create: bool = True) -> StateStore:
    """Return the state store for ``url``; raises ConfigError for an unknown scheme.

    ``create=False`` is for commands that only read: a SQLite file that does not exist raises
    StateUnavailable instead of being created (Redis and memory stores create nothing on read).
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return SqliteStore.from_url(url, create=create)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore.from_url(url, prefix=prefix)
    raise ConfigError(
        f"StateStore: unknown state store URL scheme {scheme!r}; "
        "use sqlite:///path/to/state.db, redis://host:6379/0 or memory://"
    )
