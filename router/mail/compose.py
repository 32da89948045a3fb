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

Hostile CRM data: :func:`sanitized` runs first. Every party goes through the one address parser
(:mod:`router.mail.addresses`; a bad one raises :class:`~router.mail.addresses.AddressRefused`), and
:attr:`Composed.email` is that parsed email - the envelope (``Composed.recipients``) and the
To/Cc headers are written from it alone, so they always name the same mailboxes. Control
characters never reach a header (subject, file names, content ids, MIME types), NULs never reach
the body, and header lines stay short (folded at 78, never past 998 octets): a word too long
to fold is written as RFC 2047 encoded words, which can be split anywhere.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email import policy
from email.base64mime import body_encode as body_encode_b64
from email.charset import Charset
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.quoprimime import body_encode as body_encode_qp
from email.utils import encode_rfc2231, format_datetime, formataddr, quote
from html.parser import HTMLParser

from router.errors import QuarantineError
from router.mail.addresses import AddressRefused, clean_parties, parse_address, parse_party
from router.models import Address, Attachment, OutboundEmail

CRLF = "\r\n"
#: The longest line RFC 5322 2.1.1 allows, in octets, without its CRLF.
MAX_LINE = 998
#: Header lines longer than this are folded (RFC 5322 2.1.1 recommends 78).
FOLD_AT = 78
#: Policy when an address needs SMTPUTF8 (raw UTF-8 headers; built with ``EmailMessage``).
UTF8_POLICY = policy.SMTPUTF8
#: Subjects are cut to this many characters (before the tracking token): Dataverse itself
#: stores at most 800, and nobody reads more.
MAX_SUBJECT = 998
#: Attachment file names are cut to this many characters (the usual file system limit).
MAX_FILENAME = 255
#: Message-IDs and Content-IDs longer than this are not ids but junk; they are left out.
MAX_ID = 250
#: The longest RFC 2047 encoded word (RFC 2047 2), and the charset names are encoded in.
_WORD_MAX, _UTF8 = 75, Charset("utf-8")
#: Characters a MIME type token may not hold besides controls and space (RFC 2045 tspecials).
_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')


class UnsendableEmail(QuarantineError):
    """Raised when an email cannot be written as a valid message; it fails with the reason."""


@dataclass(frozen=True, slots=True)
class Composed:
    """A composed message: its bytes, Message-ID and envelope recipients (To + Cc + Bcc).

    ``email`` is the sanitized email the message was written from: hand it, not the CRM's
    original, to the provider, so every provider sends to exactly the parsed recipients.
    """

    raw: bytes
    message_id: str
    recipients: tuple[str, ...]
    smtputf8: bool
    email: OutboundEmail

    def __repr__(self) -> str:  # never show the body
        return f"Composed({self.message_id!r}, bytes={len(self.raw)}, rcpts={len(self.recipients)})"


def compose_message(
    email: OutboundEmail,
    *,
    sender: Address | None = None,
    now: datetime | None = None,
) -> Composed:
    """Build the MIME message of ``email``; ``sender`` overrides its From address.

    Raises :class:`~router.mail.addresses.AddressRefused` when a party's address cannot be used.
    """
    email = sanitized(email)
    frm = parse_party(sender) if sender is not None and sender.email else email.sender
    message_id = message_id_for(email, frm.email)
    when = now or datetime.now(UTC)
    utf8 = _needs_utf8(frm, *email.to, *email.cc, *email.bcc)
    build = _compose_utf8 if utf8 else _compose_ascii
    raw = _checked(build(email, frm, message_id, when))
    return Composed(raw, message_id, tuple(_envelope(email)), utf8, email)


def _checked(raw: bytes) -> bytes:
    """``raw`` if every header line fits RFC 5322's 998 octets (a last guard: a server would
    answer "500 Line too long"); UnsendableEmail otherwise, which fails only this email."""
    head = raw.partition(b"\r\n\r\n")[0]
    if max(map(len, head.split(b"\r\n")), default=0) > MAX_LINE:
        raise UnsendableEmail(
            f"a header line would be longer than {MAX_LINE} octets; shorten the names, subject"
            " or file names of the email in the CRM"
        )
    return raw


def sanitized(email: OutboundEmail) -> OutboundEmail:
    """``email`` safe to write: parties parsed, control characters out of every header value.

    The subject loses control characters and is cut to :data:`MAX_SUBJECT`; the body loses NULs
    (never allowed in a message, RFC 5322 2.3); attachments get a checked MIME type, a clean file
    name and a usable Content-ID or none. Raises AddressRefused for a bad party.
    """
    email = clean_parties(email)
    return replace(
        email,
        subject=_clean_text(email.subject)[:MAX_SUBJECT],
        body_html=email.body_html.replace("\x00", ""),
        tracking_token=_clean_text(email.tracking_token or "") or None,
        attachments=tuple(_clean_attachment(a) for a in email.attachments),
        message_id=_clean_id(email.message_id),
        in_reply_to=_clean_id(email.in_reply_to),
        references=tuple(r for r in map(_clean_id, email.references) if r),
    )


