"""Raw RFC 5322 bytes of an incoming message -> the fields of a CRM email activity.

:func:`parse_message` is the one entry point. It never raises for bad input except
:class:`~router.errors.MessageUnusable`, and only in two cases: the message is larger than
``max_size`` (checked on the byte count before any parsing), or nothing usable is left (no
headers and no body text). Every other problem (defects, unknown charsets, broken MIME, bad
dates, unparseable addresses) is worked around and named in ``Activity.defects`` as a short
token that never contains message content.

Parsing uses the standard library's ``email`` package with ``policy.default``; should the parser
itself fail on some input, the message is parsed again with ``policy.compat32``. Header text is
read from the raw header values and decoded here (:mod:`router.mimetext`), so that raw 8-bit
headers keep their characters. The body and attachments come from :mod:`router.mimeparts`, the
classification from :mod:`router.classify`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime
from email import policy
from email.feedparser import BytesFeedParser
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import EmailPolicy, Policy
from email.utils import getaddresses, parsedate_to_datetime

from router.classify import classify
from router.errors import MessageUnusable
from router.mimeparts import Collected, collect
from router.mimetext import decode_words, header_text, raw_header, raw_headers
from router.models import Activity, Address, Attachment, BounceInfo, Classification

#: Messages larger than this (bytes) are refused before parsing (25 MiB, a common server limit).
DEFAULT_MAX_SIZE = 25 * 1024 * 1024
#: Domain of the Message-ID made up for a message that has none (RFC 6761 reserves .invalid).
SYNTHETIC_ID_DOMAIN = "email-router.invalid"

_MSG_ID = re.compile(r"<([^<>\s]{1,900})>")
_BARE_MSG_ID = re.compile(r"^[^<>\s@]{1,600}@[^<>\s@]{1,300}$")
_EMAIL_LIKE = re.compile(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+")
_MAX_ADDRESSES = 500
_MAX_REFERENCES = 100
_MAX_DEFECTS = 50
_FEED_CHUNK = 64 * 1024
_MAX_HEADER_BLOCK = 1024 * 1024
_PRIORITY_WORDS = {
    "high": "high",
    "urgent": "high",
    "highest": "high",
    "low": "low",
    "non-urgent": "low",
    "lowest": "low",
    "normal": "normal",
}


def parse_message(
    raw: bytes, *, max_size: int = DEFAULT_MAX_SIZE, received_on: datetime | None = None
) -> Activity:
    """Parse ``raw`` into an :class:`Activity`, classified (see the module docstring).

    ``received_on`` is used as the received date when the message has no usable Date header.

    Raises:
        MessageUnusable: the message is over ``max_size`` bytes, or holds nothing at all.
    """
    if len(raw) > max_size:
        raise MessageUnusable(f"message of {len(raw)} bytes exceeds the limit of {max_size}")
    if not raw or raw.isspace():  # isspace, not strip: no copy of a large message
        raise MessageUnusable("message is empty")
    try:
        msg, defects = _parse(raw)
        found = collect(msg)
    except Exception:  # e.g. RecursionError on absurd nesting: keep what the headers say
        msg, defects = _headers_only(raw), ["mime-structure-unreadable"]
        found = Collected(attachments=[Attachment("original.eml", "message/rfc822", raw)])
    if not _has_headers(msg) and not found.attachments and not _has_text(found):
        raise MessageUnusable("message has neither headers nor body text")
    classification, bounce = _classify(msg, defects)
    return _activity(msg, raw, found, defects, received_on, classification, bounce)


class _MemoPolicy(EmailPolicy):
    """``policy.default`` with parsed header values memoised (they are immutable str objects).

    The feed parser and :func:`collect` ask each part for its Content-Type several times, and
    every ask ran the structured-header parser again: about a third of the router's CPU per
    message in the ``bench_ingest`` profile (py-spy --gil).
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        if hasattr(value, "name") or len(value) > 300 or name.lower() not in _MEMO_NAMES:
            return super().header_fetch_parse(name, value)
        return _parsed_header(name, value)


@functools.lru_cache(maxsize=1024)  # short values only: a parsed header keeps its parse tree
def _parsed_header(name: str, value: str) -> str:
    return policy.default.header_fetch_parse(name, value)


#: The headers the parser asks for again and again (per part); others are read once.
_MEMO_NAMES = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})
_POLICY = _MemoPolicy()


def _parse(raw: bytes) -> tuple[Message, list[str]]:
    defects: list[str] = []
    try:
        msg = _feed(raw, _POLICY)
    except Exception:  # a parser bug on hostile input; the older policy is simpler
        defects.append("parser-fallback")
        msg = _feed(raw, policy.compat32)
    return msg, defects


