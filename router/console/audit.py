"""The console's audit log: one JSON object per line for every action an operator takes.

Use :class:`AuditLog` from the views: :meth:`AuditLog.record` appends who did what to which
instance or message, from where, and how it ended (sign-in attempts, replay, drop, pause,
resume, poll now, Test Access and every "show body"). A line never holds a password, a
message body or a header value: names, keys and outcomes only.

Where it goes: ``--audit-log`` or ``ROUTER_CONSOLE_AUDIT_LOG``; else, for a SQLite state store,
``console-audit.jsonl`` next to the database file; else ``console-audit.jsonl`` in the working
directory (:func:`default_path`). The file is created with mode 0600 and only appended to.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from flask import current_app

#: Key of the app's AuditLog in ``app.extensions``.
EXTENSION = "email_router_console_audit"
#: File name of the audit log when no path is given.
AUDIT_FILE = "console-audit.jsonl"
_SQLITE = "sqlite:///"


def default_path(state_url: str) -> Path:
    """Next to the SQLite database of ``state_url``; else in the working directory."""
    if state_url.startswith(_SQLITE):
        database = Path(state_url.removeprefix(_SQLITE).partition("?")[0])
        if str(database) not in ("", ":memory:"):
            return database.parent / AUDIT_FILE
    return Path.cwd() / AUDIT_FILE


class AuditLog:
    """Appends audit records to one file (safe for the server's threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, user: str | None, action: str, outcome: str, **details: str | None) -> None:
        """Append one line: time, user, action, outcome and ``details`` (instance, key, ...)."""
        line = {
            "time": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
            "user": user,
            "action": action,
            "outcome": outcome,
            **{k: v for k, v in details.items() if v is not None},
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def check_writable(self) -> None:
        """OSError now, at start, rather than at the first action, when the file cannot be used."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))


def audit_log() -> AuditLog:
    """The audit log of the app serving this request (set by ``create_app``)."""
    log = current_app.extensions[EXTENSION]
    if not isinstance(log, AuditLog):
        raise TypeError("the console app has no audit log")
    return log
