"""Compose the MIME message of an outgoing CRM email (stdlib ``email`` package only).

Use :func:`compose_message` to turn an :class:`~router.models.OutboundEmail` into the bytes an
SMTP server receives. It builds:

* ``From`` (the email's sender - the CRM mailbox or queue address), ``To``, ``Cc``; ``Bcc``
  recipients go only into the envelope (:attr:`Composed.recipients`), never into a header;
* ``Subject`` with the CRM tracking token appended (unless it is already there);
* ``multipart/alternative`` with a plain-text rendering of the HTML body and the HTML itself;
  inline parts (with a Content-ID) make the HTML part ``multipart/related``;
* attachments, whose non-ASCII file names are encoded as RFC 2231 parameters;
* ``Message-ID`` (deterministic per CRM email, see :func:`message_id_for`, so a resend after an
  ambiguous crash carries the same id), ``Date``, ``In-Reply-To``/``References`` for replies,
  ``Importance`` for high/low priority.

Non-ASCII text anywhere is encoded (RFC 2047 words, base64/quoted-printable bodies, IDNA
domains), so the result is 7-bit clean; only an address whose *local part* is non-ASCII needs
SMTPUTF8, in which case the message is generated with UTF-8 headers and ``Composed.smtputf8``
is set.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.charset import BASE64, QP, Charset
from email.encoders import encode_base64
from email.generator import BytesGenerator
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from html.parser import HTMLParser
from io import BytesIO
from typing import Any

from router.models import Address, Attachment, OutboundEmail

#: Policy for 7-bit messages: CRLF line ends, lines folded at 78, RFC 2047 encoded words.
ASCII_POLICY = policy.SMTP


class _FastCompat32(policy.Compat32):
    """compat32 with CRLF line ends that writes short ASCII headers as they are.

    The stock policy builds and folds a Header object for every header, even
    ``Content-Transfer-Encoding: base64``; that alone was a third of composing a message.
    """

    def _fold(self, name: str, value: Any, sanitize: bool) -> str:
        if (
            isinstance(value, str)
            and value.isascii()
            and len(name) + len(value) + 2 <= 78
            and "\n" not in value
            and "\r" not in value
        ):
            return f"{name}: {value}{self.linesep}"
        return str(super()._fold(name, value, sanitize))  # type: ignore[misc]


#: Classic-API messages are generated with CRLF line ends.
_CRLF = _FastCompat32(linesep="\r\n")
#: Policy when an address needs SMTPUTF8.
UTF8_POLICY = policy.SMTPUTF8


@dataclass(frozen=True, slots=True)
class Composed:
    """A composed message: its bytes, Message-ID and envelope recipients (To + Cc + Bcc)."""

    raw: bytes
    message_id: str
    recipients: tuple[str, ...]
    smtputf8: bool = False

    def __repr__(self) -> str:  # never show the body
        return f"Composed({self.message_id!r}, bytes={len(self.raw)}, rcpts={len(self.recipients)})"


def compose_message(
    email: OutboundEmail,
    *,
    sender: Address | None = None,
    now: datetime | None = None,
) -> Composed:
    """Build the MIME message of ``email``; ``sender`` overrides its From address."""
    frm = sender if sender is not None and sender.email else email.sender
    message_id = message_id_for(email, frm.email)
    when = now or datetime.now(UTC)
    if _needs_utf8(frm, *email.to, *email.cc, *email.bcc):
        raw = _compose_utf8(email, frm, message_id, when)
        return Composed(raw, message_id, tuple(_envelope(email)), True)
    raw = _compose_ascii(email, frm, message_id, when)
    return Composed(raw, message_id, tuple(_envelope(email)), False)


def _compose_ascii(email: OutboundEmail, frm: Address, message_id: str, now: datetime) -> bytes:
    """The usual, 7-bit variant, built with the classic ``email.mime`` API.

    Why not ``EmailMessage``: its header objects parse and re-fold every value, which costs
    about 3 ms per message - more than the whole SMTP exchange with a local server.
    """
    body = _alternative(email)
    files = [a for a in email.attachments if not (a.inline and a.content_id)]
    root: Message = body
    if files:
        root = MIMEMultipart("mixed")
        root.attach(body)
        for attachment in files:
            root.attach(_legacy_attachment(attachment, "attachment"))
    _legacy_headers(root, email, frm, message_id, now)
    for part in root.walk():
        if part.is_multipart():
            # A random boundary with "=_" never occurs in base64 or quoted-printable text, and
            # setting it spares the generator a regex compile per part to look for collisions.
            part.set_boundary(f"=_{secrets.token_hex(12)}")
    buffer = BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=_CRLF).flatten(root)
    return buffer.getvalue()


def _legacy_headers(
    msg: Message, email: OutboundEmail, frm: Address, message_id: str, now: datetime
) -> None:
    headers: list[tuple[str, Any]] = [("From", _formatted(frm))]
    if email.to:
        headers.append(("To", ", ".join(_formatted(a) for a in email.to)))
    if email.cc:
        headers.append(("Cc", ", ".join(_formatted(a) for a in email.cc)))
    subject = subject_with_token(email.subject, email.tracking_token)
    headers.append(("Subject", subject if subject.isascii() else Header(subject, "utf-8")))
    headers.append(("Date", format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))))
    headers.append(("Message-ID", message_id))
    if email.in_reply_to:
        headers.append(("In-Reply-To", normalize_message_id(email.in_reply_to)))
    references = _references(email)
    if references:
        headers.append(("References", " ".join(references)))
    if email.importance in ("high", "low"):
        headers.append(("Importance", email.importance))
        headers.append(("X-Priority", "1" if email.importance == "high" else "5"))
    mime = [(k, v) for k, v in msg.items()]  # Content-Type etc. go after the envelope headers
    for key in {k for k, _ in mime}:
        del msg[key]
    for key, value in [*headers, *mime]:
        msg[key] = value


def _formatted(addr: Address) -> str:
    local, _, domain = addr.email.rpartition("@")
    email = f"{local}@{_idna(domain)}" if local else addr.email
    return formataddr((addr.name, email), charset="utf-8")


def _alternative(email: OutboundEmail) -> Message:
    html = email.body_html or "<p></p>"
    alternative = MIMEMultipart("alternative")
    alternative.attach(_text_part(html_to_text(html) or " ", "plain"))
    html_part = _text_part(html, "html")
    inline = [a for a in email.attachments if a.inline and a.content_id]
    if inline:
        related = MIMEMultipart("related")
        del related["MIME-Version"]
        related.attach(html_part)
        for attachment in inline:
            related.attach(_legacy_attachment(attachment, "inline"))
        html_part = related
    alternative.attach(html_part)
    del alternative["MIME-Version"]
    return alternative


def _text_part(text: str, subtype: str) -> Message:
    cte = _cte(text)
    if cte == "7bit":
        part = MIMEText(text, subtype, "us-ascii")
    else:
        charset = Charset("utf-8")
        charset.body_encoding = BASE64 if cte == "base64" else QP
        part = MIMEText(text, subtype, charset)  # type: ignore[arg-type]
    del part["MIME-Version"]
    return part


def _legacy_attachment(attachment: Attachment, disposition: str) -> Message:
    maintype, subtype = _split_type(attachment.mimetype)
    part = MIMEBase(maintype, subtype)
    part.set_payload(attachment.content)
    encode_base64(part)
    del part["MIME-Version"]
    name = attachment.filename or ("attachment" if disposition == "attachment" else "")
    if name:  # RFC 2231 (filename*=utf-8''...) for a non-ASCII name
        param: str | tuple[str, str, str] = name if name.isascii() else ("utf-8", "", name)
        part.add_header("Content-Disposition", disposition, filename=param)
    else:
        part.add_header("Content-Disposition", disposition)
    if attachment.content_id:
        part["Content-ID"] = normalize_message_id(attachment.content_id)
    return part


def _compose_utf8(email: OutboundEmail, frm: Address, message_id: str, now: datetime) -> bytes:
    """The SMTPUTF8 variant (raw UTF-8 addresses), built with the modern ``email`` API."""
    msg = EmailMessage(policy=UTF8_POLICY)
    _headers(msg, email, frm, message_id, now)
    _body(msg, email)
    for attachment in email.attachments:
        if not (attachment.inline and attachment.content_id):
            _attach(msg, attachment)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package adds it to sub-parts
    return msg.as_bytes(policy=msg.policy)


def message_id_for(email: OutboundEmail, sender: str) -> str:
    """The email's Message-ID: the CRM's own if it has one, else one derived from its id.

    The same CRM email always gets the same Message-ID, so every resend - and the bounce that
    may come back - can be matched to it.
    """
    if email.message_id:
        return normalize_message_id(email.message_id)
    # Short on purpose: a header line over 78 characters gets folded, and some readers keep
    # the folding white space in the id. The ledger maps the id back to the CRM email.
    digest = hashlib.sha256(email.email_id.encode("utf-8")).hexdigest()[:24]
    return f"<er.{digest}@{_domain(sender) or 'email-router.invalid'}>"


def normalize_message_id(value: str) -> str:
    """``<id@host>`` form of a Message-ID written with or without angle brackets."""
    value = value.strip()
    return value if value.startswith("<") and value.endswith(">") else f"<{value.strip('<>')}>"


def subject_with_token(subject: str, token: str | None) -> str:
    """The subject with the CRM tracking token appended, as the CRM's own router does."""
    subject = " ".join(subject.split())
    if not token or token in subject:
        return subject
    return f"{subject} {token}" if subject else token


