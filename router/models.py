"""Domain values passed between providers, the MIME layer, the CRM adapters and the state store.

All are frozen dataclasses: cheap to build, hashable where it matters, and safe to share across
threads. None of them carries a secret. Raw message bytes only live in :class:`InboundMessage` and
in the state store's staging area; they never reach a log line or a task argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Direction(enum.StrEnum):
    """Which way an instance moves mail."""

    INCOMING = "Incoming"
    OUTGOING = "Outgoing"


class LedgerState(enum.StrEnum):
    """States of an idempotency-ledger entry.

    Incoming: STAGED -> DELIVERED -> DONE (post-processed on the server), or STAGED -> QUARANTINED.
    Outgoing: CLAIMED -> SUBMITTED -> SENT, or CLAIMED -> FAILED / back to RETRY.
    """

    STAGED = "staged"
    DELIVERED = "delivered"
    DONE = "done"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"
    CLAIMED = "claimed"
    RETRY = "retry"
    SUBMITTED = "submitted"
    SENT = "sent"
    FAILED = "failed"


class Classification(enum.StrEnum):
    """What kind of message an incoming email is (see router.mail.classify)."""

    NORMAL = "normal"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    READ_RECEIPT = "read_receipt"
    FEEDBACK_REPORT = "feedback_report"
    # not emails at all (the original router did not route them either): <NonEmailPolicy>
    FAX = "fax"
    VOICE_MAIL = "voice_mail"
    MISSED_CALL = "missed_call"
    INFOPATH_FORM = "infopath_form"
    MEETING_REQUEST = "meeting_request"
    MEETING_CANCELLATION = "meeting_cancellation"
    MEETING_RESPONSE = "meeting_response"


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One message on a mail server, as a provider names it.

    ``key`` is unique within the instance and stable across polls: IMAP uses
    ``"<uidvalidity>:<uid>"``, POP3 the UIDL. ``size`` is the server's size in bytes when known, so
    the size guard can refuse a message before downloading it.
    """

    key: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """The raw bytes of one fetched message and the ref it came from."""

    ref: MessageRef
    raw: bytes

    def __repr__(self) -> str:  # never show the body
        return f"InboundMessage(ref={self.ref!r}, bytes={len(self.raw)})"


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: display name (may be empty) and address."""

    email: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment (or inline part) of an email."""

    filename: str
    mimetype: str
    content: bytes
    content_id: str | None = None
    inline: bool = False

    def __repr__(self) -> str:
        return f"Attachment({self.filename!r}, {self.mimetype!r}, bytes={len(self.content)})"


@dataclass(frozen=True, slots=True)
class BounceInfo:
    """What a delivery status notification says about the message it reports on."""

    original_message_id: str | None
    recipients: tuple[str, ...] = ()
    status: str = ""
    diagnostic: str = ""


@dataclass(frozen=True)
class Activity:
    """The fields of a CRM email activity built from one incoming message (router.mail.parse)."""

    message_id: str
    subject: str
    body_html: str
    sender: Address | None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    received_on: datetime | None = None
    importance: str = "normal"
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = ()
    classification: Classification = Classification.NORMAL
    bounce: BounceInfo | None = None

    def __repr__(self) -> str:
        return (
            f"Activity(message_id={self.message_id!r}, attachments={len(self.attachments)}, "
            f"classification={self.classification.value})"
        )


@dataclass(frozen=True)
class OutboundEmail:
    """A CRM email waiting to be sent (pulled from the CRM by an outgoing instance).

    ``email_id`` is the CRM's activity id; ``message_id`` is set when the CRM already holds one
    (a resend), otherwise the composer makes one and the CRM is told it when marked Sent.
    """

    email_id: str
    subject: str
    body_html: str
    sender: Address
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    tracking_token: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    delivery_attempts: int = 0
    importance: str = "normal"

    def __repr__(self) -> str:
        return f"OutboundEmail(email_id={self.email_id!r}, recipients={self.recipient_count})"

    @property
    def recipient_count(self) -> int:
        """To, Cc and Bcc together."""
        return len(self.to) + len(self.cc) + len(self.bcc)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What the CRM did with one delivered activity."""

    activity_id: str | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One idempotency-ledger record: a message of an instance and how far it got."""

    instance: str
    key: str
    state: LedgerState
    updated_at: float
    message_id: str | None = None
    activity_id: str | None = None
    reason: str | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
