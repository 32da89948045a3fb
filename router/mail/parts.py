"""The MIME tree of an incoming message -> the activity's HTML body and its attachments.

:func:`collect` walks the tree once, the way a mail client shows it:

* ``multipart/alternative``: the richest child (HTML before plain text) is the body; the other
  text alternatives are dropped, any non-text alternative (a ``text/calendar`` invitation) is kept
  as an attachment.
* ``multipart/related``: the root part (``start=`` or the first) is the body; the rest are inline
  resources, kept with their Content-ID and ``inline=True``.
* any other multipart (mixed, report, signed, digest, unknown): children in order; every inline
  ``text/plain`` / ``text/html`` part without a filename adds to the body, everything else is an
  attachment.
* ``message/rfc822``: an ``.eml`` attachment named after the nested subject; never walked into,
  so a forwarded message's body never becomes this message's body.

Plain text is escaped and wrapped in ``<pre style="white-space: pre-wrap">``. Payloads are taken
from the parsed tree (``get_payload(decode=True)``) without further copies.
"""

from __future__ import annotations

import binascii
import html
import mimetypes
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import decode_params, unquote

from router.mail.policy import AS_RECEIVED, MAX_NESTING
from router.mail.text import decode_bytes, decode_words, raw_header, unfold
from router.models import Attachment

#: Deeper nesting than this is treated as opaque data (mailgun's enclosed-endless recursion);
#: the parser itself reads nothing deeper either.
MAX_DEPTH = MAX_NESTING
#: More parts than this are not turned into attachments (a MIME bomb, not a business email);
#: the parts after it are counted and dropped, and the defects say :data:`TRUNCATED`.
MAX_PARTS = 2000
TRUNCATED = "attachments-truncated"
#: Characters of a structured header, and parameters, read for one parameter's value: a
#: 255-character UTF-8 file name in RFC 2231 pieces needs about 2.5 KB and 30 parameters.
MAX_PARAM_TEXT = 16 * 1024
MAX_PARAMS = 64
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "message/rfc822": ".eml",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
    "text/rfc822-headers": ".txt",
    "application/ms-tnef": ".dat",
    "application/octet-stream": ".bin",
}
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")
_LABEL_JUNK = re.compile(r"[^a-z0-9._+-]")
_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')
_BODY_TYPES = ("text/plain", "text/html")


@dataclass
class Collected:
    """What :func:`collect` found: body fragments, attachments, defects."""

    html_parts: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    parts_seen: int = 0

    @property
    def body_html(self) -> str:
        """The HTML parts joined, in message order."""
        return "\n".join(self.html_parts)

    @property
    def truncated(self) -> bool:
        """True when parts after the first :data:`MAX_PARTS` were dropped."""
        return TRUNCATED in self.defects


def collect(msg: Message) -> Collected:
    """Walk ``msg`` and return its body and attachments (see the module docstring)."""
    found = Collected()
    _walk(msg, found, body=True, depth=0)
    return found


def content_type(part: Message) -> str:
    """The part's content type (the stdlib's rules: default type when missing, ``text/plain``
    when malformed), read from the raw header: ``policy.default`` would build and parse a
    header object on every call, which was half the time of a corpus run."""
    value = raw_header(part, "content-type")
    if value is None:
        return part.get_default_type()
    ctype = value.split(";", 1)[0].strip().lower()
    if any(ch in ctype for ch in ' \t(),"'):  # comments or odd spacing: let the stdlib judge
        try:
            return part.get_content_type()
        except Exception:
            return "text/plain"
    return ctype if ctype.count("/") == 1 else "text/plain"


