"""SQLite storage of the Dataverse simulator: emails, parties, attachments, notes, request log,
and the directory tables (mailboxes, queues, systemusers, emailserverprofiles) as JSON records.

Use :class:`Store` from the Flask app only. One connection is shared by the server's threads and
every statement runs under one lock: the simulator is a test and demo server, so simple and
correct beats fast. Each row carries the organisation (``org``) it belongs to, so one simulator
process serves several organisations (URL prefix ``/org/<name>/``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS emails (
    org TEXT NOT NULL, activityid TEXT PRIMARY KEY, subject TEXT, description TEXT,
    messageid TEXT, directioncode INTEGER NOT NULL DEFAULT 0, sender TEXT, torecipients TEXT,
    trackingtoken TEXT, deliveryattempts INTEGER NOT NULL DEFAULT 0,
    prioritycode INTEGER NOT NULL DEFAULT 1, statecode INTEGER NOT NULL DEFAULT 0,
    statuscode INTEGER NOT NULL DEFAULT 1, ownerid TEXT, queueid TEXT, emailsender TEXT,
    submittedby TEXT,
    receivedon TEXT, createdon REAL NOT NULL, modifiedon REAL NOT NULL, origin TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS emails_msgid ON emails (org, messageid);
CREATE INDEX IF NOT EXISTS emails_status ON emails (org, statuscode, createdon);
CREATE TABLE IF NOT EXISTS parties (
    org TEXT NOT NULL, activitypartyid TEXT PRIMARY KEY, activityid TEXT NOT NULL,
    participationtypemask INTEGER NOT NULL, addressused TEXT, partyid TEXT, partytype TEXT
);
CREATE INDEX IF NOT EXISTS parties_activity ON parties (activityid);
CREATE TABLE IF NOT EXISTS attachments (
    org TEXT NOT NULL, activitymimeattachmentid TEXT PRIMARY KEY, activityid TEXT NOT NULL,
    filename TEXT, mimetype TEXT, body TEXT, attachmentcontentid TEXT
);
CREATE INDEX IF NOT EXISTS attachments_activity ON attachments (activityid);
CREATE TABLE IF NOT EXISTS notes (
    org TEXT NOT NULL, annotationid TEXT PRIMARY KEY, activityid TEXT NOT NULL,
    subject TEXT, notetext TEXT, createdon REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    org TEXT NOT NULL, entity TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (org, entity, id)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, org TEXT, t_start REAL, t_end REAL, method TEXT,
    path TEXT, query TEXT, headers TEXT, body TEXT, status INTEGER, retry_after REAL,
    fingerprint TEXT, client_id TEXT, parent INTEGER, part INTEGER, fault TEXT
);
"""

#: Email columns a client may read (``$select``) - the stored subset of the real entity.
EMAIL_COLUMNS = (
    "activityid", "subject", "description", "messageid", "directioncode", "sender",
    "torecipients", "trackingtoken", "deliveryattempts", "prioritycode", "statecode",
    "statuscode", "submittedby", "receivedon", "createdon", "modifiedon",
)  # fmt: skip


def new_id() -> str:
    """A new record id (a GUID, as Dataverse uses)."""
    return str(uuid.uuid4())


