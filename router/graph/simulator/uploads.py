"""Attachment upload sessions of the simulator (``createUploadSession`` and its ``PUT`` ranges).

Use :class:`Uploads` from :class:`~router.graph.simulator.graphapi.GraphApi`. As in Graph, a
session is opened for one file of a draft (3 MB to 150 MB), its ``uploadUrl`` carries its own
token (no bearer token is needed, or looked at), the ranges must come in order, each at most
:data:`MAX_RANGE` bytes, and the last one attaches the file to the draft (201). What the
session received is kept per session only, never logged.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Graph's bounds for a file uploaded through a session.
MIN_SESSION_FILE = 3 * 1024 * 1024
MAX_SESSION_FILE = 150 * 1024 * 1024
#: The most one PUT may carry.
MAX_RANGE = 4 * 1024 * 1024
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

#: Attaches a finished file: (mailbox, draft id, name, content type, bytes).
Attach = Callable[[str, str, str, str, bytes], None]


@dataclass
class Session:
    """One upload in progress."""

    mailbox: str
    draft: str
    name: str
    content_type: str
    size: int
    token: str
    received: bytearray = field(default_factory=bytearray)


class Uploads:
    """Open sessions by id; :meth:`put` answers ``(status, json)`` as Graph's upload URL does."""

    def __init__(self, attach: Attach) -> None:
        self._attach = attach
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def open(
        self, mailbox: str, draft: str, name: str, content_type: str, size: int
    ) -> tuple[str, str]:
        """Open a session; ``(session id, token)``. The caller checked the size."""
        sid, token = secrets.token_hex(8), secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[sid] = Session(mailbox, draft, name, content_type, size, token)
        return sid, token

    def put(self, sid: str, token: str, content_range: str, data: bytes) -> tuple[int, Any]:
        """Take one range of session ``sid``."""
        with self._lock:
            session = self._sessions.get(sid)
        if session is None or not secrets.compare_digest(session.token, token):
            return 404, _error("ErrorItemNotFound", "The upload session was not found.")
        problem = _range_problem(session, content_range, data)
        if problem is not None:
            return problem
        session.received += data
        if len(session.received) < session.size:
            return 200, {"nextExpectedRanges": [f"{len(session.received)}-"]}
        with self._lock:
            self._sessions.pop(sid, None)
        self._attach(session.mailbox, session.draft, session.name, session.content_type,
                     bytes(session.received))  # fmt: skip
        return 201, None


def _range_problem(session: Session, content_range: str, data: bytes) -> tuple[int, Any] | None:
    found = _RANGE.fullmatch(content_range.strip())
    if found is None:
        return 400, _error("InvalidContentRange", "Content-Range must be bytes a-b/total.")
    start, end, total = (int(g) for g in found.groups())
    if total != session.size or start != len(session.received) or end < start:
        expected = {"nextExpectedRanges": [f"{len(session.received)}-"]}
        return 416, {**_error("InvalidRange", "The range is not the next expected one."),
                     **expected}  # fmt: skip
    if len(data) != end - start + 1:
        return 400, _error("InvalidContentLength", "The body does not match Content-Range.")
    if len(data) > MAX_RANGE or end >= total:
        return 413, _error("RequestEntityTooLarge", "A range is at most 4 MB, within the file.")
    return None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