def _clean_text(value: str) -> str:
    """``value`` on one line: control characters dropped, white space runs made one space."""
    return " ".join("".join(ch for ch in value if ch.isprintable() or ch.isspace()).split())


def _clean_id(value: str | None) -> str | None:
    """A Message-ID or Content-ID without white space, controls or brackets; None if unusable."""
    if not value:
        return None
    kept = "".join(ch for ch in value if ch.isprintable() and not ch.isspace() and ch not in "<>")
    return kept if 0 < len(kept) <= MAX_ID and kept.isascii() else None


def _clean_attachment(attachment: Attachment) -> Attachment:
    content_id = _clean_id(attachment.content_id)
    return replace(
        attachment,
        filename=_clean_text(attachment.filename)[:MAX_FILENAME],
        mimetype="/".join(_split_type(attachment.mimetype)),
        content_id=content_id,
        inline=attachment.inline and content_id is not None,
    )


def _compose_ascii(email: OutboundEmail, frm: Address, message_id: str, now: datetime) -> bytes:
    """The usual, 7-bit variant: MIME parts written directly, each encoded by ``email``.

    Why not build ``Message`` objects and flatten them: that costs 0.5-3 ms per message
    (more than the whole SMTP exchange with a local server), while every piece that needs care -
    RFC 2047 words, RFC 2231 parameters, quoted-printable and base64 - comes from the
    ``email`` package's own encoders here. The tests parse every result back with ``email``.
    """
    body = _alternative_part(email)
    files = [a for a in email.attachments if not (a.inline and a.content_id)]
    if files:
        body = _multipart("mixed", [body, *(_attachment_part(a, "attachment") for a in files)])
    head = _header_lines(email, frm, message_id, now)
    return (head + "MIME-Version: 1.0" + CRLF + body).encode("ascii")


def _header_lines(email: OutboundEmail, frm: Address, message_id: str, now: datetime) -> str:
    lines = [_address_header("From", [frm])]
    if email.to:
        lines.append(_address_header("To", email.to))
    if email.cc:
        lines.append(_address_header("Cc", email.cc))
    lines.append(_header("Subject", subject_with_token(email.subject, email.tracking_token)))
    lines.append(_header("Date", format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))))
    lines.append(_header("Message-ID", message_id))
    if email.in_reply_to:
        lines.append(_header("In-Reply-To", normalize_message_id(email.in_reply_to)))
    references = _references(email)
    if references:
        lines.append(_header("References", " ".join(references)))
    if email.importance in ("high", "low"):
        lines.append(_header("Importance", email.importance))
        lines.append(_header("X-Priority", "1" if email.importance == "high" else "5"))
    return "".join(lines)


def _header(name: str, value: str) -> str:
    """One header line; non-ASCII becomes RFC 2047 words, long lines are folded.

    Folding happens only at white space, so plain ASCII with a word too long for one line is
    written as encoded words too - they can be cut anywhere, and every line stays short.
    """
    value = _clean_text(value)
    if value.isascii() and len(name) + len(value) + 2 <= FOLD_AT:
        return f"{name}: {value}{CRLF}"
    longest = max((len(word) for word in value.split()), default=0)
    plain = value.isascii() and len(name) + longest + 2 <= FOLD_AT
    charset = "us-ascii" if plain else "utf-8"
    folded = Header(value, charset, header_name=name).encode(linesep=CRLF, maxlinelen=FOLD_AT)
    return f"{name}: {folded}{CRLF}"


def _address_header(name: str, addresses: Sequence[Address]) -> str:
    """An address list, one address per folded line once the line would grow too long."""
    line, out = f"{name}:", []
    for i, addr in enumerate(addresses):
        text = _formatted(addr) + ("," if i < len(addresses) - 1 else "")
        if len(line) + 1 + len(text) > FOLD_AT and line != f"{name}:":
            out.append(line)
            line = ""
        line += " " + text
    out.append(line)
    return CRLF.join(out) + CRLF


def _formatted(addr: Address) -> str:
    """``Name <a@b>`` from a parsed address: the name quoted or encoded, never raw."""
    if addr.name.isascii():
        return formataddr((addr.name, addr.email))
    name = _UTF8.header_encode(addr.name)
    if len(name) > _WORD_MAX:  # one encoded word would be too long: Header cuts it up (slower)
        name = Header(addr.name, "utf-8").encode(linesep=CRLF, maxlinelen=FOLD_AT)
    return f"{name} <{addr.email}>"


