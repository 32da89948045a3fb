"""Sample mail for the contract kit: incoming RFC 5322 messages and outbound CRM emails.

Use :func:`sample_message` to fill a mailbox under test and :func:`sample_email` to seed the
kit's CRM with an email to send. Both carry their number in the subject, so a test can tell
which one a server received or a mailbox still holds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence

from router.models import Address, OutboundEmail

#: The subject of the message the kit's provider wrapper refuses to fetch (a poisoned message).
POISON_SUBJECT = "kit poison"


def sample_message(n: int, *, size: int = 0, subject: str | None = None) -> bytes:
    """A small valid message number ``n`` (subject ``message n``, unique Message-ID).

    ``size`` pads the body to about that many bytes, in 72-byte lines.
    """
    body = f"Body of message {n}.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return (
        f"From: Sender {n} <sender{n}@example.org>\r\n"
        "To: inbox@example.com\r\n"
        f"Subject: {subject or f'message {n}'}\r\n"
        f"Message-ID: <m{n}.{uuid.uuid4().hex}@example.org>\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n{body}"
    ).encode()


def sample_email(n: int, recipients: Sequence[str] = ("to@example.com",)) -> OutboundEmail:
    """An outbound CRM email number ``n`` (id ``kit-n``, subject ``kit email n``)."""
    return OutboundEmail(
        email_id=f"kit-{n}",
        subject=f"kit email {n}",
        body_html=f"<p>Email {n} of the provider kit.</p>",
        sender=Address("sender@example.com", "Kit Sender"),
        to=tuple(Address(r) for r in recipients),
    )


def subject_of(raw: bytes) -> str:
    """The Subject header of a raw message (unfolded), or an empty string."""
    match = re.search(rb"^Subject: ?(.*(?:\r?\n[ \t].*)*)", raw, re.MULTILINE | re.IGNORECASE)
    if match is None:
        return ""
    return re.sub(r"\r?\n[ \t]+", " ", match.group(1).decode("utf-8", "replace")).strip()


def subjects(raws: Iterable[bytes]) -> list[str]:
    """The subjects of ``raws``, in order."""
    return [subject_of(raw) for raw in raws]
