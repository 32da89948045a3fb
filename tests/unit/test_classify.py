"""router.mail.classify: auto-replies, bounces (RFC 3464 and the common non-standard shapes), read
receipts, feedback reports, and ordinary mail that only looks like one of them."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

import pytest

from router.mail.classify import classify
from router.mail.parse import parse_message
from router.models import Classification
from tests.servers.common import require
from tests.support.corpus import CORPUS

AUTO, BOUNCE, NORMAL = Classification.AUTO_REPLY, Classification.BOUNCE, Classification.NORMAL


def parse(*headers: str, body: str = "Hello\n") -> EmailMessage:
    raw = "\n".join(headers) + "\n\n" + body
    parsed = email.message_from_string(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def report(
    report_type: str, status_part: str, original: str = "", sender: str = ""
) -> EmailMessage:
    return parse(
        f"From: {sender or 'MAILER-DAEMON@mx.example.com'}",
        "Subject: Delivery Status Notification",
        f"Content-Type: multipart/report; report-type={report_type}; boundary=RR",
        body="--RR\nContent-Type: text/plain\n\nA notice.\n"
        f"--RR\nContent-Type: message/{report_type}\n\n{status_part}\n"
        + (f"--RR\nContent-Type: message/rfc822\n\n{original}\n" if original else "")
        + "--RR--\n",
    )


FAILED = (
    "Reporting-MTA: dns; mx.example.com\n\n"
    "Final-Recipient: rfc822; gone@example.org\nAction: failed\nStatus: 5.1.1\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org>... User unknown\n"
)
ORIGINAL = "Message-ID: <out-42@crm.example.com>\nSubject: Offer\nFrom: crm@example.com\n\nHi\n"


def test_rfc3464_failure_is_a_bounce_with_the_original_message_id_and_status() -> None:
    kind, info = classify(report("delivery-status", FAILED, ORIGINAL))

    assert kind is BOUNCE
    assert info is not None
    assert info.original_message_id == "<out-42@crm.example.com>"
    assert info.recipients == ("gone@example.org",)
    assert info.status == "5.1.1"
    assert info.diagnostic == "550 5.1.1 <gone@example.org>... User unknown"


def test_original_message_id_is_read_from_text_rfc822_headers_too() -> None:
    msg = parse(
        "From: MAILER-DAEMON@mx.example.com",
        "Content-Type: multipart/report; report-type=delivery-status; boundary=RR",
        body="--RR\nContent-Type: text/plain\n\nfailed\n"
        f"--RR\nContent-Type: message/delivery-status\n\n{FAILED}\n"
        "--RR\nContent-Type: text/rfc822-headers\n\nFrom: a@b\nMessage-Id: <h-1@crm>\n\n"
        "--RR--\n",
    )

    _, info = classify(msg)

    assert info is not None and info.original_message_id == "<h-1@crm>"


def test_several_failed_recipients_without_blank_lines_are_all_reported() -> None:
    status = (
        "Reporting-MTA: dns; mx\nFinal-Recipient: rfc822; a@x\nAction: failed\nStatus: 5.1.1\n"
        "Final-Recipient: rfc822; b@x\nAction: failed\nStatus: 5.2.2\n"
    )

    _, info = classify(report("delivery-status", status))

    assert info is not None and info.recipients == ("a@x", "b@x")


@pytest.mark.parametrize("action", ["delayed", "delivered", "relayed", "expanded"])
def test_dsn_without_a_failure_is_a_notice_not_a_bounce(action: str) -> None:
    status = f"Final-Recipient: rfc822; slow@example.org\nAction: {action}\nStatus: 4.4.1\n"

    assert classify(report("delivery-status", status)) == (AUTO, None)


def test_delayed_mail_warning_from_a_mail_system_is_not_a_bounce() -> None:
    msg = parse("From: MAILER-DAEMON@mx.example.com", "Subject: Delayed Mail (still being retried)")

    assert classify(msg) == (AUTO, None)


def test_challenge_response_notice_shaped_as_a_transient_dsn_is_an_auto_reply() -> None:
    status = "Final-Recipient: rfc822; boss@example.org\nAction: failed\nStatus: 4.7.0\n"
    msg = report("delivery-status", status, sender="noreply@challenge.example")

    assert classify(msg) == (AUTO, None)


def test_expired_message_from_a_mail_system_with_a_4xx_status_is_still_a_bounce() -> None:
    status = "Final-Recipient: rfc822; boss@example.org\nAction: failed\nStatus: 4.4.7\n"

    assert classify(report("delivery-status", status))[0] is BOUNCE


@pytest.mark.parametrize(
    ("sender", "subject"),
    [
        ("MAILER-DAEMON@mx.example.com", "Undelivered Mail Returned to Sender"),
        (
            "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
            "Delivery Status Notification (Failure)",
        ),
        (
            "Mail Delivery System <Mailer-Daemon@host>",
            "Mail delivery failed: returning message to sender",
        ),
        ("System Administrator <postmaster@example.com>", "Undeliverable: Offer"),
        ("MAILER-DAEMON@host", "failure notice"),
        ("postmaster@host", "Returned mail: see transcript for details"),
        ("someone@example.com", "Undeliverable: Offer"),
        ("Postmaster <postmaster@example.de>", "Unzustellbar: Angebot"),
    ],
)
def test_common_non_standard_bounces_are_recognised(sender: str, subject: str) -> None:
    msg = parse(f"From: {sender}", f"Subject: {subject}")

    assert classify(msg)[0] is BOUNCE


def test_non_standard_bounce_takes_the_original_id_from_the_quoted_headers() -> None:
    body = (
        "This message was created automatically by mail delivery software.\n\n"
        "  gone@example.org\n    SMTP error from remote mail server after RCPT TO:\n"
        "    550 5.1.1 User unknown\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        "Message-Id: <quoted-7@crm.example.com>\nSubject: Offer\n\nHi\n"
    )
    msg = parse(
        "From: Mail Delivery System <Mailer-Daemon@mx.example.com>",
        "Subject: Mail delivery failed: returning message to sender",
        "Message-Id: <bounce-itself@mx.example.com>",
        "X-Failed-Recipients: gone@example.org",
        body=body,
    )

    kind, info = classify(msg)

    assert kind is BOUNCE
    assert info is not None
    assert info.original_message_id == "<quoted-7@crm.example.com>"
    assert info.recipients == ("gone@example.org",)
    assert info.status == "5.1.1"
    assert info.diagnostic == "550 5.1.1 User unknown"


def test_mail_system_message_is_a_bounce_when_its_body_reports_a_failure() -> None:
    msg = parse(
        "From: <>",
        "Subject: Notice",
        body="You sent mail to a@b.c. That's not a valid user here.\n",
    )

    assert classify(msg)[0] is BOUNCE


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "Auto-Submitted: auto-notified; owner-email=me@example.com",
        "X-Autoreply: yes",
        "X-Autorespond: Vacation",
        "X-Autoresponder: 1",
        "Precedence: auto_reply",
    ],
)
def test_auto_reply_headers_make_an_auto_reply(header: str) -> None:
    assert classify(parse("From: boss@example.com", "Subject: Re: Offer", header)) == (AUTO, None)


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Offer",
        "Automatic reply: Offer",
        "Auto: Offer",
        "Abwesenheitsnotiz: Angebot",
        "Réponse automatique : Offre",
        "Autosvar: Tilbud",
        "自動応答: ご提案",
        "Automatyczna odpowiedź: test",
        "Risposta automatica: Offerta",
        "Respuesta automática: Oferta",
        "Re: blah (Automatic Response)",
        "Автоответ: Предложение",
    ],
)
def test_out_of_office_subjects_in_several_languages_make_an_auto_reply(subject: str) -> None:
    assert classify(parse("From: boss@example.com", f"Subject: {subject}"))[0] is AUTO


def test_bulk_precedence_counts_only_with_a_null_envelope_sender() -> None:
    list_mail = parse("From: a@example.com", "Sender: owner-list@example.com", "Precedence: bulk")
    responder = parse("From: a@example.com", "Return-Path: <>", "Precedence: bulk")

    assert classify(list_mail)[0] is NORMAL
    assert classify(responder)[0] is AUTO


@pytest.mark.parametrize(
    "headers",
    [
        ("Auto-Submitted: no",),
        ("X-Auto-Response-Suppress: All",),
        ("Subject: Project delayed until May",),
        ("Subject: Fwd: Undeliverable reports from the warehouse",),
        ("Subject: The office is out of paper",),
    ],
)
def test_ordinary_mail_that_only_looks_automatic_stays_normal(headers: tuple[str, ...]) -> None:
    assert classify(parse("From: colleague@example.com", *headers)) == (NORMAL, None)


def test_forwarded_bounce_inside_a_message_is_not_a_bounce() -> None:
    inner = report("delivery-status", FAILED, ORIGINAL).as_string()
    msg = parse(
        "From: colleague@example.com",
        "Subject: Fwd: look at this",
        "Content-Type: multipart/mixed; boundary=OUT",
        body="--OUT\nContent-Type: text/plain\n\nFYI\n"
        f"--OUT\nContent-Type: message/rfc822\n\n{inner}\n--OUT--\n",
    )

    assert classify(msg) == (NORMAL, None)


def test_read_receipts_and_feedback_reports_have_their_own_classes() -> None:
    mdn = report(
        "disposition-notification",
        "Final-Recipient: rfc822; a@b\nDisposition: manual-action/MDN-sent-manually; displayed\n",
    )
    arf = report("feedback-report", "Feedback-Type: abuse\nUser-Agent: x/1\nVersion: 1\n")

    assert classify(mdn) == (Classification.READ_RECEIPT, None)
    assert classify(arf) == (Classification.FEEDBACK_REPORT, None)


@pytest.mark.parametrize(
    ("name", "original_id", "status", "recipient"),
    [
        (
            "sisimai-set-of-emails/dsn-rfc3464/rfc3464-01.eml",
            "<E1C50F1B-1C83-4820-BC36-AC6FBFBE8568@example.org>",
            "5.1.1",
            "userunknown@bouncehammer.jp",
        ),
        (
            "bounceparser-perl/warning-1.eml",
            "<20090706231210.570C471C4D7@server4.example.co.uk>",
            "5.1.1",
            "example@example.com",
        ),
        (
            "sisimai-set-of-emails/bounce-by-mta/lhost-gmail-01.eml",
            "<D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com>",
            "5.1.1",
            "userunknown@example.jp",
        ),
        (
            "mailgun-flanker/bounce/mailbox-full.eml",
            "<4E326A95.3010907@example.com>",
            None,
            None,
        ),
    ],
)
def test_real_bounces_give_the_original_message_id_and_status(
    name: str, original_id: str, status: str | None, recipient: str | None
) -> None:
    path = CORPUS / name
    require(path.is_file(), f"corpus file missing: {path}")

    activity = parse_message(path.read_bytes())

    assert activity.classification is BOUNCE
    assert activity.bounce is not None
    assert activity.bounce.original_message_id == original_id
    if status is not None:
        assert activity.bounce.status == status
    if recipient is not None:
        assert recipient in activity.bounce.recipients
