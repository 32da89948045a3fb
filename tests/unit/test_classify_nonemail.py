"""Messages that are not emails: faxes, voice mail, missed calls, InfoPath forms, meetings."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from router.config import ProviderConfiguration
from router.mail.classify import NON_EMAIL
from router.mail.parse import parse_message
from router.metrics import record_cycle
from router.models import Classification, Direction
from router.policies import policy_for
from router.report import CycleReport, format_report

HEAD = (
    "From: Ann <ann@example.org>\r\nTo: sales@example.com\r\nSubject: {subject}\r\n"
    "Message-ID: <{mid}@example.org>\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
)


def message(extra: str = "", body: str = "Content-Type: text/plain\r\n\r\nhello\r\n") -> bytes:
    return (HEAD.format(subject="s", mid="m1") + extra + body).encode()


def invitation(method: str | None, *, in_param: bool = True, disposition: str = "") -> bytes:
    ctype = "text/calendar; charset=utf-8" + (f"; method={method}" if method and in_param else "")
    ical = "BEGIN:VCALENDAR\r\n" + (f"METHOD:{method}\r\n" if method else "")
    ical += "BEGIN:VEVENT\r\nSUMMARY:Review\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    return message(
        body='Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYou are invited.\r\n"
        f"--b\r\nContent-Type: {ctype}\r\n{disposition}\r\n{ical}--b--\r\n"
    )


def kind_of(raw: bytes) -> Classification:
    return parse_message(raw).classification


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fax", Classification.FAX),
        ("FAX", Classification.FAX),
        ("fax-ca", Classification.FAX),
        ("voice", Classification.VOICE_MAIL),
        ("Voice-UC", Classification.VOICE_MAIL),
        ("voice-ca; charset=x", Classification.VOICE_MAIL),
        ("missedcall", Classification.MISSED_CALL),
        ("MissedCall", Classification.MISSED_CALL),
        ("InfoPathForm.{5D5AC1B2-0000-4000-8000-000000000001}.1", Classification.INFOPATH_FORM),
        ("infopathform.Expense", Classification.INFOPATH_FORM),
        ("urn:content-classes:fax", Classification.FAX),
        ("  voice  ", Classification.VOICE_MAIL),
    ],
)
def test_the_content_class_header_names_what_is_not_an_email(
    header: str, expected: Classification
) -> None:
    assert kind_of(message(f"Content-Class: {header}\r\n")) is expected


@pytest.mark.parametrize(
    "header", ["urn:content-classes:message", "faxes", "voicemail-ish", "InfoPath", ""]
)
def test_other_content_classes_are_ordinary_email(header: str) -> None:
    assert kind_of(message(f"Content-Class: {header}\r\n")) is Classification.NORMAL


def test_a_voice_mail_that_also_looks_like_an_auto_reply_is_voice_mail() -> None:
    raw = message("Content-Class: voice-uc\r\nAuto-Submitted: auto-generated\r\n")
    assert kind_of(raw) is Classification.VOICE_MAIL


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("REQUEST", Classification.MEETING_REQUEST),
        ("request", Classification.MEETING_REQUEST),
        ("CANCEL", Classification.MEETING_CANCELLATION),
        ("REPLY", Classification.MEETING_RESPONSE),
        ("COUNTER", Classification.MEETING_RESPONSE),
    ],
)
def test_an_inline_calendar_part_makes_a_meeting_message(
    method: str, expected: Classification
) -> None:
    assert kind_of(invitation(method)) is expected
    assert kind_of(invitation(method, in_param=False)) is expected  # METHOD: line in the body


def test_a_published_calendar_is_still_an_email() -> None:
    assert kind_of(invitation("PUBLISH")) is Classification.NORMAL
    assert kind_of(invitation(None)) is Classification.NORMAL


def test_an_ics_file_attached_to_a_mail_is_still_an_email() -> None:
    attached = 'Content-Disposition: attachment; filename="a.ics"\r\n'
    raw = invitation("REQUEST", in_param=False, disposition=attached)
    assert kind_of(raw) is Classification.NORMAL


def test_an_itip_part_marked_as_attachment_by_exchange_is_still_a_meeting_message() -> None:
    attached = "Content-Disposition: attachment\r\n"
    assert kind_of(invitation("REPLY", disposition=attached)) is Classification.MEETING_RESPONSE


def test_a_reply_that_quotes_an_invitation_is_still_an_email() -> None:
    quoted = (
        "Content-Type: text/plain\r\n\r\nSee you there.\r\n\r\n> BEGIN:VCALENDAR\r\n"
        "> METHOD:REQUEST\r\n> Content-Type: text/calendar; method=REQUEST\r\n"
    )
    raw = message("In-Reply-To: <invite@example.org>\r\n", body=quoted)
    assert kind_of(raw) is Classification.NORMAL


def test_a_forwarded_invitation_inside_a_message_attachment_is_still_an_email() -> None:
    inner = invitation("REQUEST").decode()
    raw = message(
        body='Content-Type: multipart/mixed; boundary="o"\r\n\r\n'
        "--o\r\nContent-Type: text/plain\r\n\r\nFYI\r\n"
        f"--o\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--o--\r\n"
    )
    assert kind_of(raw) is Classification.NORMAL


def config(**values: str) -> ProviderConfiguration:
    base = ProviderConfiguration(name="box", provider_class="memory", direction=Direction.INCOMING)
    return base.model_copy(update=values)


def test_every_non_email_class_follows_the_non_email_policy() -> None:
    assert {policy_for(config(), k) for k in NON_EMAIL} == {"skip"}
    assert {policy_for(config(non_email_policy="deliver"), k) for k in NON_EMAIL} == {"deliver"}
    quarantine = config(non_email_policy="quarantine", auto_reply_policy="deliver")
    assert {policy_for(quarantine, k) for k in NON_EMAIL} == {"quarantine"}
    assert policy_for(quarantine, Classification.AUTO_REPLY) == "deliver"
    assert policy_for(quarantine, Classification.NORMAL) == "deliver"


def test_the_cycle_report_counts_and_shows_each_class() -> None:
    report = CycleReport("box")
    for kind in (Classification.FAX, Classification.FAX, Classification.MEETING_REQUEST):
        report.count_class(kind)
    assert report.classified == {"fax": 2, "meeting_request": 1}
    assert "by class (skipped or quarantined by policy): fax 2, meeting_request 1" in (
        format_report(report)
    )


def test_the_metrics_count_each_class_of_a_cycle() -> None:
    sample = "email_router_messages_classified_total"
    labels = {"instance": "nonemail-metrics", "kind": "voice_mail"}
    before = REGISTRY.get_sample_value(sample, labels) or 0.0
    report = CycleReport("nonemail-metrics")
    report.count_class(Classification.VOICE_MAIL)
    report.count_class(Classification.VOICE_MAIL)
    record_cycle(report)
    assert REGISTRY.get_sample_value(sample, labels) == before + 2
