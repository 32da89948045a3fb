"""The imap provider, plus a record of when each poll had the mailbox open (for overlap checks).

``<ProviderClass>tests.support.audited:AuditedImapProvider</ProviderClass>`` with
``<Parameter Name="audit">/path/audit.db</Parameter>``. ``open`` and ``close`` happen inside
the poll's lease, so the recorded ``[opened, closed]`` intervals of one instance must never
overlap if the lease works - whichever worker, beat or process ran the poll.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from router.providers.imap import ImapOptions, ImapProvider

SCHEMA = """CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT, pid INT, opened REAL, closed REAL)"""


class AuditedOptions(ImapOptions):
    """ImapOptions plus the audit database path, and how long to keep each session open."""

    audit: str
    #: Seconds each session stays open after login: widens polls so that twin tasks (two beats)
    #: meet on the lease even on a fast, idle machine.
    hold: float = 0.0


@contextlib.contextmanager
def _db(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
        yield conn
    finally:
        conn.close()


class AuditedImapProvider(ImapProvider):
    """ImapProvider that records each open/close interval in a SQLite file."""

    options_model = AuditedOptions

    def open(self) -> None:
        self._row: int | None = None
        super().open()
        with _db(self.options.audit) as db:  # type: ignore[attr-defined]
            cur = db.execute(
                "INSERT INTO sessions (instance, pid, opened) VALUES (?, ?, ?)",
                (self.name, os.getpid(), time.time()),
            )
            self._row = cur.lastrowid
        time.sleep(self.options.hold)  # type: ignore[attr-defined]

    def close(self) -> None:
        super().close()
        if getattr(self, "_row", None) is not None:
            with _db(self.options.audit) as db:  # type: ignore[attr-defined]
                db.execute("UPDATE sessions SET closed = ? WHERE id = ?", (time.time(), self._row))


def sessions(path: Path) -> dict[str, list[tuple[float, float | None, int]]]:
    """Per instance, the (opened, closed, pid) intervals in opening order."""
    out: dict[str, list[tuple[float, float | None, int]]] = {}
    if not path.exists():
        return out
    with _db(str(path)) as db:
        rows = db.execute("SELECT instance, opened, closed, pid FROM sessions ORDER BY opened")
        for instance, opened, closed, pid in rows:
            out.setdefault(instance, []).append((opened, closed, pid))
    return out


def overlaps(path: Path, unclosed: float = float("inf")) -> list[str]:
    """Descriptions of every session that opened while another of its instance was open.

    A session never closed (its process was killed) counts as open for ``unclosed`` seconds:
    pass the lease TTL, after which another worker may rightly take over.
    """
    found = []
    for instance, spans in sessions(path).items():
        busy_until, holder = float("-inf"), 0
        for opened, closed, pid in spans:
            if opened < busy_until:
                found.append(
                    f"{instance}: pid {pid} opened at {opened:.3f} while pid {holder} "
                    f"had it open until {busy_until:.3f}"
                )
            end = closed if closed is not None else opened + unclosed
            if end > busy_until:
                busy_until, holder = end, pid
    return found