def _headers_only(raw: bytes) -> Message:
    """The header block alone, for a message whose MIME structure defeats the parser."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    block = raw[: min([*ends, _MAX_HEADER_BLOCK])]
    try:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    except Exception:
        return Message()


def _feed(raw: bytes, parse_policy: Policy) -> Message:
    """Parse in chunks: ``message_from_bytes`` would first copy the whole message into one str
    and then into a StringIO (four bytes a character), about six times the message size."""
    parser = BytesFeedParser(policy=parse_policy)
    view = memoryview(raw)
    for start in range(0, len(raw), _FEED_CHUNK):
        parser.feed(bytes(view[start : start + _FEED_CHUNK]))
    return parser.close()


def _classify(msg: Message, defects: list[str]) -> tuple[Classification, BounceInfo | None]:
    try:
        return classify(msg)
    except Exception:  # classification is advice; the message is still an email
        defects.append("classify-failed")
        return Classification.NORMAL, None


def _activity(
    msg: Message,
    raw: bytes,
    found: Collected,
    defects: list[str],
    received_on: datetime | None,
    classification: Classification,
    bounce: BounceInfo | None,
) -> Activity:
    return Activity(
        message_id=message_id(msg, raw, defects),
        subject=header_text(msg, "subject"),
        body_html=found.body_html,
        sender=_sender(msg),
        to=addresses(msg, "to"),
        cc=addresses(msg, "cc"),
        bcc=addresses(msg, "bcc"),
        in_reply_to=_first_id(raw_header(msg, "in-reply-to")),
        references=_all_ids(raw_header(msg, "references")),
        received_on=_date(msg, received_on, defects),
        importance=importance(msg),
        attachments=tuple(found.attachments),
        defects=_defects(msg, defects + found.defects),
        classification=classification,
        bounce=bounce,
    )


def _has_headers(msg: Message) -> bool:
    try:
        return len(msg.keys()) > 0
    except Exception:
        return False


def _has_text(found: Collected) -> bool:
    return any(re.search(r"[^\s]", re.sub(r"<[^>]*>", "", part)) for part in found.html_parts)


def message_id(msg: Message, raw: bytes, defects: list[str] | None = None) -> str:
    """The Message-ID in ``<...>`` form; a stable one made from the content when there is none.

    The made-up id is the SHA-256 of the raw bytes, so the same message gets the same id on every
    poll and the CRM's duplicate check still works.
    """
    found = _first_id(raw_header(msg, "message-id"))
    if found is not None:
        return found
    if defects is not None:
        defects.append("message-id-synthesised")
    return f"<{hashlib.sha256(raw).hexdigest()}@{SYNTHETIC_ID_DOMAIN}>"


def _first_id(value: str | None) -> str | None:
    if not value:
        return None
    match = _MSG_ID.search(value)
    if match:
        return f"<{match.group(1)}>"
    bare = value.strip()
    return f"<{bare}>" if _BARE_MSG_ID.match(bare) else None


def _all_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = dict.fromkeys(f"<{m}>" for m in _MSG_ID.findall(value))
    return tuple(ids)[:_MAX_REFERENCES]


def addresses(msg: Message, name: str) -> tuple[Address, ...]:
    """Every mailbox of address header(s) ``name``, display names decoded; tolerant of junk."""
    values = [v for v in raw_headers(msg, name) if v.strip()]
    if not values:
        return ()
    try:
        pairs = getaddresses(values)
    except Exception:
        pairs = [("", value) for value in values]
    found: list[Address] = []
    for display, addr in pairs:
        parsed = _address(display, addr)
        if parsed is not None:
            found.append(parsed)
        else:  # the parser choked on this stretch: pick out what looks like an address
            found.extend(Address(email=m) for m in _EMAIL_LIKE.findall(addr))
    return tuple(dict.fromkeys(found))[:_MAX_ADDRESSES]


def _address(display: str, addr: str) -> Address | None:
    addr = addr.strip().strip("<>").strip()
    local, at, domain = addr.rpartition("@")
    # no mailbox without both halves: group names and "undisclosed-recipients" are not parties
    if not (local and at and domain) or any(ch.isspace() for ch in addr):
        return None
    name = " ".join(decode_words(display).split()).strip("\"' ")
    return Address(email=addr, name="" if name == addr else name)


def _sender(msg: Message) -> Address | None:
    for name in ("from", "sender", "return-path"):
        found = addresses(msg, name)
        if found:
            return found[0]
    return None


def _date(msg: Message, received_on: datetime | None, defects: list[str]) -> datetime | None:
    value = raw_header(msg, "date")
    if value:
        try:
            parsed = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            defects.append("bad-date")
        else:
            return _aware(parsed)
    return _aware(received_on) if received_on is not None else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def importance(msg: Message) -> str:
    """``low`` / ``normal`` / ``high`` from Importance, Priority, X-MSMail-Priority, X-Priority."""
    for name in ("importance", "priority", "x-msmail-priority"):
        value = (raw_header(msg, name) or "").strip().lower()
        if value in _PRIORITY_WORDS:
            return _PRIORITY_WORDS[value]
    digits = re.match(r"\s*([1-5])", raw_header(msg, "x-priority") or "")
    if digits:
        return {"1": "high", "2": "high", "4": "low", "5": "low"}.get(digits.group(1), "normal")
    return "normal"


def _defects(msg: Message, extra: list[str]) -> tuple[str, ...]:
    names = list(extra)
    try:
        for part in msg.walk():
            names.extend(type(defect).__name__ for defect in getattr(part, "defects", ()))
    except Exception:
        names.append("walk-failed")
    return tuple(dict.fromkeys(names))[:_MAX_DEFECTS]
