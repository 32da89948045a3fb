"""State store URLs: `sqlite:///path?options` opens the right backend, or says why not."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.errors import ConfigError
from router.state.factory import open_store
from router.state.sqlite import SqliteStore


def test_sqlite_url_opens_a_durable_store_by_default(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "state.db"
    assert store._conn().execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    store.close()


def test_sqlite_url_options_choose_synchronous_and_busy_timeout(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db?synchronous=normal&busy_timeout=2.5")
    assert isinstance(store, SqliteStore)
    assert store._conn().execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert store._conn().execute("PRAGMA busy_timeout").fetchone() == (2500,)
    store.close()


@pytest.mark.parametrize("query", ["synchronous=OFF", "busy_timeout=soon", "journal=delete"])
def test_unknown_or_unsafe_sqlite_options_are_config_errors(tmp_path: Path, query: str) -> None:
    with pytest.raises(ConfigError, match="synchronous=FULL"):
        open_store(f"sqlite:///{tmp_path}/s.db?{query}")


def test_in_memory_sqlite_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="memory://"):
        open_store("sqlite:///:memory:")