def children_of(part: Message) -> list[Message]:
    """The sub-parts of a multipart or message/* part (empty for a leaf)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [child for child in payload if isinstance(child, Message)]


def _walk(part: Message, found: Collected, *, body: bool, depth: int) -> None:
    found.parts_seen += 1
    if found.parts_seen > MAX_PARTS:  # counted, never read: the rest of a MIME bomb costs little
        _defect(found, TRUNCATED)
        return
    ctype = content_type(part)
    children = children_of(part) if part.is_multipart() else None
    if ctype.startswith("message/") and children is not None:
        _attach_message(part, ctype, children, found, depth)
    elif children is not None and ctype.startswith("multipart/") and depth < MAX_DEPTH:
        _walk_multipart(part, ctype, children, found, body=body, depth=depth)
    elif children is not None:
        _defect(found, "nesting-too-deep" if depth >= MAX_DEPTH else "unexpected-multipart")
    elif ctype in _BODY_TYPES and not _is_attachment(part):
        if body:
            found.html_parts.append(_render_text(part, ctype, found))
    elif ctype.startswith("multipart/"):  # declared multipart, but no parts could be found
        _defect(found, "multipart-without-parts")
        if body:
            found.html_parts.append(_render_text(part, "text/plain", found))
    else:
        _attach_leaf(part, ctype, found)


def _walk_multipart(
    part: Message, ctype: str, children: list[Message], found: Collected, *, body: bool, depth: int
) -> None:
    if ctype == "multipart/alternative":
        chosen = _best_alternative(children)
        for child in children:
            _walk(child, found, body=body and child is chosen, depth=depth + 1)
        return
    if ctype == "multipart/related" and children:
        root = _related_root(part, children)
        for child in children:
            _walk(child, found, body=body and child is root, depth=depth + 1)
        return
    for child in children:
        _walk(child, found, body=body, depth=depth + 1)


def _best_alternative(children: list[Message]) -> Message | None:
    """The child a client would show: HTML-bearing first, then plain text; last one wins ties."""
    best: Message | None = None
    best_rank = 0
    for child in children:
        rank = _alternative_rank(child)
        if rank >= best_rank and rank > 0:
            best, best_rank = child, rank
    return best


def _alternative_rank(part: Message, depth: int = 0) -> int:
    ctype = content_type(part)
    if ctype == "text/html":
        return 3
    if ctype == "text/plain":
        return 2
    if ctype.startswith("multipart/") and part.is_multipart() and depth < MAX_DEPTH:
        ranks = [_alternative_rank(child, depth + 1) for child in children_of(part)[:20]]
        return max(ranks, default=0)
    return 0


def _related_root(part: Message, children: list[Message]) -> Message:
    start = param(part, "content-type", "start")
    if start:
        for child in children:
            if (raw_header(child, "content-id") or "").strip() == start.strip():
                return child
    return children[0]


def _is_attachment(part: Message) -> bool:
    disposition = (raw_header(part, "content-disposition") or "").split(";", 1)[0]
    return disposition.strip().lower() == "attachment" or bool(filename_of(part))


def _render_text(part: Message, ctype: str, found: Collected) -> str:
    text = part_text(part, found.defects)
    if ctype == "text/html":
        return text
    return f'<pre style="white-space: pre-wrap">{html.escape(text)}</pre>'


def part_text(part: Message, defects: list[str] | None = None) -> str:
    """The decoded text of a leaf part, in its declared charset or the fallbacks."""
    data = payload_bytes(part)
    charset = param(part, "content-type", "charset")
    text, fallback = decode_bytes(data, charset)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if fallback and defects is not None:
        label = _LABEL_JUNK.sub("?", (charset or "none").lower()[:40])  # a label, never text
        defects.append(f"charset-fallback:{label}")
    return text


def payload_bytes(part: Message) -> bytes:
    """A leaf's content with its transfer encoding undone (lenient with bad base64)."""
    raw = part.get_payload()
    if isinstance(raw, str) and _transfer_encoding(part) == "base64":
        # binascii reads the ASCII str in place; the stdlib path makes three copies first.
        try:
            return binascii.a2b_base64(raw)
        except (binascii.Error, ValueError):
            pass  # bad padding or 8-bit junk: let the lenient stdlib decoder try
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", errors="surrogateescape") if isinstance(raw, str) else b""


def _transfer_encoding(part: Message) -> str:
    return (raw_header(part, "content-transfer-encoding") or "").strip().lower()


def _attach_leaf(part: Message, ctype: str, found: Collected) -> None:
    content_id = (raw_header(part, "content-id") or "").strip().strip("<>").strip() or None
    disposition = (raw_header(part, "content-disposition") or "").split(";", 1)[0].strip().lower()
    name = filename_of(part) or _generated_name(ctype, found)
    found.attachments.append(
        Attachment(
            filename=name,
            mimetype=ctype,
            content=payload_bytes(part),
            content_id=content_id,
            inline=content_id is not None and disposition != "attachment",
        )
    )


