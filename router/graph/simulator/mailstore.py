"""Mailboxes of the Graph simulator: folders, messages and the state behind delta rounds.

Use :class:`MailStore` (one per simulator process, thread-safe). Mailboxes appear on first use
with the well-known folders ``inbox``, ``archive``, ``deleteditems`` and ``sentitems``. Each
change to a folder (a message added, moved in or out, read, deleted) takes the next number of
the mailbox's change sequence; a delta link remembers the number its round started at, so the
next round returns what changed after it (moved-out and deleted messages as ``@removed``
rows). Message ids change when a message moves folders, as in Exchange. Delta and skip tokens
are opaque keys of server-side state; :meth:`MailStore.expire_tokens` forgets them, so their
next use answers 410 Gone (``SyncStateNotFound``), as an expired Exchange sync state does.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import itertools
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

WELL_KNOWN = {
    "inbox": "Inbox",
    "archive": "Archive",
    "deleteditems": "Deleted Items",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
}


#: The extended property PR_MESSAGE_SIZE, the one size Graph v1.0 gives for a message.
SIZE_PROPERTY = "Integer 0x0E08"


class NotFound(KeyError):
    """Raised for an unknown mailbox folder or message (the API answers 404)."""


class SyncStateGone(KeyError):
    """Raised for an unknown or expired delta/skip token (the API answers 410)."""


@dataclass
class Message:
    """One stored message: its MIME bytes and the properties delta rows show."""

    id: str
    folder_id: str
    mime: bytes
    internet_message_id: str
    subject: str
    received: str
    is_read: bool = False
    seq: int = 0
    #: a draft's file attachments, (name, content type, bytes), added to the MIME on send
    files: list[tuple[str, str, bytes]] = field(default_factory=list)

    def row(self, select: list[str] | None) -> dict[str, Any]:
        full = {
            "id": self.id,
            "internetMessageId": self.internet_message_id,
            "subject": self.subject,
            "receivedDateTime": self.received,
            "isRead": self.is_read,
            "parentFolderId": self.folder_id,
        }
        if select:
            full = {k: v for k, v in full.items() if k == "id" or k in select}
        if select and SIZE_PROPERTY in select:  # $expand of PR_MESSAGE_SIZE, see graphapi
            full["singleValueExtendedProperties"] = [
                {"id": "Integer 0xe08", "value": str(len(self.mime))}
            ]
        return full


@dataclass
class Folder:
    """A mail folder: id, display name and well-known name (if any)."""

    id: str
    display_name: str
    well_known: str | None = None
    removed: list[tuple[int, str]] = field(default_factory=list)  # (seq, old message id)

    def json(self, total: int) -> dict[str, Any]:
        return {"id": self.id, "displayName": self.display_name, "totalItemCount": total}


@dataclass
class Round:
    """Server-side state of one delta round: the rows still to page through and its end."""

    mailbox: str
    folder_id: str
    rows: list[dict[str, Any]]
    until_seq: int
    select: list[str] | None


@dataclass
class Mailbox:
    """One mailbox: folders by id, messages by id, its change sequence."""

    address: str
    folders: dict[str, Folder] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class MailStore:
    """Every mailbox of the simulator, the delta tokens and the sent log."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._boxes: dict[str, Mailbox] = {}
        self._rounds: dict[str, tuple[Round, int]] = {}  # skip token -> (round, offset)
        self._deltas: dict[str, tuple[str, str, int, list[str] | None]] = {}  # delta tokens
        self._sent: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    # -- mailboxes and folders -----------------------------------------------------------------

    def mailbox(self, address: str) -> Mailbox:
        """The mailbox ``address`` (created with the well-known folders on first use)."""
        key = address.lower()
        with self._lock:
            box = self._boxes.get(key)
            if box is None:
                box = self._boxes[key] = Mailbox(key)
                for name, display in WELL_KNOWN.items():
                    self._add_folder(box, display, name)
            return box

    def _add_folder(self, box: Mailbox, display_name: str, well_known: str | None) -> Folder:
        folder = Folder(f"AAMk-folder-{uuid.uuid4().hex[:16]}", display_name, well_known)
        box.folders[folder.id] = folder
        return folder

    def folder(self, address: str, name: str, create: bool = False) -> Folder:
        """A folder by id, well-known name or display name (case-insensitive)."""
        box = self.mailbox(address)
        with self._lock:
            for folder in box.folders.values():
                if name in (folder.id, folder.well_known):
                    return folder
            for folder in box.folders.values():
                if folder.display_name.lower() == name.lower():
                    return folder
            if create:
                return self._add_folder(box, name, None)
        raise NotFound(f"folder {name!r}")

    def folders(self, address: str, display_name: str | None = None) -> list[dict[str, Any]]:
        """The folders of a mailbox as Graph shows them (optionally one display name)."""
        box = self.mailbox(address)
        with self._lock:
            found = [
                f.json(self._count(box, f.id))
                for f in box.folders.values()
                if display_name is None or f.display_name.lower() == display_name.lower()
            ]
        return found

    def _count(self, box: Mailbox, folder_id: str) -> int:
        return sum(1 for m in box.messages.values() if m.folder_id == folder_id)

    # -- messages ------------------------------------------------------------------------------

    def add(self, address: str, folder_name: str, mime: bytes, is_read: bool = False) -> str:
        """Store a message in a folder (created when missing); return its id."""
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(mime)
        folder = self.folder(address, folder_name, create=True)
        box = self.mailbox(address)
        with self._lock:
            number = next(self._ids)
            received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            message = Message(
                id=_message_id(number),
                folder_id=folder.id,
                mime=mime,
                internet_message_id=str(headers.get("Message-ID", "") or ""),
                subject=str(headers.get("Subject", "") or ""),
                received=received,
                is_read=is_read,
                seq=box.next_seq(),
            )
            box.messages[message.id] = message
            return message.id

    def message(self, address: str, message_id: str) -> Message:
        box = self.mailbox(address)
        with self._lock:
            if message_id not in box.messages:
                raise NotFound(f"message {message_id!r}")
            return box.messages[message_id]

    def mark_read(self, address: str, message_id: str, is_read: bool) -> Message:
        with self._lock:
            message = self.message(address, message_id)
            message.is_read = is_read
            message.seq = self.mailbox(address).next_seq()
            return message

    def move(self, address: str, message_id: str, destination: str) -> Message:
        """Move a message; it gets a new id, and its old folder records the removal."""
        box = self.mailbox(address)
        with self._lock:
            message = self.message(address, message_id)
            target = self.folder(address, destination)
            old = box.folders[message.folder_id]
            del box.messages[message_id]
            old.removed.append((box.next_seq(), message_id))
            message.id, message.folder_id = _message_id(next(self._ids)), target.id
            message.seq = box.next_seq()
            box.messages[message.id] = message
            return message

    def delete(self, address: str, message_id: str) -> None:
        """Delete a message: it moves to Deleted Items (deleted for good from there)."""
        with self._lock:
            message = self.message(address, message_id)
            trash = self.folder(address, "deleteditems")
            if message.folder_id != trash.id:
                self.move(address, message_id, trash.id)
                return
            box = self.mailbox(address)
            del box.messages[message_id]
            trash.removed.append((box.next_seq(), message_id))

    def listing(self, address: str, folder_name: str) -> list[dict[str, Any]]:
        """What a folder holds, oldest first (admin view: with the MIME length)."""
        folder = self.folder(address, folder_name)
        box = self.mailbox(address)
        with self._lock:
            rows = [
                {**m.row(None), "size": len(m.mime)}
                for m in box.messages.values()
                if m.folder_id == folder.id
            ]
        return rows

    # -- delta rounds --------------------------------------------------------------------------

    def start_round(
        self, address: str, folder_name: str, select: list[str] | None, since: int = 0
    ) -> str:
        """Begin a round over changes after ``since`` (0: every message); return a skip token."""
        folder = self.folder(address, folder_name)
        box = self.mailbox(address)
        with self._lock:
            changed = sorted(
                (m for m in box.messages.values() if m.folder_id == folder.id and m.seq > since),
                key=lambda m: m.seq,
            )
            rows = [m.row(select) for m in changed]
            if since:
                rows += [
                    {"id": old, "@removed": {"reason": "deleted"}}
                    for seq, old in folder.removed
                    if seq > since
                ]
            token = uuid.uuid4().hex
            self._rounds[token] = (Round(box.address, folder.id, rows, box.seq, select), 0)
            return token

    def resume_delta(self, address: str, delta_token: str) -> str:
        """Begin the round a delta token asks for (changes since its round); a skip token."""
        with self._lock:
            state = self._deltas.get(delta_token)
            if state is None or state[0] != address.lower():
                raise SyncStateGone(delta_token)
            _, folder_id, since, select = state
        return self.start_round(address, folder_id, select, since)

    def page(self, address: str, skip_token: str, size: int) -> tuple[list[dict[str, Any]], str]:
        """The ``size`` rows at a skip token and ``("skip"|"delta") + ":" + next token``.

        Skip tokens stay valid (until expired), so a page can be read again.
        """
        with self._lock:
            found = self._rounds.get(skip_token)
            if found is None or found[0].mailbox != address.lower():
                raise SyncStateGone(skip_token)
            state, offset = found
            rows = state.rows[offset : offset + size]
            if offset + size < len(state.rows):
                token = uuid.uuid4().hex
                self._rounds[token] = (state, offset + size)
                return rows, f"skip:{token}"
            token = uuid.uuid4().hex
            self._deltas[token] = (state.mailbox, state.folder_id, state.until_seq, state.select)
            return rows, f"delta:{token}"

    def expire_tokens(self, address: str | None = None) -> int:
        """Forget the delta and skip tokens (of one mailbox, or all); return how many."""
        with self._lock:
            keep = address.lower() if address else None
            rounds = [t for t, r in self._rounds.items() if keep in (None, r[0].mailbox)]
            deltas = [t for t, d in self._deltas.items() if keep in (None, d[0])]
            for token in rounds:
                del self._rounds[token]
            for token in deltas:
                del self._deltas[token]
            return len(rounds) + len(deltas)

    # -- sending -------------------------------------------------------------------------------

    def record_sent(self, sender: str, mime: bytes, save: bool) -> dict[str, Any]:
        """Log a sendMail; with ``save`` the MIME also lands in the sender's Sent Items."""
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(mime)
        entry = {
            "sender": sender.lower(),
            "message_id": str(headers.get("Message-ID", "") or ""),
            "subject": str(headers.get("Subject", "") or ""),
            "to": str(headers.get("To", "") or ""),
            "cc": str(headers.get("Cc", "") or ""),
            "bcc": str(headers.get("Bcc", "") or ""),
            "saved": save,
            "size": len(mime),
            "mime": mime.decode("utf-8", "replace"),
        }
        with self._lock:
            self._sent.append(entry)
        if save:
            self.add(sender, "sentitems", mime, is_read=True)
        return entry

    def attach(
        self, address: str, draft_id: str, name: str, content_type: str, data: bytes
    ) -> None:
        """Add a file attachment to a message (a draft)."""
        with self._lock:
            self.message(address, draft_id).files.append((name, content_type, data))

    def draft_mime(self, address: str, draft_id: str) -> bytes:
        """The MIME a draft is sent as: its own, with its attachments added."""
        with self._lock:
            message = self.message(address, draft_id)
            mime, files = message.mime, list(message.files)
        if not files:
            return mime
        parsed = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(mime)
        assert isinstance(parsed, email.message.EmailMessage)
        for name, content_type, data in files:
            maintype, _, subtype = content_type.partition("/")
            parsed.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        return parsed.as_bytes()

    def forget(self, address: str, message_id: str) -> None:
        """Remove a message for good (a sent draft: Graph keeps the Sent Items copy only)."""
        box = self.mailbox(address)
        with self._lock:
            message = self.message(address, message_id)
            del box.messages[message_id]
            box.folders[message.folder_id].removed.append((box.next_seq(), message_id))

    def sent(self, sender: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._sent if sender is None or e["sender"] == sender.lower()]


def _message_id(number: int) -> str:
    """An opaque Exchange-like message id (it changes when the message moves)."""
    return f"AAMkAG-{number:08d}-{uuid.uuid4().hex[:12]}="
