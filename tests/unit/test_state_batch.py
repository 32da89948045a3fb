"""StateStore.batch(): many writes, one commit (SQLite) or one round trip (Redis), the same
results as without it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.models import LedgerState
from router.state.memory import MemoryStore
from router.state.redis import RedisStore
from router.state.sqlite import SqliteStore
from tests.contract.state_helpers import delete_prefix

S = LedgerState


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "state.db")


def test_writes_inside_a_batch_are_all_there_after_it(sqlite_store: SqliteStore) -> None:
    with sqlite_store.batch():
        for n in range(20):
            assert sqlite_store.stage("a", f"k{n}", b"raw")
        sqlite_store.transition("a", "k0", [S.STAGED], S.DELIVERED, message_id="<m0@x>")
        sqlite_store.index_message_id("in:a:<m0@x>", "a", "k0")
        sqlite_store.drop_raw("a", "k0")
    assert sqlite_store.count_entries("a")[S.STAGED] == 19
    assert sqlite_store.get_raw("a", "k0") is None
    assert sqlite_store.lookup_message_id("in:a:<m0@x>") == ("a", "k0")


def test_a_batch_commits_once(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    # Given a second connection watching the file, when the batch is half done, then it sees
    # nothing yet: the writes are one transaction, committed (fsynced) at the end.
    with sqlite_store.batch():
        sqlite_store.stage("a", "k1", b"raw")
        sqlite_store.stage("a", "k2", b"raw")
        seen = sqlite3.connect(tmp_path / "state.db").execute("SELECT COUNT(*) FROM ledger")
        assert seen.fetchone()[0] == 0
    assert sqlite_store.count_entries("a")[S.STAGED] == 2


def test_a_failing_batch_leaves_nothing_behind(sqlite_store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), sqlite_store.batch():
        sqlite_store.stage("a", "k1", b"raw")
        raise RuntimeError("crash in the middle")
    assert sqlite_store.get_entry("a", "k1") is None
    assert sqlite_store.stage("a", "k1", b"raw")  # and the store works on


def test_a_write_that_fails_inside_a_batch_is_undone_alone(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sqlite_store.batch():
        sqlite_store.stage("a", "k1", b"raw")
        real = sqlite_store._insert

        def insert_then_fail(*args: object) -> bool:
            real(*args)  # type: ignore[arg-type]
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sqlite_store, "_insert", insert_then_fail)
        with pytest.raises(Exception, match="disk I/O"):
            sqlite_store.stage("a", "k2", b"raw")
        monkeypatch.undo()
    assert sqlite_store.get_entry("a", "k1") is not None
    assert sqlite_store.get_entry("a", "k2") is None


def test_batches_nest_and_stores_without_transactions_accept_them() -> None:
    store = MemoryStore()
    with store.batch(), store.batch():
        assert store.stage("a", "k1", b"raw")
    assert store.get_raw("a", "k1") == b"raw"


# -- Redis: fire-and-forget writes pipelined ---------------------------------------------------
@pytest.fixture
def redis_store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    url = redis_url
    store = RedisStore.from_url(url, prefix=redis_prefix)
    yield store
    store.close()
    delete_prefix(url, store.keys)


@pytest.mark.redis
def test_redis_sends_raw_drops_and_the_index_when_the_batch_ends(redis_store: RedisStore) -> None:
    redis_store.stage("a", "k1", b"raw")
    with redis_store.batch():
        redis_store.transition("a", "k1", [S.STAGED], S.DELIVERED, message_id="<m@x>")
        redis_store.index_message_id("in:a:<m@x>", "a", "k1")
        redis_store.drop_raw("a", "k1")
        # Given the block is still open, the two writes wait in the pipeline...
        assert redis_store.get_raw("a", "k1") == b"raw"
    # ...and when it ends, one round trip applies them.
    assert redis_store.get_raw("a", "k1") is None
    assert redis_store.lookup_message_id("in:a:<m@x>") == ("a", "k1")
    assert redis_store.get_entry("a", "k1").state is S.DELIVERED  # type: ignore[union-attr]


@pytest.mark.redis
def test_redis_batch_ending_in_an_error_still_sends_what_it_queued(redis_store: RedisStore) -> None:
    redis_store.stage("a", "k1", b"raw")
    with pytest.raises(RuntimeError), redis_store.batch():
        redis_store.drop_raw("a", "k1")
        raise RuntimeError("CRM answer lost")
    assert redis_store.get_raw("a", "k1") is None
