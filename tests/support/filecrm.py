"""A CRM adapter keeping activities and outbound emails in one SQLite file, for multi-process tests.

The memory CRM lives inside one process; Celery workers are separate processes, so the end-to-end
tests use this adapter instead, selected with::

    <Deployment Name="test">
      <Adapter>tests.support.filecrm:FileCrm</Adapter>
      <CrmServerUrl>file:///tmp/.../crm.db</CrmServerUrl>
    </Deployment>

Like Dataverse it creates at most one activity per Message-ID and answers a repeat with
``duplicate=True``; unlike it, it also logs every ``deliver`` call (``calls`` table) so a test
can tell "the router never asked twice" from "the CRM caught the repeat". :class:`CrmFile` is
the test side: seed pending emails, read activities, calls and marks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from router.config import Deployment
from router.crm.base import CrmAdapter, DeliveryTarget, Owners
from router.errors import CrmRejected
from router.models import Activity, Address, DeliveryResult, OutboundEmail

SCHEMA = """
CREATE TABLE IF NOT EXISTS activities (
    message_id TEXT PRIMARY KEY, activity_id TEXT, mailbox TEXT, subject TEXT, pid INT, at REAL);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT, ref TEXT, duplicate INT, pid INT, at REAL);
CREATE TABLE IF NOT EXISTS outbound (
    email_id TEXT PRIMARY KEY, owner TEXT, doc TEXT, status TEXT DEFAULT 'pending',
    reason TEXT, attempts INT DEFAULT 0, sent_message_id TEXT);
"""


def connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=60000")
    conn.executescript(SCHEMA)
    return conn


class FileCrm(CrmAdapter):
    """CrmAdapter over a SQLite file shared by every process of a test."""

    name = "filecrm"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    @classmethod
    def from_deployment(cls, dep: Deployment) -> FileCrm:
        return cls(dep.crm_server_url.removeprefix("file://"))

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never share a connection over fork
            self._conn, self._pid = connect(self.path), os.getpid()
        return self._conn

    def _log(self, op: str, ref: str, duplicate: bool = False) -> None:
        self.db.execute(
            "INSERT INTO calls (op, ref, duplicate, pid, at) VALUES (?, ?, ?, ?, ?)",
            (op, ref, int(duplicate), os.getpid(), time.time()),
        )

    # -- incoming ------------------------------------------------------------------------------
    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM activities WHERE message_id = ?", (activity.message_id,)
        ).fetchone()
        return row is None

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        if not activity.message_id:
            raise CrmRejected("activity has no Message-ID")
        new_id = f"act-{os.getpid()}-{time.monotonic_ns()}"
        cur = self.db.execute(
            "INSERT OR IGNORE INTO activities VALUES (?, ?, ?, ?, ?, ?)",
            (
                activity.message_id,
                new_id,
                target.mailbox,
                activity.subject,
                os.getpid(),
                time.time(),
            ),
        )
        duplicate = cur.rowcount == 0
        self._log("deliver", activity.message_id, duplicate)
        if duplicate:
            (existing,) = self.db.execute(
                "SELECT activity_id FROM activities WHERE message_id = ?", (activity.message_id,)
            ).fetchone()
            return DeliveryResult(existing, duplicate=True)
        return DeliveryResult(new_id)

    # -- outgoing ------------------------------------------------------------------------------
    def list_pending(self, owners: Owners, limit: int) -> list[OutboundEmail]:
        wanted = [*owners.user_ids, *owners.queue_ids]
        rows = self.db.execute(
            "SELECT email_id, owner, doc, attempts FROM outbound WHERE status = 'pending' "
            "ORDER BY rowid"
        ).fetchall()
        found = [
            _email(doc, attempts)
            for _id, owner, doc, attempts in rows
            if not wanted or owner in wanted
        ]
        return found[:limit]

    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        self._update(email_id, "status = 'sent', sent_message_id = ?", (message_id,))
        self._log("mark_sent", email_id)

    def mark_failed(self, email_id: str, reason: str) -> None:
        self._update(email_id, "status = 'failed', reason = ?", (reason,))
        self._log("mark_failed", email_id)

    def record_attempt(self, email_id: str, attempts: int) -> None:
        self._update(email_id, "attempts = ?", (attempts,))

    def _update(self, email_id: str, assignments: str, values: tuple[Any, ...]) -> None:
        cur = self.db.execute(
            f"UPDATE outbound SET {assignments} WHERE email_id = ?", (*values, email_id)
        )
        if cur.rowcount == 0:
            raise CrmRejected(f"no email with id {email_id}")

    def who_am_i(self) -> str:
        return "filecrm"

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


def _email(doc: str, attempts: int) -> OutboundEmail:
    data = json.loads(doc)
    return OutboundEmail(
        email_id=data["email_id"],
        subject=data["subject"],
        body_html=data["body_html"],
        sender=Address(**data["sender"]),
        to=tuple(Address(**a) for a in data["to"]),
        delivery_attempts=attempts,
    )


class CrmFile:
    """The test's view of a FileCrm database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = connect(path)

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def add_outbound(self, email: OutboundEmail, owner: str = "") -> None:
        doc = json.dumps(
            {
                "email_id": email.email_id,
                "subject": email.subject,
                "body_html": email.body_html,
                "sender": asdict(email.sender),
                "to": [asdict(a) for a in email.to],
            }
        )
        self.db.execute(
            "INSERT INTO outbound (email_id, owner, doc) VALUES (?, ?, ?)",
            (email.email_id, owner, doc),
        )

    def activity_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM activities").fetchone()[0])

    def subjects(self) -> list[str]:
        """``mailbox/subject`` of every activity (subjects repeat across mailboxes)."""
        return [
            f"{r[0]}/{r[1]}" for r in self.db.execute("SELECT mailbox, subject FROM activities")
        ]

    def duplicate_calls(self) -> int:
        """deliver calls the CRM had to answer with duplicate=True."""
        return int(self.db.execute("SELECT COUNT(*) FROM calls WHERE duplicate = 1").fetchone()[0])

    def outbound_status(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT email_id, status FROM outbound").fetchall())

    def outbound_outcomes(self) -> dict[str, tuple[str, str, str]]:
        """``email_id -> (status, reason, subject)`` of every outbound email."""
        rows = self.db.execute("SELECT email_id, status, reason, doc FROM outbound").fetchall()
        return {e: (st, why or "", json.loads(doc)["subject"]) for e, st, why, doc in rows}

    def mark_counts(self, op: str = "mark_sent") -> dict[str, int]:
        rows = self.db.execute("SELECT ref, COUNT(*) FROM calls WHERE op = ? GROUP BY ref", (op,))
        return dict(rows.fetchall())

    def close(self) -> None:
        self.db.close()
