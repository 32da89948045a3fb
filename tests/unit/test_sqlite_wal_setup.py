"""Opening a SQLite state store while another process switches the same new file to WAL.

SQLite answers ``PRAGMA journal_mode = WAL`` with "database is locked" without waiting for its
busy timeout; :func:`router.state.sqlite.enter_wal` waits for it instead.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from router.state.sqlite import enter_wal


class LockedFor:
    """A connection stub whose WAL pragma is refused as locked ``times`` times."""

    def __init__(self, times: int) -> None:
        self.times, self.calls = times, 0

    def execute(self, sql: str) -> Any:
        assert sql == "PRAGMA journal_mode = WAL"
        self.calls += 1
        if self.calls <= self.times:
            raise sqlite3.OperationalError("database is locked")
        return None


def test_a_locked_wal_switch_is_retried_until_it_succeeds() -> None:
    conn = LockedFor(3)
    enter_wal(conn, patience=5.0)  # type: ignore[arg-type]
    assert conn.calls == 4


def test_a_lock_that_outlasts_the_busy_timeout_is_reported() -> None:
    conn = LockedFor(10**9)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enter_wal(conn, patience=0.05)  # type: ignore[arg-type]


def test_other_errors_are_not_retried() -> None:
    class Broken:
        calls = 0

        def execute(self, sql: str) -> Any:
            Broken.calls += 1
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk"):
        enter_wal(Broken(), patience=5.0)  # type: ignore[arg-type]
    assert Broken.calls == 1