def _multipart(subtype: str, parts: Sequence[str]) -> str:
    # "=_" never occurs in base64 or quoted-printable text; the random part makes a collision
    # with 7-bit text as likely as guessing 96 random bits.
    boundary = f"=_{secrets.token_hex(12)}"
    head = f'Content-Type: multipart/{subtype};{CRLF} boundary="{boundary}"{CRLF}{CRLF}'
    body = "".join(f"--{boundary}{CRLF}{part}{CRLF}" for part in parts)
    return f"{head}{body}--{boundary}--{CRLF}"


def _alternative_part(email: OutboundEmail) -> str:
    html = email.body_html or "<p></p>"
    html_part = _text_part(html, "html")
    inline = [a for a in email.attachments if a.inline and a.content_id]
    if inline:
        related = [html_part, *(_attachment_part(a, "inline") for a in inline)]
        html_part = _multipart("related", related)
    return _multipart("alternative", [_text_part(html_to_text(html) or " ", "plain"), html_part])


def _text_part(text: str, subtype: str) -> str:
    cte = _cte(text)
    if cte == "7bit":
        charset, payload = "us-ascii", CRLF.join(text.splitlines())
    elif cte == "base64":
        charset, payload = "utf-8", body_encode_b64(text.encode("utf-8"), 76, CRLF)
    else:  # quoted-printable works on one character per byte
        latin = text.encode("utf-8").decode("latin-1")
        charset, payload = "utf-8", body_encode_qp(latin, 76, CRLF)
    return (
        f'Content-Type: text/{subtype}; charset="{charset}"{CRLF}'
        f"Content-Transfer-Encoding: {cte}{CRLF}{CRLF}{payload}"
    )


def _attachment_part(attachment: Attachment, disposition: str) -> str:
    maintype, subtype = _split_type(attachment.mimetype)
    lines = [f"Content-Type: {maintype}/{subtype}", "Content-Transfer-Encoding: base64"]
    name = attachment.filename or ("attachment" if disposition == "attachment" else "")
    lines.append(f"Content-Disposition: {disposition}" + (_filename_param(name) if name else ""))
    if attachment.content_id:
        lines.append(f"Content-ID: {normalize_message_id(attachment.content_id)}")
    payload = body_encode_b64(attachment.content, 76, CRLF)
    return CRLF.join(lines) + CRLF + CRLF + payload


def _filename_param(name: str) -> str:
    """``; filename="..."``, or RFC 2231 ``filename*=utf-8''...`` (in continuations if long)."""
    name = " ".join(name.split())
    if name.isascii() and len(name) < 60:
        return f';{CRLF} filename="{quote(name)}"'
    encoded = encode_rfc2231(name, "utf-8")
    if len(encoded) < 60:
        return f";{CRLF} filename*={encoded}"
    chunks, rest = [], encoded
    while rest:  # cut at 60 characters, never inside a %XX escape
        cut = min(60, len(rest))
        while 0 < cut < len(rest) and "%" in rest[max(0, cut - 2) : cut]:
            cut -= 1
        chunks.append(rest[:cut])
        rest = rest[cut:]
    return "".join(f";{CRLF} filename*{i}*={chunk}" for i, chunk in enumerate(chunks))


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
    own = _clean_id(email.message_id)
    if own:
        return normalize_message_id(own)
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
    return HeaderAddress(display_name=addr.name, username=local, domain=domain)


def _envelope(email: OutboundEmail) -> list[str]:
    seen: dict[str, None] = {}
    for addr in (*email.to, *email.cc, *email.bcc):
        seen.setdefault(addr.email, None)
    return list(seen)


def _needs_utf8(*addresses: Address) -> bool:
    return any(not a.email.rpartition("@")[0].isascii() for a in addresses)


def _domain(address: str) -> str:
    """The (IDNA) domain of ``address``, or "" when it is not a usable address."""
    try:
        return parse_address(address).email.rpartition("@")[2]
    except AddressRefused:
        return ""


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
    """``type/subtype`` of a CRM MIME type; anything but two clean tokens is octet-stream."""
    maintype, _, subtype = (mimetype or "").partition(";")[0].strip().lower().partition("/")
    if not _token(maintype) or not _token(subtype) or maintype in ("multipart", "message"):
        # Containers would need a parsed payload; ship them as opaque bytes instead.
        return "application", "octet-stream"
    return maintype, subtype


def _token(value: str) -> bool:
    """An RFC 2045 token: printable ASCII without space or tspecials, at most 127 characters."""
    return 0 < len(value) <= 127 and all("!" <= ch <= "~" and ch not in _TSPECIALS for ch in value)


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
    "MAX_SUBJECT",
    "Composed",
    "UnsendableEmail",
    "compose_message",
    "html_to_text",
    "message_id_for",
    "normalize_message_id",
    "sanitized",
    "subject_with_token",
]