# -- headers --------------------------------------------------------------------------------------
def _headers(
    msg: EmailMessage, email: OutboundEmail, frm: Address, message_id: str, now: datetime
) -> None:
    msg["From"] = _address(frm)
    if email.to:
        msg["To"] = [_address(a) for a in email.to]
    if email.cc:
        msg["Cc"] = [_address(a) for a in email.cc]
    msg["Subject"] = subject_with_token(email.subject, email.tracking_token)
    msg["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
    msg["Message-ID"] = message_id
    if email.in_reply_to:
        msg["In-Reply-To"] = normalize_message_id(email.in_reply_to)
    references = _references(email)
    if references:
        msg["References"] = " ".join(references)
    if email.importance in ("high", "low"):
        msg["Importance"] = email.importance
        msg["X-Priority"] = "1" if email.importance == "high" else "5"


def _references(email: OutboundEmail) -> list[str]:
    refs = [normalize_message_id(r) for r in email.references if r.strip()]
    if email.in_reply_to:
        parent = normalize_message_id(email.in_reply_to)
        if parent not in refs:
            refs.append(parent)
    return refs


def _address(addr: Address) -> HeaderAddress:
    local, _, domain = addr.email.rpartition("@")
    if not local:
        return HeaderAddress(display_name=addr.name, addr_spec=addr.email)
    return HeaderAddress(display_name=addr.name, username=local, domain=_idna(domain))


def _envelope(email: OutboundEmail) -> list[str]:
    seen: dict[str, None] = {}
    for addr in (*email.to, *email.cc, *email.bcc):
        seen.setdefault(addr.email, None)
    return list(seen)


def _needs_utf8(*addresses: Address) -> bool:
    return any(not a.email.rpartition("@")[0].isascii() for a in addresses)


def _domain(address: str) -> str:
    return _idna(address.rpartition("@")[2])


def _idna(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDN: leave it, SMTPUTF8 may still carry it
        return domain


# -- body -----------------------------------------------------------------------------------------
def _body(msg: EmailMessage, email: OutboundEmail) -> None:
    html = email.body_html or ""
    msg.set_content(html_to_text(html) or " ", cte=_cte(html))
    msg.add_alternative(html or "<p></p>", subtype="html", cte=_cte(html))
    inline = [a for a in email.attachments if a.inline and a.content_id]
    if inline:
        html_part = list(msg.iter_parts())[1]
        assert isinstance(html_part, EmailMessage)
        for attachment in inline:
            maintype, subtype = _split_type(attachment.mimetype)
            html_part.add_related(
                attachment.content,
                maintype,
                subtype,
                cid=normalize_message_id(attachment.content_id or ""),
                filename=attachment.filename or None,
                disposition="inline",
            )


def _cte(text: str) -> str:
    """Quoted-printable keeps mostly-ASCII bodies readable; base64 is smaller otherwise."""
    if text.isascii():
        return "quoted-printable" if any(len(line) > 900 for line in text.splitlines()) else "7bit"
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return "base64" if non_ascii * 3 > len(text) else "quoted-printable"


def _attach(msg: EmailMessage, attachment: Attachment) -> None:
    maintype, subtype = _split_type(attachment.mimetype)
    msg.add_attachment(
        attachment.content,
        maintype,
        subtype,
        filename=attachment.filename or "attachment",
        cid=normalize_message_id(attachment.content_id) if attachment.content_id else None,
    )


def _split_type(mimetype: str) -> tuple[str, str]:
    maintype, _, subtype = (mimetype or "").lower().partition("/")
    if not maintype or not subtype or maintype in ("multipart", "message"):
        # Containers would need a parsed payload; ship them as opaque bytes instead.
        return "application", "octet-stream"
    return maintype, subtype


# -- HTML -> text ---------------------------------------------------------------------------------
class _TextRenderer(HTMLParser):
    """Collects the readable text of an HTML body: blocks become lines, links keep their URL."""

    BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote"}
    )
    HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("* ")
        elif tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "a" and self.href:
            if self.href.startswith(("http:", "https:", "mailto:")):
                self.parts.append(f" <{self.href}>")
            self.href = None

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A plain-text rendering of ``html`` for the text/plain alternative."""
    renderer = _TextRenderer()
    renderer.feed(html)
    renderer.close()
    lines = (" ".join(line.split()) for line in "".join(renderer.parts).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else ""


__all__ = [
    "Composed",
    "compose_message",
    "html_to_text",
    "message_id_for",
    "normalize_message_id",
    "subject_with_token",
]
