"""What kind of message an incoming email is: normal, auto-reply, bounce, read receipt, ARF report,
or not an email at all (fax, voice mail, missed call, InfoPath form, meeting request/response).

:func:`classify` is pure: it reads the parsed message and returns a
:class:`~router.models.Classification` and, for bounces, a :class:`~router.models.BounceInfo`
naming the original Message-ID so the outbound email it reports on can be marked Failed.

Decisions, in the order they are checked:

0. **Not an email** by its ``Content-Class`` header (MS-OXCMAIL; case and parameters ignored):
   ``fax``, ``fax-ca`` -> FAX; ``voice``, ``voice-uc``, ``voice-ca`` -> VOICE_MAIL;
   ``missedcall`` -> MISSED_CALL; ``InfoPathForm.*`` -> INFOPATH_FORM. A ``urn:content-classes:``
   prefix is tolerated. Unified-messaging systems set it on what they generate, so it is
   trusted before anything else.
1. **Feedback report** (ARF): ``multipart/report; report-type=feedback-report`` or a
   ``message/feedback-report`` part.
2. **Read receipt** (MDN): ``report-type=disposition-notification`` or a
   ``message/disposition-notification`` part.
3. **RFC 3464 DSN**: a ``message/delivery-status`` part anywhere in the message (outside nested
   messages). Any recipient with ``Action: failed`` (or no action and a 5.x.x status) makes it a
   BOUNCE. A DSN that reports only ``delayed`` / ``delivered`` / ``relayed`` / ``expanded`` is a
   notice, not a failure: it is AUTO_REPLY with no BounceInfo, because the message may still
   arrive and must not be marked Failed. Challenge/response systems (Boxbe) send DSN-shaped
   "waitlisted" notices: a DSN from an ordinary sender (not MAILER-DAEMON / postmaster / empty)
   whose failures are all transient (4.x.x) is AUTO_REPLY too.
4. **Non-standard bounces**: sent by a mail system (MAILER-DAEMON, postmaster, an empty From) or
   carrying ``X-Failed-Recipients``, with a bounce subject ("Undelivered Mail Returned to Sender",
   "Mail delivery failed", "Undeliverable:", "failure notice", "Returned mail", ...) or a failure
   phrase at the top of the body. A mail system's "Delayed Mail" warning is AUTO_REPLY (as in 3).
   A few subjects are unambiguous enough to count from any sender when they open the subject.
5. **Auto-reply** (RFC 3834 and its predecessors): ``Auto-Submitted`` other than ``no``,
   ``X-Autoreply`` / ``X-Autorespond`` / ``X-Autoresponder``, ``Precedence: auto_reply``,
   ``Precedence: bulk|junk`` sent with a null envelope sender (``Return-Path: <>``, as RFC 3834
   section 3.3 asks of responders; mailing lists and newsletters say bulk too, with a real
   envelope sender), or an out-of-office subject in one of the common languages.
   ``X-Auto-Response-Suppress`` does not count: Outlook sets it on ordinary mail.
6. **Meeting messages** (iMIP, RFC 6047): a ``text/calendar`` part whose method - its
   ``method=`` Content-Type parameter, else, on an inline part, the calendar's ``METHOD:`` line -
   is ``REQUEST`` -> MEETING_REQUEST, ``CANCEL`` -> MEETING_CANCELLATION, ``REPLY`` or
   ``COUNTER`` -> MEETING_RESPONSE. An ``.ics`` file attached without ``method=``, a
   ``PUBLISH`` calendar, a forwarded invitation (inside a ``message/rfc822`` part) or a reply
   that quotes an invitation's text stay emails.

:data:`NON_EMAIL` lists the classes of 0 and 6; the incoming cycle applies ``<NonEmailPolicy>``
to all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from router.mail.address_scan import first_addr
from router.mail.parts import children_of, content_type, param, part_text, payload_bytes
from router.mail.text import decode_bytes, header_text, raw_header, raw_headers
from router.models import BounceInfo, Classification

_DAEMON_LOCALS = frozenset(
    {"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster", "mdaemon", "mailer", "mmdf"}
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver(ed|able)|delivery (status notification ?\(fail|fail|problem|has failed|error)"
    r"|mail delivery (fail|problem|status)|returned (mail|to sender)|failure notice"
    r"|non-?delivery|not (be )?delivered|delivery notification|bounce|rejected|postmaster notify"
    r"|message status|user unknown",
    re.IGNORECASE,
)
_STRONG_BOUNCE_SUBJECT = re.compile(
    r"^\s*(undelivered mail returned to sender|undeliverable:|returned mail:|failure notice$"
    r"|mail delivery failed|delivery status notification \(failure\)|delivery failure:"
    r"|unzustellbar:|non remis:|onbestelbaar:|non recapitabile:|no se puede entregar:"
    r"|メールエラー通知|配信エラー|配信できません|недоставленное сообщение)",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(
    r"delay|still being retried|will be retried|warning: could not send", re.IGNORECASE
)
_FAILURE_PHRASES = re.compile(
    r"could ?n[o']t be delivered|was not delivered|undeliverable|delivery (has )?failed"
    r"|permanent (fatal )?error|user unknown|unknown user|no such user|not a valid user"
    r"|does not exist|mailbox (is )?(unavailable|full)|quota exceeded|(was|been) rejected"
    r"|returned to (the )?sender|failed to deliver|delivery to the following recipient",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"out of (the )?office|automatic (reply|response|answer)|auto[- ]?(reply|response|respons)"
    r"|^\s*(\[?auto(matic)?\]?:)|autoresponder|away from (the|my) (office|desk|mail)"
    r"|vacation (reply|message|notice)|abwesenheit|automatische antwort|r[ée]ponse automatique"
    r"|absence du bureau|autosvar|automatisch antwoord|afwezig|risposta automatica|fuori ufficio"
    r"|respuesta autom[áa]tica|fuera de la oficina|resposta autom[áa]tica|automatyczna odpowied"
    r"|automaattinen vastaus|automatick[áa] odpov[ěe]ď|автоответ|автоматический ответ"
    r"|otomatik yan[\u0131i]t|αυτόματη απάντηση"
    r"|自動応答|自動返信|自动回复|自動回覆|자동 응답|不在通知",
    re.IGNORECASE,
)
_AUTOREPLY_HEADERS = (
    "x-autoreply",
    "x-autorespond",
    "x-autoresponder",
    "x-autoreply-from",
    "x-mail-autoreply",
)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_SMTP_REPLY = re.compile(r"(?:^|: )[ \t>]*([45]\d\d[ -][^\r\n]{3,300})", re.M)
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]+>)", re.IGNORECASE | re.M)
_REPORT_TYPES = {
    "feedback-report": Classification.FEEDBACK_REPORT,
    "disposition-notification": Classification.READ_RECEIPT,
}
_REPORT_PARTS = {
    "message/feedback-report": Classification.FEEDBACK_REPORT,
    "message/disposition-notification": Classification.READ_RECEIPT,
}
_MAX_PARTS = 200
_BODY_SCAN = 4000

#: The classes that are not emails (faxes, voice mail, forms, meetings): ``<NonEmailPolicy>``.
NON_EMAIL = frozenset(
    {
        Classification.FAX,
        Classification.VOICE_MAIL,
        Classification.MISSED_CALL,
        Classification.INFOPATH_FORM,
        Classification.MEETING_REQUEST,
        Classification.MEETING_CANCELLATION,
        Classification.MEETING_RESPONSE,
    }
)
#: ``Content-Class`` values (lower case, without ``urn:content-classes:``) -> class.
_CONTENT_CLASSES = {
    "fax": Classification.FAX,
    "fax-ca": Classification.FAX,
    "voice": Classification.VOICE_MAIL,
    "voice-uc": Classification.VOICE_MAIL,
    "voice-ca": Classification.VOICE_MAIL,
    "missedcall": Classification.MISSED_CALL,
}
_INFOPATH_PREFIX = "infopathform."
_CLASS_URN = "urn:content-classes:"
#: iCalendar METHOD -> class (RFC 5546 iTIP).
_MEETING_METHODS = {
    "REQUEST": Classification.MEETING_REQUEST,
    "CANCEL": Classification.MEETING_CANCELLATION,
    "REPLY": Classification.MEETING_RESPONSE,
    "COUNTER": Classification.MEETING_RESPONSE,
}
_ICAL_METHOD = re.compile(r"^METHOD[ \t]*:[ \t]*([A-Za-z-]{1,40})[ \t]*\r?$", re.M)
_CALENDAR_SCAN = 16_000


@dataclass
class _Recipient:
    """One per-recipient block of a delivery-status report."""

    address: str = ""
    action: str = ""
    status: str = ""
    diagnostic: str = ""

    @property
    def failed(self) -> bool:
        return self.action == "failed" or (not self.action and self.status.startswith("5"))


def classify(msg: Message) -> tuple[Classification, BounceInfo | None]:
    """Classify ``msg`` (see the module docstring for the rules)."""
    declared = _content_class(msg)
    if declared is not None:
        return declared, None
    parts = list(_parts(msg))
    kind = _report_kind(msg, parts)
    if kind is not None:
        return kind, None
    subject = header_text(msg, "subject")
    dsn = next((p for p in parts if content_type(p) == "message/delivery-status"), None)
    if dsn is not None:
        verdict = _from_dsn(msg, parts, _recipients(dsn))
        if verdict is not None:
            return verdict
    if _from_mail_system(msg) and _DELAY_SUBJECT.search(subject):
        return Classification.AUTO_REPLY, None
    if _is_bounce(msg, parts, subject):
        return Classification.BOUNCE, _heuristic_info(msg, parts)
    if _is_auto_reply(msg, subject):
        return Classification.AUTO_REPLY, None
    return _meeting_kind(parts) or Classification.NORMAL, None


def _content_class(msg: Message) -> Classification | None:
    """The non-email class the ``Content-Class`` header declares, or None (MS-OXCMAIL)."""
    value = (raw_header(msg, "content-class") or "").split(";", 1)[0].strip().lower()
    value = value.removeprefix(_CLASS_URN)
    if value.startswith(_INFOPATH_PREFIX):
        return Classification.INFOPATH_FORM
    return _CONTENT_CLASSES.get(value)


def _meeting_kind(parts: list[Message]) -> Classification | None:
    """The meeting class of the first ``text/calendar`` iTIP part with a known METHOD."""
    for part in parts:
        if content_type(part) != "text/calendar" or part.is_multipart():
            continue
        kind = _MEETING_METHODS.get(_itip_method(part).upper())
        if kind is not None:
            return kind
    return None


def _itip_method(part: Message) -> str:
    """The part's iTIP method: its ``method=`` parameter (RFC 6047 asks every iMIP message for
    one; Exchange sends it on parts it marks as attachments too), else, for an inline part only,
    the ``METHOD:`` line of the calendar. A plain ``.ics`` file attached has neither."""
    method = param(part, "content-type", "method")
    if method:
        return method.strip()
    if _is_attachment(part):
        return ""
    found = _ICAL_METHOD.search(part_text(part)[:_CALENDAR_SCAN])
    return found.group(1) if found else ""


def _is_attachment(part: Message) -> bool:
    disposition = (raw_header(part, "content-disposition") or "").split(";", 1)[0]
    return disposition.strip().lower() == "attachment"


def _parts(msg: Message) -> Iterator[Message]:
    """The message and its parts, depth first, without entering nested messages."""
    stack = [msg]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        ctype = content_type(part)
        if part.is_multipart() and ctype.startswith("multipart/"):
            stack.extend(reversed(children_of(part)))


def _report_kind(msg: Message, parts: list[Message]) -> Classification | None:
    if content_type(msg) == "multipart/report":
        report_type = param(msg, "content-type", "report-type")
        kind = _REPORT_TYPES.get((report_type or "").strip().lower())
        if kind is not None:
            return kind
    for part in parts:
        kind = _REPORT_PARTS.get(content_type(part))
        if kind is not None:
            return kind
    return None


def _from_dsn(
    msg: Message, parts: list[Message], recipients: list[_Recipient]
) -> tuple[Classification, BounceInfo | None] | None:
    failed = [r for r in recipients if r.failed]
    if not failed:
        return (Classification.AUTO_REPLY, None) if recipients else None
    if not _from_mail_system(msg) and all(r.status.startswith("4") for r in failed):
        return Classification.AUTO_REPLY, None  # challenge/response "waitlisted" notice
    info = BounceInfo(
        original_message_id=_original_message_id(msg, parts),
        recipients=tuple(r.address for r in failed if r.address),
        status=next((r.status for r in failed if r.status), ""),
        diagnostic=next((r.diagnostic for r in failed if r.diagnostic), ""),
    )
    return Classification.BOUNCE, info


def _recipients(dsn: Message) -> list[_Recipient]:
    """Per-recipient fields of a delivery-status part, whatever shape the parser left it in."""
    recipients: list[_Recipient] = []
    for name, value in _dsn_fields(dsn):
        if name in ("final-recipient", "original-recipient") and (
            not recipients or (name == "final-recipient" and recipients[-1].address)
        ):
            recipients.append(_Recipient())
        if not recipients:
            if name not in ("action", "status", "diagnostic-code"):
                continue
            recipients.append(_Recipient())
        _apply_field(recipients[-1], name, value)
    return recipients


def _apply_field(rcpt: _Recipient, name: str, value: str) -> None:
    if name == "final-recipient" or (name == "original-recipient" and not rcpt.address):
        rcpt.address = value.split(";", 1)[-1].strip().strip("<>").strip()
    elif name == "action":
        rcpt.action = (value.split() or [""])[0].lower()
    elif name == "status":
        match = _STATUS.search(value)
        rcpt.status = match.group(1) if match else ""
    elif name == "diagnostic-code":
        rcpt.diagnostic = " ".join(value.split(";", 1)[-1].split())[:300]


def _dsn_fields(dsn: Message) -> Iterator[tuple[str, str]]:
    if dsn.is_multipart():  # the parser split it into header blocks
        for block in children_of(dsn):
            for name, value in block.raw_items():
                yield name.lower(), " ".join(str(value).split())
        return
    text = decode_bytes(payload_bytes(dsn), None)[0]
    yield from _text_fields(text)


def _text_fields(text: str) -> Iterator[tuple[str, str]]:
    name, value = "", ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and name:
            value += " " + line.strip()
            continue
        if name:
            yield name, value.strip()
        key, colon, rest = line.partition(":")
        name, value = (key.strip().lower(), rest) if colon and " " not in key.strip() else ("", "")
    if name:
        yield name, value.strip()


def _original_message_id(msg: Message, parts: list[Message]) -> str | None:
    for part in parts:
        ctype = content_type(part)
        nested = children_of(part)
        if ctype in ("message/rfc822", "message/global") and nested:
            found = raw_header(nested[0], "message-id")
            if found and "<" in found:
                return found.strip()
        elif ctype == "text/rfc822-headers":
            match = _QUOTED_MESSAGE_ID.search(part_text(part))
            if match:
                return match.group(1)
    return _quoted_message_id(parts) or _in_reply_to(msg)


def _quoted_message_id(parts: list[Message]) -> str | None:
    """The first Message-ID line quoted in a text part (the returned original's headers)."""
    for part in parts:
        if content_type(part).startswith("text/") and not part.is_multipart():
            match = _QUOTED_MESSAGE_ID.search(part_text(part))
            if match:
                return match.group(1)
    return None


def _in_reply_to(msg: Message) -> str | None:
    value = raw_header(msg, "in-reply-to") or ""
    match = re.search(r"<[^<>\s]+>", value)
    return match.group(0) if match else None


def _null_return_path(msg: Message) -> bool:
    return (raw_header(msg, "return-path") or "").strip() == "<>"


def _from_mail_system(msg: Message) -> bool:
    """True when From (or, without From, Return-Path) is MAILER-DAEMON, postmaster or empty."""
    value = raw_header(msg, "from")
    if value is None:
        return True
    addr = first_addr(value)
    if not addr or value.strip() in ("<>", ""):
        return True
    local = addr.split("@", 1)[0].strip().lower()
    return local in _DAEMON_LOCALS


def _is_bounce(msg: Message, parts: list[Message], subject: str) -> bool:
    if _STRONG_BOUNCE_SUBJECT.search(subject) or raw_header(msg, "x-failed-recipients"):
        return True
    if not _from_mail_system(msg):
        return False
    return bool(_BOUNCE_SUBJECT.search(subject)) or _body_says_failed(parts)


def _body_says_failed(parts: list[Message]) -> bool:
    for part in parts:
        if content_type(part) in ("text/plain", "text/html") and not part.is_multipart():
            return bool(_FAILURE_PHRASES.search(part_text(part)[:_BODY_SCAN]))
    return False


def _heuristic_info(msg: Message, parts: list[Message]) -> BounceInfo:
    failed = [v.strip() for v in raw_headers(msg, "x-failed-recipients")]
    text = next(
        (
            part_text(p)[: _BODY_SCAN * 4]
            for p in parts
            if content_type(p) == "text/plain" and not p.is_multipart()
        ),
        "",
    )
    status = _STATUS.search(text)
    reply = _SMTP_REPLY.search(text)
    return BounceInfo(
        original_message_id=_original_message_id(msg, parts),
        recipients=tuple(a.strip() for v in failed for a in v.split(",") if a.strip()),
        status=status.group(1) if status and status.group(1)[0] in "45" else "",
        diagnostic=" ".join(reply.group(1).split())[:300] if reply else "",
    )


def _is_auto_reply(msg: Message, subject: str) -> bool:
    auto_submitted = (raw_header(msg, "auto-submitted") or "").split(";", 1)[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return True
    if any(raw_header(msg, name) is not None for name in _AUTOREPLY_HEADERS):
        return True
    if (raw_header(msg, "x-autogenerated") or "").strip().lower() == "reply":
        return True
    precedence = (raw_header(msg, "precedence") or "").strip().lower()
    if precedence == "auto_reply":
        return True
    if precedence in ("bulk", "junk") and _null_return_path(msg):
        return True
    return bool(_AUTO_REPLY_SUBJECT.search(subject))