def _attach_message(
    part: Message, ctype: str, children: list[Message], found: Collected, depth: int
) -> None:
    """message/rfc822 (and delivery-status & co., whose payload is a list of header blocks)."""
    content = b"\n".join(_message_bytes(child) for child in children)
    headers = children[0] if children else None
    if _transfer_encoding(part) in ("base64", "quoted-printable"):
        # forbidden by RFC 2046, written anyway: the parser read the encoded text as a message
        content, headers = _decoded_message(content, _transfer_encoding(part))
    name = None
    if ctype in ("message/rfc822", "message/global") and headers is not None:
        subject = " ".join(decode_words(raw_header(headers, "subject") or "").split())
        # a subject is not a path: its slashes must not cut it short
        stem = re.sub(r"[/\\]", "_", subject).rstrip(". ")
        name = safe_filename(stem + ".eml") if stem else None
    name = name or filename_of(part) or _generated_name(ctype, found)
    found.attachments.append(Attachment(filename=name, mimetype=ctype, content=content))


def _decoded_message(encoded: bytes, cte: str) -> tuple[bytes, Message | None]:
    try:
        content = binascii.a2b_base64(encoded) if cte == "base64" else binascii.a2b_qp(encoded)
        return content, BytesHeaderParser(policy=policy.compat32).parsebytes(content[:65536])
    except Exception:  # not decodable after all: keep it as it came
        return encoded, None


def _message_bytes(msg: Message) -> bytes:
    """Serialise a nested message as it came in (header lines unchanged, :data:`AS_RECEIVED`)."""
    try:
        return msg.as_bytes(policy=AS_RECEIVED)
    except Exception:
        try:
            return msg.as_string(policy=AS_RECEIVED).encode("utf-8", "surrogateescape")
        except Exception:
            return b""


def filename_of(part: Message) -> str | None:
    """The part's filename: Content-Disposition ``filename`` or Content-Type ``name``.

    RFC 2231 (``filename*=utf-8''...``, continuations) and RFC 2047 encoded words (which the RFC
    forbids in parameters, but every large mailer writes) are both decoded; raw 8-bit names are
    read as UTF-8, else windows-1252.
    """
    name = param(part, "content-disposition", "filename") or param(part, "content-type", "name")
    return safe_filename(decode_words(name)) if name else None


def safe_filename(name: str) -> str | None:
    """``name`` without directories, control characters, characters Windows refuses in file
    names (they become ``_``) or a length over 200; None if nothing is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub(" ", name)
    name = _WINDOWS_RESERVED.sub("_", name).strip().strip(".").strip()
    if not name:
        return None
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) < 16 else name[:200]
    return name


def _generated_name(ctype: str, found: Collected) -> str:
    ext = _EXTENSIONS.get(ctype) or mimetypes.guess_extension(ctype, strict=False) or ".bin"
    return f"attachment-{len(found.attachments) + 1}{ext}"


def param(part: Message, header: str, name: str) -> str | None:
    """One parameter of a structured header, RFC 2231 decoded, from the raw header text (its
    first :data:`MAX_PARAM_TEXT` characters and :data:`MAX_PARAMS` parameters)."""
    value = raw_header(part, header)
    if not value or ";" not in value:
        return None
    pairs = split_params(value[:MAX_PARAM_TEXT])[:MAX_PARAMS]
    try:
        params = decode_params([("", ""), *pairs])
    except Exception:
        return None
    for key, val in params[1:]:
        if key.lower() != name:
            continue
        if isinstance(val, tuple):  # RFC 2231: (charset, language, text with bytes as latin-1)
            return _rfc2231_text(val[0], unquote(val[2]))
        return unquote(val)
    return None


def _rfc2231_text(charset: str | None, text: str) -> str:
    try:
        return decode_bytes(text.encode("latin-1"), charset)[0]
    except UnicodeEncodeError:  # raw 8-bit inside an extended value: already decoded text
        return text


def split_params(value: str) -> list[tuple[str, str]]:
    """``type; a=1; b="x;y"`` -> ``[("a", "1"), ("b", '"x;y"')]``, tolerant of bad quoting."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in unfold(value):
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    pairs = []
    for item in items[1:]:
        key, eq, val = item.partition("=")
        if eq and key.strip():
            pairs.append((key.strip().lower(), val.strip()))
    return pairs


def _defect(found: Collected, name: str) -> None:
    if name not in found.defects:
        found.defects.append(name)
