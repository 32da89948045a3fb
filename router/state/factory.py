"""Open a state store from its URL (``memory://``, ``sqlite:///path``, ``redis://...``)."""

from __future__ import annotations

from router.errors import ConfigError
from router.state.base import StateStore


def open_store(url: str, *, prefix: str = "er") -> StateStore:
    """Return the state store for ``url``; raises ConfigError for an unknown scheme."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from router.state.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from router.state.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from router.state.redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix)
    raise ConfigError(
        f"StateStore: unknown state store URL scheme {scheme!r}; "
        "use sqlite:///path/to/state.db, redis://host:6379/0 or memory://"
    )


def _sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise ConfigError(f"StateStore: {url!r} is not sqlite:///path (three slashes)")
    return rest[3:] or "state.db"
