"""A forwarded message (a forward mailbox's "carrier") -> the original messages it holds.

Use :func:`unwrap` on the raw bytes of a message a user's rule forwarded to a forward mailbox;
it returns the carrier's sender (the user whose rule forwarded it) and each original as RFC 5322
bytes, ready for :func:`router.mail.parse.parse_message`. Two forms are recognised:

* **attached** - every ``message/rfc822`` (or ``message/global``, or an ``.eml`` file) part of
  the carrier, outside other attached messages: what "forward as attachment" rules send, one
  part per original (a carrier may hold several). An attached message that is itself a bare
  carrier (no text of its own, exactly one attached message: a forward of a forward) is
  unwrapped again, at most :data:`MAX_FORWARD_DEPTH` times.
* **inline** - when nothing is attached, the first forward marker in the carrier's text
  (Gmail's ``---------- Forwarded message ---------``, Thunderbird's ``-------- Forwarded
  Message --------``, Apple Mail's ``Begin forwarded message:``, Outlook's ``-----Original
  Message-----`` and its ``____`` rule / ``divRplyFwdMsg`` block in HTML), then the header block
  the client wrote (From, To, Cc, Subject, Date or Sent), then the text. The original is rebuilt
  as a plain-text message; its Message-ID, which an inline forward loses, is made from what
  it holds (:func:`inline_message_id`), so the same original forwarded twice is one activity.

A carrier with neither form gives no originals; the caller decides what it is (mail sent
straight to the forward mailbox). Inline recognition is best effort: clients change their
markers, and a quoted reply looks much like a forward.

Bounds: the carrier is refused before parsing above ``max_size`` bytes or
:data:`~router.mail.parse.MAX_LINES` lines (no originals, a defect says why); at most
:data:`~router.mail.parts.MAX_PARTS` parts are looked at and :data:`MAX_ORIGINALS` originals
taken; the inline scan reads at most :data:`MAX_SCAN_TEXT` characters of text and
:data:`MAX_HEADER_LINES` header lines. No step raises for bad input.
"""

from __future__ import annotations

import binascii
import hashlib
import html
import re
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.header import Header
from email.message import Message
from email.policy import Policy
from email.utils import formataddr, getaddresses, parsedate_to_datetime

from router.mail.parse import DEFAULT_MAX_SIZE, MAX_LINES, SYNTHETIC_ID_DOMAIN, message_id
from router.mail.parts import (
    MAX_DEPTH,
    MAX_PARTS,
    children_of,
    content_type,
    filename_of,
    part_text,
)
from router.mail.policy import AS_RECEIVED, FALLBACK, PARSE
from router.mail.text import decode_words, raw_header

