"""Messages over Graph's 4 MB ``sendMail`` limit: a draft, its attachments, then ``send``.

Use :class:`DraftSender` from the graph outgoing provider when a message's base64 MIME is over
:data:`MAX_SEND_BYTES`. It takes the message's top-level attachments out of the MIME, creates a
draft from what is left (``POST /users/{mailbox}/messages``, base64 MIME: headers, Message-ID and
body as composed), attaches each file - one ``POST .../attachments`` below 3 MB, an upload
session (``createUploadSession``, then ``PUT`` ranges of :data:`UPLOAD_CHUNK` bytes to its
``uploadUrl``, which carries its own token) from 3 MB to 150 MB - and gives the caller the URL
that sends the draft (``POST .../messages/{id}/send``). Sending is the provider's commit point;
everything here happens before it, so a failure here means nothing was sent: the draft is
deleted (best effort) and the error says whether to retry (ProviderUnavailable) or not
(MessageRejected). A process killed between the draft and ``send`` leaves the draft in the
mailbox's Drafts folder.

Needs the application permission ``Mail.ReadWrite`` besides ``Mail.Send`` (drafts are items in
the mailbox). Graph keeps a sent draft in Sent Items whatever ``save_to_sent_items`` says.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote

import requests

from router.errors import MessageRejected, ProviderUnavailable, RouterError
from router.graph.client import GraphClient, error_code
from router.oauth import describe, origin_of

log = logging.getLogger(__name__)

#: Graph's limit for a MIME request body (the base64 text), for sendMail and a draft alike.
MAX_SEND_BYTES = 4 * 1024 * 1024
#: Attachments below this go in one POST; larger ones through an upload session.
INLINE_ATTACHMENT_BYTES = 3 * 1024 * 1024
#: Graph's limit for one attachment through an upload session.
MAX_ATTACHMENT_BYTES = 150 * 1024 * 1024
#: Bytes per PUT of an upload session: under Graph's 4 MB, a multiple of 320 KiB.
UPLOAD_CHUNK = 12 * 320 * 1024


@dataclass(frozen=True)
class Attachment:
    """A file taken out of a message: its name, MIME type and decoded bytes."""

    name: str
    content_type: str
    data: bytes


def split_attachments(message: bytes) -> tuple[bytes, list[Attachment]]:
    """``message`` without its top-level attachments (``Content-Disposition: attachment`` parts
    of a ``multipart/mixed``), and those attachments; ``(message, [])`` when it has none."""
    parsed = BytesParser(policy=policy.SMTP).parsebytes(message)
    if not isinstance(parsed, EmailMessage) or parsed.get_content_type() != "multipart/mixed":
        return message, []
    parts = [p for p in parsed.iter_parts() if isinstance(p, EmailMessage)]
    taken = {id(p): file for p in parts if (file := _file(p)) is not None}
    if not taken:
        return message, []
    parsed.set_payload([p for p in parts if id(p) not in taken])
    return parsed.as_bytes(), list(taken.values())


def _file(part: EmailMessage) -> Attachment | None:
    """The file a part attaches; None for a body part, or one that is not plain bytes (an
    attached message or multipart stays in the draft, as Graph could not take it as a file)."""
    if part.get_content_disposition() != "attachment" or part.get_content_maintype() in (
        "multipart", "message"
    ):  # fmt: skip
        return None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    return Attachment(part.get_filename() or "attachment", part.get_content_type(), data)


class DraftSender:
    """Builds the draft of one large message in ``mailbox``; see the module docstring."""

    def __init__(self, client: GraphClient, mailbox: str, name: str) -> None:
        self.client, self.name = client, name
        self._messages = f"users/{quote(mailbox, safe='@')}/messages"

    def prepare(self, message: bytes) -> str:
        """Create the draft of ``message`` with all its attachments; return the draft's id."""
        rest, attachments = split_attachments(message)
        body = base64.b64encode(rest)
        self._check_sizes(body, attachments)
        draft = self._create(body)
        try:
            for attachment in attachments:
                self._attach(draft, attachment)
        except BaseException:
            self.discard(draft)
            raise
        return draft

    def send_url(self, draft: str) -> str:
        """The URL whose POST sends ``draft`` (the caller's commit point)."""
        return self.client.url(f"{self._messages}/{quote(draft, safe='')}/send")

    def discard(self, draft: str) -> None:
        """Delete ``draft``, which was not sent; a failure is logged, never raised."""
        try:
            self.client.request("DELETE", f"{self._messages}/{quote(draft, safe='')}")
        except RouterError as exc:
            log.warning("%s: could not delete an unsent draft from Drafts: %s", self.name, exc)

    def _check_sizes(self, body: bytes, attachments: list[Attachment]) -> None:
        if len(body) > MAX_SEND_BYTES:
            raise MessageRejected(
                f"{self.name}: not sent: without its attachments the message is still "
                f"{len(body) / 1e6:.1f} MB as base64, over Graph's 4 MB limit"
            )
        for attachment in attachments:
            if len(attachment.data) > MAX_ATTACHMENT_BYTES:
                raise MessageRejected(
                    f"{self.name}: not sent: an attachment is "
                    f"{len(attachment.data) / 1e6:.0f} MB, over Graph's 150 MB limit"
                )

    def _create(self, body: bytes) -> str:
        response = self.client.request(
            "POST", self._messages, data=body, headers={"Content-Type": "text/plain"}
        )
        return str(self._expect(response, 201, "create the draft")["id"])

    def _attach(self, draft: str, attachment: Attachment) -> None:
        path = f"{self._messages}/{quote(draft, safe='')}/attachments"
        if len(attachment.data) < INLINE_ATTACHMENT_BYTES:
            file = {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": attachment.name,
                "contentType": attachment.content_type,
                "contentBytes": base64.b64encode(attachment.data).decode("ascii"),
            }
            self._expect(self.client.request("POST", path, json=file), 201, "attach a file")
            return
        item = {
            "attachmentType": "file",
            "name": attachment.name,
            "size": len(attachment.data),
            "contentType": attachment.content_type,
        }
        session = self.client.request(
            "POST", f"{path}/createUploadSession", json={"AttachmentItem": item}
        )
        self._upload(str(self._expect(session, 201, "open an upload session")["uploadUrl"]),
                     attachment.data)  # fmt: skip

    def _upload(self, url: str, data: bytes) -> None:
        """PUT ``data`` in ranges; the URL carries its own token, so none is sent."""
        total = len(data)
        for start in range(0, total, UPLOAD_CHUNK):
            end = min(start + UPLOAD_CHUNK, total) - 1
            headers = {
                "Content-Range": f"bytes {start}-{end}/{total}",
                "Content-Type": "application/octet-stream",
            }
            chunk = data[start : end + 1]
            try:
                response = self.client.http.request(
                    "PUT", url, data=chunk, headers=headers, timeout=self.client.timeout
                )
            except requests.RequestException as exc:
                raise ProviderUnavailable(
                    f"{self.name}: not sent: upload to {origin_of(url)}: {describe(exc)}"
                ) from None
            self._expect(response, 201 if end + 1 == total else 200, "upload an attachment")

    def _expect(self, response: requests.Response, status: int, what: str) -> Any:
        """The JSON of ``response`` when it has ``status``; the error it means otherwise."""
        if response.status_code == status:
            with contextlib.suppress(ValueError):
                return response.json()
            return {}
        reason = f"HTTP {response.status_code} {error_code(response)}".strip()
        if response.status_code in (400, 413, 415):
            raise MessageRejected(f"{self.name}: Graph refused the message ({what}): {reason}")
        hint = " - drafts need the application permission Mail.ReadWrite" if (
            response.status_code == 403) else ""  # fmt: skip
        raise ProviderUnavailable(f"{self.name}: not sent: could not {what}: {reason}{hint}")


__all__ = ["MAX_SEND_BYTES", "Attachment", "DraftSender", "split_attachments"]
