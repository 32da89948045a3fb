"""Raw RFC 5322 bytes of an incoming message -> the fields of a CRM email activity.

:func:`parse_message` is the one entry point. It never raises for bad input except
:class:`~router.errors.MessageUnusable`, and only in three cases: the message is larger than
``max_size`` or has more than :data:`MAX_LINES` lines (both checked before any parsing), or
nothing usable is left (no headers and no body text). Every other problem (defects, unknown
charsets, broken MIME, bad dates, unparseable addresses) is worked around and named in
``Activity.defects`` as a short token that never contains message content.

Parsing uses the standard library's ``email`` package with ``policy.default`` whose header
values come back unparsed (:mod:`router.mail.policy`); should the parser itself fail on some input,
the message is parsed again with ``policy.compat32`` (likewise). Header text is read from the raw
header values and decoded here (:mod:`router.mail.text`), so that raw 8-bit headers keep their
characters. Address headers go through :mod:`~router.mail.address_scan`, the body and
attachments come from :mod:`router.mail.parts`, the classification from
:mod:`router.mail.classify`.

Bounds: the cost of every step is linear in the message's size, and no step raises out of
:func:`parse_message` (``tests/unit/test_parser_bounds.py`` and ``tests/fuzz/`` check both).
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime
from email import policy
from email.feedparser import BytesFeedParser
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import Policy
from email.utils import parsedate_to_datetime

from router.errors import MessageUnusable
from router.mail.address_scan import mailboxes
from router.mail.classify import classify
from router.mail.limits import fit_message_id
from router.mail.parts import MAX_PARTS, TRUNCATED, Collected, collect
from router.mail.policy import FALLBACK, PARSE
from router.mail.text import MAX_HEADER_FIELDS, header_text, raw_header, raw_headers
from router.models import Activity, Address, Attachment, BounceInfo, Classification

log = logging.getLogger(__name__)

#: Messages larger than this (bytes) are refused before parsing (25 MiB, a common server limit).
DEFAULT_MAX_SIZE = 25 * 1024 * 1024
#: Messages with more lines than this are refused before parsing. The feed parser spends
#: about a microsecond on every line (more inside nested multiparts), whatever its length; 25 MB
#: of base64 is 330,000 lines, while 25 MB of bare CRs would be 25 million.
MAX_LINES = 2_000_000
#: Domain of the Message-ID made up for a message that has none (RFC 6761 reserves .invalid).
SYNTHETIC_ID_DOMAIN = "email-router.invalid"

#: Ids up to this many characters are read whole (and then shortened, :mod:`router.mail.limits`);
#: a longer run between angle brackets is not an id but junk.
_ID_READ_MAX = 4000
_MSG_ID = re.compile(rf"<([^<>\s]{{1,{_ID_READ_MAX}}})>")
_BARE_MSG_ID = re.compile(rf"^[^<>\s@]{{1,{_ID_READ_MAX}}}@[^<>\s@]{{1,{_ID_READ_MAX}}}$")
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
        MessageUnusable: the message is over ``max_size`` bytes or :data:`MAX_LINES` lines,
            or holds nothing at all.
    """
    if len(raw) > max_size:
        raise MessageUnusable(f"message of {len(raw)} bytes exceeds the limit of {max_size}")
    lines = _line_count(raw)
    if lines > MAX_LINES:
        raise MessageUnusable(f"message of {lines} lines exceeds the limit of {MAX_LINES}")
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
    activity = _activity(msg, raw, found, defects, received_on, classification, bounce)
    if found.truncated:
        _log_truncation(activity.message_id, found)
    return activity


def _line_count(raw: bytes) -> int:
    """Lines as the feed parser sees them (CRLF, CR or LF each end one), counted in C."""
    return raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")


def _log_truncation(message_id: str, found: Collected) -> None:
    """Say that parts were dropped, with the counts only (no names, no content)."""
    log.warning(
        "message %s has %d MIME parts: attachments taken from the first %d only (%d kept, the "
        "rest dropped; defect %s)",
        message_id,
        found.parts_seen,
        MAX_PARTS,
        len(found.attachments),
        TRUNCATED,
    )


def _parse(raw: bytes) -> tuple[Message, list[str]]:
    defects: list[str] = []
    try:
        msg = _feed(raw, PARSE)
    except Exception:  # a parser bug on hostile input; the older policy is simpler
        defects.append("parser-fallback")
        msg = _feed(raw, FALLBACK)
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
        to=addresses(msg, "to", defects),
        cc=addresses(msg, "cc", defects),
        bcc=addresses(msg, "bcc", defects),
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
    poll and the CRM's duplicate check still works. An id longer than the CRM's column is
    shortened by :func:`~router.mail.limits.fit_message_id`, the one rule for every place that
    keeps or compares Message-IDs (the ledger's index, the CRM's duplicate check).
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
        return fit_message_id(f"<{match.group(1)}>")
    bare = value.strip()
    return fit_message_id(f"<{bare}>") if _BARE_MSG_ID.match(bare) else None


def _all_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = dict.fromkeys(fit_message_id(f"<{m}>") for m in _MSG_ID.findall(value))
    return tuple(ids)[:_MAX_REFERENCES]


def addresses(msg: Message, name: str, defects: list[str] | None = None) -> tuple[Address, ...]:
    """Every mailbox of address header(s) ``name``, display names decoded; tolerant of junk and
    linear in the header's length (:mod:`router.mail.address_scan`)."""
    return mailboxes(raw_headers(msg, name), defects)


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
    if len(msg) > MAX_HEADER_FIELDS:
        names.append("too-many-headers")
    try:
        for part in msg.walk():
            names.extend(type(defect).__name__ for defect in getattr(part, "defects", ()))
    except Exception:
        names.append("walk-failed")
    return tuple(dict.fromkeys(names))[:_MAX_DEFECTS]