#: Originals taken from one carrier (a rule forwards one; a person may select a few dozen).
MAX_ORIGINALS = 100
#: Forwards of forwards unwrapped (a user's rule forwarding what another rule forwarded).
MAX_FORWARD_DEPTH = 3
#: Characters of the carrier's text searched for an inline forward marker.
MAX_SCAN_TEXT = 256 * 1024
#: Lines after a marker read as the forwarded header block (blank lines before it included).
MAX_HEADER_LINES = 30
#: Markers tried before the inline scan gives up (each costs a header-block read).
MAX_MARKERS = 20
ATTACHED, INLINE = "attached", "inline"
_MESSAGE_TYPES = ("message/rfc822", "message/global")
_MARKERS = re.compile(
    r"^[ \t>]*(?:"
    r"-{4,}\s*forwarded message\s*-{4,}"  # Gmail, Thunderbird
    r"|begin forwarded message:"  # Apple Mail
    r"|-{3,}\s*original message\s*-{3,}"  # Outlook (classic, plain text)
    r"|_{10,}"  # Outlook (new, OWA): a rule line, then the header block
    r")[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_HEADER_LINE = re.compile(r"^[ \t>]*\*?([A-Za-z][A-Za-z -]{0,20}?)\*?:[ \t]*(.*)$")
_HEADER_NAMES = {
    "from": "From", "to": "To", "cc": "Cc", "subject": "Subject", "date": "Date",
    "sent": "Date", "reply-to": "Reply-To",
}  # fmt: skip
_MAILTO = re.compile(r"\[mailto:([^\]\s]+)\]", re.IGNORECASE)
_OUTLOOK_HTML = re.compile(r"<div[^>]*id=[\"']?divRplyFwdMsg[^>]*>|<hr[^>]*>", re.IGNORECASE)
_BREAKS = re.compile(r"<br\s*/?>|</p\s*>|</div\s*>|</tr\s*>|</h\d\s*>|</li\s*>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]{0,2000}>")
_INVISIBLE = re.compile(r"<(style|script|head)\b.{0,100000}?</\1\s*>", re.IGNORECASE | re.DOTALL)
_DATE_FORMATS = re.compile(r"\s+at\s+|,", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Original:
    """One forwarded original: its bytes (RFC 5322) and the form it came in."""

    raw: bytes
    form: str

    def __repr__(self) -> str:  # never the content
        return f"Original({self.form}, {len(self.raw)} bytes)"


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """What a carrier holds: its sender's address (lower case, "" if none), its own
    Message-ID ("" when unreadable) and its originals."""

    sender: str
    message_id: str = ""
    originals: tuple[Original, ...] = ()
    defects: tuple[str, ...] = field(default=())


def unwrap(raw: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Unwrapped:
    """The originals ``raw`` carries (see the module docstring); never raises for bad input."""
    if len(raw) > max_size or _lines(raw) > MAX_LINES:
        return Unwrapped("", "", (), ("carrier-too-large",))
    try:
        carrier = _parse(raw)
    except Exception:  # the parser's own failure on hostile input: nothing to unwrap
        return Unwrapped("", "", (), ("carrier-unreadable",))
    defects: list[str] = []
    originals = _attached(carrier, defects)
    if not originals:
        inline = _inline(carrier, defects)
        originals = [inline] if inline is not None else []
    return Unwrapped(
        sender_address(carrier),
        message_id(carrier, raw),
        tuple(originals[:MAX_ORIGINALS]),
        tuple(defects),
    )


def sender_address(msg: Message) -> str:
    """The address in ``msg``'s From (the first one), lower case; "" when there is none."""
    value = decode_words(raw_header(msg, "from") or "")[:1024]
    for _, address in getaddresses([value]):
        if "@" in address:
            return address.strip().lower()
    return ""


# -- attached -------------------------------------------------------------------------------------
def _attached(carrier: Message, defects: list[str]) -> list[Original]:
    found: list[Original] = []
    for part in _leaves(carrier):
        raw = _attached_bytes(part)
        if raw is None:
            continue
        if not raw.strip():
            defects.append("empty-attached-message")
            continue
        found.append(Original(_innermost(raw, 1), ATTACHED))
        if len(found) >= MAX_ORIGINALS:
            break
    return found


def _leaves(msg: Message) -> list[Message]:
    """The carrier's parts in order, not descending into attached messages (bounded)."""
    out: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and len(out) < MAX_PARTS:
        part, depth = stack.pop()
        ctype = content_type(part)
        if ctype.startswith("multipart/") and part.is_multipart() and depth < MAX_DEPTH:
            stack.extend((child, depth + 1) for child in reversed(children_of(part)))
        else:
            out.append(part)
    return out


def _attached_bytes(part: Message) -> bytes | None:
    """The bytes of an attached message, or None when ``part`` is not one."""
    ctype = content_type(part)
    if ctype in _MESSAGE_TYPES:
        children = children_of(part) if part.is_multipart() else []
        if not children:
            return _leaf_payload(part)
        cte = (raw_header(part, "content-transfer-encoding") or "").strip().lower()
        if cte in ("base64", "quoted-printable"):
            # forbidden by RFC 2046, written anyway: the parser read the encoded text as a message
            return _decoded(_as_bytes(children[0]), cte)
        return _as_bytes(children[0])
    name = (filename_of(part) or "").lower()
    if name.endswith(".eml") and not part.is_multipart():
        return _leaf_payload(part)
    return None


def _decoded(encoded: bytes, cte: str) -> bytes:
    try:
        return binascii.a2b_base64(encoded) if cte == "base64" else binascii.a2b_qp(encoded)
    except (binascii.Error, ValueError):  # not decodable after all: keep it as it came
        return encoded


def _leaf_payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return b""
    return data if isinstance(data, bytes) else b""


def _innermost(raw: bytes, depth: int) -> bytes:
    """``raw``, or the message it forwards when it is itself a bare carrier (bounded depth)."""
    if depth >= MAX_FORWARD_DEPTH:
        return raw
    try:
        msg = _parse(raw)
    except Exception:
        return raw
    leaves = _leaves(msg)
    inner = [b for b in (_attached_bytes(p) for p in leaves) if b is not None]
    texts = [p for p in leaves if content_type(p) in ("text/plain", "text/html")]
    if len(inner) != 1 or not inner[0].strip() or any(_visible(p).strip() for p in texts):
        return raw
    return _innermost(inner[0], depth + 1)


# -- inline ---------------------------------------------------------------------------------------
def _inline(carrier: Message, defects: list[str]) -> Original | None:
    text = _carrier_text(carrier)[:MAX_SCAN_TEXT]
    markers = 0
    for marker in _MARKERS.finditer(text):  # a rule line may be only a rule: try the next
        markers += 1
        lines = text[marker.end() :].split("\n")
        headers, used = _header_block(lines)
        if "From" in headers:
            body = "\n".join(lines[used:]).strip("\n")
            return Original(_rebuild(headers, body), INLINE)
        if markers >= MAX_MARKERS:
            break
    if markers:
        defects.append("forward-marker-without-headers")
    return None


def _carrier_text(carrier: Message) -> str:
    """The carrier's first text part (plain text preferred), as plain text."""
    texts = [p for p in _leaves(carrier) if content_type(p) in ("text/plain", "text/html")]
    texts = [p for p in texts if not filename_of(p)]
    plain = [p for p in texts if content_type(p) == "text/plain"]
    chosen = plain or texts
    return _visible(chosen[0]) if chosen else ""


def _visible(part: Message) -> str:
    """A text part as the reader sees it: HTML reduced to its lines of text."""
    try:
        text = part_text(part)
    except Exception:
        return ""
    if content_type(part) != "text/html":
        return text
    text = _INVISIBLE.sub("", text[: MAX_SCAN_TEXT * 4].replace("\n", " "))
    text = _OUTLOOK_HTML.sub("\n" + "_" * 32 + "\n", text)  # Outlook's forward block: a marker
    text = _BREAKS.sub("\n", text)
    return html.unescape(_TAGS.sub("", text)).replace("\xa0", " ")


def _header_block(lines: list[str]) -> tuple[dict[str, str], int]:
    """The forwarded header lines after a marker, and how many lines they took."""
    headers: dict[str, str] = {}
    last: str | None = None
    for index, line in enumerate(lines[:MAX_HEADER_LINES]):
        if not line.strip():
            if headers:
                return headers, index + 1
            continue
        match = _HEADER_LINE.match(line)
        name = _HEADER_NAMES.get(match.group(1).strip().lower()) if match else None
        if name is not None and match is not None:
            headers.setdefault(name, match.group(2).strip())
            last = name
        elif last is not None and line[:1] in " \t":  # a folded header line
            headers[last] += " " + line.strip()
        elif headers:
            return headers, index
        else:
            return {}, 0
    return headers, min(len(lines), MAX_HEADER_LINES)


def _rebuild(headers: dict[str, str], body: str) -> bytes:
    """An RFC 5322 plain-text message from an inline forward's headers and text."""
    lines = [f"Message-ID: {inline_message_id(headers, body)}"]
    for name in ("From", "To", "Cc", "Reply-To"):
        if headers.get(name):
            lines.append(f"{name}: {_addresses(headers[name])}")
    if headers.get("Subject"):
        lines.append(f"Subject: {Header(headers['Subject'][:998], 'utf-8').encode()}")
    date = _rfc_date(headers.get("Date", ""))
    if date:
        lines.append(f"Date: {date}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    lines += ["Content-Transfer-Encoding: 8bit", "", body.replace("\r", "")]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def inline_message_id(headers: dict[str, str], body: str) -> str:
    """A stable Message-ID for an inline original: the SHA-256 of its headers and words."""
    parts = [" ".join(headers.get(n, "").split()).lower() for n in ("From", "To", "Subject")]
    parts.append(" ".join(headers.get("Date", "").split()))
    parts.append(" ".join(body.split()))
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
    return f"<fwd-{digest[:40]}@{SYNTHETIC_ID_DOMAIN}>"


def _addresses(value: str) -> str:
    """An address list as the client wrote it, as a header value (Outlook's [mailto:])."""
    value = _MAILTO.sub(lambda m: f"<{m.group(1)}>", value[:4000]).replace(";", ",")
    pairs = [(n, a) for n, a in getaddresses([value]) if "@" in a][:100]
    return ", ".join(formataddr((n.strip("'\" "), a.strip()), "utf-8") for n, a in pairs)


def _rfc_date(text: str) -> str:
    """An RFC 5322 date when ``text`` is one (else ""; the parser then uses the staging time)."""
    text = " ".join(text.split())[:200]
    for candidate in (text, _DATE_FORMATS.sub(" ", text)):
        try:
            parsed = parsedate_to_datetime(candidate)
        except (TypeError, ValueError, IndexError):
            continue
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.strftime("%a, %d %b %Y %H:%M:%S %z")
    return ""


# -- parsing --------------------------------------------------------------------------------------
def _parse(raw: bytes) -> Message:
    try:
        return _feed(raw, PARSE)
    except Exception:  # a parser bug on hostile input; the older policy is simpler
        return _feed(raw, FALLBACK)


def _feed(raw: bytes, policy: Policy) -> Message:
    parser = BytesFeedParser(policy=policy)
    parser.feed(raw)
    return parser.close()


def _as_bytes(msg: Message) -> bytes:
    """A nested message as it came in (header lines unchanged)."""
    try:
        return msg.as_bytes(policy=AS_RECEIVED)
    except Exception:
        try:
            return msg.as_string(policy=AS_RECEIVED).encode("utf-8", "surrogateescape")
        except Exception:
            return b""


def _lines(raw: bytes) -> int:
    return raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