class Store:
    """The simulator's database (``:memory:`` unless a path is given)."""

    def __init__(self, path: str = ":memory:") -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run several statements atomically (``BEGIN IMMEDIATE`` under the store lock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, tuple(args)).fetchall()]

    def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, tuple(args)).rowcount

    # -- emails ------------------------------------------------------------------------------

    def find_by_message_id(self, org: str, message_id: str) -> str | None:
        rows = self.query(
            "SELECT activityid FROM emails WHERE org=? AND messageid=? ORDER BY createdon LIMIT 1",
            (org, message_id),
        )
        return rows[0]["activityid"] if rows else None

    def insert_email(self, db: sqlite3.Connection, org: str, fields: dict[str, Any]) -> str:
        """Insert an email row (inside :meth:`transaction`) and return its id."""
        now = time.time()
        row = {"org": org, "activityid": new_id(), "createdon": now, "modifiedon": now}
        row.update(fields)
        cols = ", ".join(row)
        db.execute(
            f"INSERT INTO emails ({cols}) VALUES ({', '.join('?' * len(row))})", [*row.values()]
        )
        return str(row["activityid"])

    def insert_party(
        self, db: sqlite3.Connection, org: str, activity_id: str, party: dict[str, Any]
    ) -> None:
        db.execute(
            "INSERT INTO parties VALUES (?,?,?,?,?,?,?)",
            (org, new_id(), activity_id, party["participationtypemask"],
             party.get("addressused"), party.get("partyid"), party.get("partytype")),
        )  # fmt: skip

    def insert_attachment(
        self, db: sqlite3.Connection, org: str, activity_id: str, att: dict[str, Any]
    ) -> str:
        att_id = new_id()
        db.execute(
            "INSERT INTO attachments VALUES (?,?,?,?,?,?,?)",
            (org, att_id, activity_id, att.get("filename"), att.get("mimetype"),
             att.get("body"), att.get("attachmentcontentid")),
        )  # fmt: skip
        return att_id

    def get_email(self, org: str, activity_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM emails WHERE org=? AND activityid=?", (org, activity_id))
        return rows[0] if rows else None

    def update_email(self, org: str, activity_id: str, fields: dict[str, Any]) -> None:
        fields = {**fields, "modifiedon": time.time()}
        sets = ", ".join(f"{k}=?" for k in fields)
        self.execute(
            f"UPDATE emails SET {sets} WHERE org=? AND activityid=?",
            [*fields.values(), org, activity_id],
        )

    def parties(self, activity_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM parties WHERE activityid=? ORDER BY rowid", (activity_id,))

    def attachments(self, activity_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM attachments WHERE activityid=? ORDER BY rowid", (activity_id,)
        )

    def add_note(self, org: str, activity_id: str, subject: str, text: str) -> str:
        note_id = new_id()
        self.execute(
            "INSERT INTO notes VALUES (?,?,?,?,?,?)",
            (org, note_id, activity_id, subject, text, time.time()),
        )
        return note_id

    def list_emails(self, org: str | None, limit: int = 1000) -> list[dict[str, Any]]:
        """Emails (newest first) with parties, attachment names and notes, for the admin views."""
        where, args = ("WHERE org=?", [org]) if org else ("", [])
        rows = self.query(
            f"SELECT * FROM emails {where} ORDER BY createdon DESC LIMIT ?", [*args, limit]
        )
        for row in rows:
            row["parties"] = [
                {k: p[k] for k in ("participationtypemask", "addressused", "partyid")}
                for p in self.parties(row["activityid"])
            ]
            row["attachments"] = [
                {
                    "filename": a["filename"],
                    "mimetype": a["mimetype"],
                    "size": len(a["body"] or "") * 3 // 4,
                }
                for a in self.attachments(row["activityid"])
            ]
            notes = self.query(
                "SELECT notetext FROM notes WHERE activityid=? ORDER BY createdon",
                (row["activityid"],),
            )
            row["notes"] = [n["notetext"] for n in notes]
        return rows

    # -- directory records (mailboxes, queues, systemusers, emailserverprofiles) ---------------
    # Kept as one JSON object per row: the simulator filters them in Python (``tables.py``),
    # and a table's columns are declared once there, not in a schema per table.

    def put_records(self, org: str, entity: str, key: str, rows: list[dict[str, Any]]) -> None:
        """Insert or replace ``rows`` (each carries its id under ``key``), keeping their order."""
        with self.transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            for n, row in enumerate(rows, 1):
                db.execute(
                    "INSERT OR REPLACE INTO records VALUES (?,?,?,?,?)",
                    (org, entity, row[key], json.dumps(row), seq + n),
                )

    def records(self, org: str, entity: str) -> list[dict[str, Any]]:
        """Every record of ``entity`` in ``org``, in insertion order."""
        rows = self.query(
            "SELECT data FROM records WHERE org=? AND entity=? ORDER BY seq", (org, entity)
        )
        return [json.loads(r["data"]) for r in rows]

    def record(self, org: str, entity: str, record_id: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT data FROM records WHERE org=? AND entity=? AND id=?", (org, entity, record_id)
        )
        return json.loads(rows[0]["data"]) if rows else None

    def update_record(self, org: str, entity: str, record_id: str, fields: dict[str, Any]) -> bool:
        """Change some columns of one record; False when there is no such record."""
        with self.transaction() as db:
            found = db.execute(
                "SELECT data FROM records WHERE org=? AND entity=? AND id=?",
                (org, entity, record_id),
            ).fetchone()
            if found is None:
                return False
            row = {**json.loads(found["data"]), **fields}
            db.execute(
                "UPDATE records SET data=? WHERE org=? AND entity=? AND id=?",
                (json.dumps(row), org, entity, record_id),
            )
        return True

    def delete_record(self, org: str, entity: str, record_id: str) -> bool:
        return (
            self.execute(
                "DELETE FROM records WHERE org=? AND entity=? AND id=?", (org, entity, record_id)
            )
            > 0
        )

    # -- request log -------------------------------------------------------------------------

    def log_request(self, entry: dict[str, Any]) -> int:
        entry = {**entry}
        for key in ("headers", "body"):
            entry[key] = json.dumps(entry.get(key))
        cols = ", ".join(entry)
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO requests ({cols}) VALUES ({', '.join('?' * len(entry))})",
                [*entry.values()],
            )
            return int(cur.lastrowid or 0)

    def request_log(self, since: int = 0, org: str | None = None) -> list[dict[str, Any]]:
        where, args = "WHERE id>?", [str(since)]
        if org is not None:
            where, args = where + " AND org=?", [*args, org]
        rows = self.query(f"SELECT * FROM requests {where} ORDER BY id", args)
        for row in rows:
            row["headers"], row["body"] = json.loads(row["headers"]), json.loads(row["body"])
        return rows

    def reset(self, org: str | None = None) -> None:
        """Delete everything (of one organisation, or all)."""
        with self._lock:
            for table in ("emails", "parties", "attachments", "notes", "requests", "records"):
                if org is None:
                    self._db.execute(f"DELETE FROM {table}")
                else:
                    self._db.execute(f"DELETE FROM {table} WHERE org=?", (org,))
