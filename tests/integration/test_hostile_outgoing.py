"""Hostile CRM emails against the real send path: the Dataverse simulator and an aiosmtpd server.

Each test seeds Pending Send emails whose recipients, subject, body or attachments were written
by an attacker, runs one send cycle and reads what the SMTP server got - its raw transcript of
commands and the messages - and what Dataverse says. The SMTP fixture itself checks, at
teardown, that every envelope names exactly the mailboxes of the headers (and the declared Bcc).
"""

from __future__ import annotations

import base64
import smtplib
from typing import Any

import pytest

from router.config import Configuration, SystemConfiguration
from router.context import Context
from router.outgoing import SendReport, send_cycle
from router.state.memory import MemoryStore
from tests.integration.send_support import expect_dataverse_recipients, outgoing_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OWNER_ID = "5e0d1a8c-0000-4000-8000-00000000000b"
SENT, FAILED, PENDING_SEND = 3, 8, 6
GOOD = "kunde@example.net"
EVIL = "evil@x.example"

#: Hostile addressused values, each with the words its Failed reason must contain.
HOSTILE = {
    "quote-crlf": ('"\r\n', "U+000D"),
    "idna-empty-label": ("josé@müller..de", "empty label"),
    "crlf-bcc-in-name": (f'"Name\r\nBcc: {EVIL}" <victim@example.net>', "U+000D"),
    "crlf-rcpt-command": (f"(\r\nRCPT TO:<{EVIL}>", "U+000D"),
    "nul-in-local-part": ("nul\x00byte@example.net", "U+0000"),
    "two-addresses": (f"victim@example.net, {EVIL}", "more than one address"),
    "second-angle-address": (f"Victim <victim@example.net> <{EVIL}>", "two addresses"),
    "empty-local-part": ("@example.net", "empty local part"),
    "over-long": ("x" * 300 + "@example.net", "longer than 254"),
    "empty-domain": ("user@", "empty domain"),
}


def _context(simulator: Any, port: int) -> Context:
    cfg = outgoing_cfg(port, owner=OWNER_ID).model_copy(update={"deployment": "sim"})
    config = Configuration(
        system=SystemConfiguration(), deployments=(simulator.deployment("sim"),), providers=(cfg,)
    )
    return Context(config, MemoryStore())


def _one_cycle(simulator: Any, sink: Any) -> SendReport:
    ctx = _context(simulator, sink.port)
    try:
        return send_cycle(ctx, "out")
    finally:
        ctx.close()
        expect_dataverse_recipients(sink, simulator)


def _by_id(simulator: Any) -> dict[str, dict[str, Any]]:
    return {row["activityid"]: row for row in simulator.emails()}


def _rcpt_lines(sink: Any) -> list[str]:
    return [line for line in sink.transcript if line.startswith("RCPT")]


def test_ten_hostile_emails_in_front_of_100_good_ones_fail_alone_and_the_rest_is_sent(
    simulator: Any, smtp_server: Any
) -> None:
    # Given ten CRM emails with hostile recipients, oldest first, then 100 good ones
    sink = smtp_server()
    hostile = [
        simulator.seed_pending(1, owner_id=OWNER_ID, subject=name, to=[address])[0]
        for name, (address, _) in HOSTILE.items()
    ]
    good = simulator.seed_pending(100, owner_id=OWNER_ID, subject="Angebot {n}", to=[GOOD])

    # When one send cycle runs
    report = _one_cycle(simulator, sink)

    # Then the 100 are Sent in that cycle, each hostile one Failed with its reason
    assert (report.sent, report.failed, report.error) == (100, 10, None)
    rows = _by_id(simulator)
    assert {rows[i]["statuscode"] for i in good} == {SENT}
    for email_id, (name, (_, reason)) in zip(hostile, HOSTILE.items(), strict=True):
        assert rows[email_id]["statuscode"] == FAILED, name
        assert any(reason in note for note in rows[email_id]["notes"]), (name, rows[email_id])
    # And the server saw the 100 messages and no RCPT TO for anyone but the good recipient
    assert len(sink.messages) == 100
    assert set(_rcpt_lines(sink)) == {f"RCPT TO:<{GOOD}>"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_recipient_fails_only_its_email_and_the_next_one_is_sent(
    simulator: Any, smtp_server: Any, case: str
) -> None:
    # Given a hostile recipient beside a good one (so the envelope could differ from the
    # headers), then a good email behind it; the server offers SMTPUTF8
    sink = smtp_server()
    address, reason = HOSTILE[case]
    (bad,) = simulator.seed_pending(1, owner_id=OWNER_ID, to=[GOOD, address])
    (fine,) = simulator.seed_pending(1, owner_id=OWNER_ID, to=[GOOD])

    report = _one_cycle(simulator, sink)

    # Then the hostile email fails with the reason (never sent to a different set of
    # recipients than its headers say) and the one behind it is sent in the same cycle
    rows = _by_id(simulator)
    assert (report.sent, report.failed) == (1, 1)
    assert rows[bad]["statuscode"] == FAILED and rows[fine]["statuscode"] == SENT
    assert any(reason in note for note in rows[bad]["notes"])
    assert _rcpt_lines(sink) == [f"RCPT TO:<{GOOD}>"]
    assert all(EVIL not in line for line in sink.transcript)


def test_a_named_crm_address_is_one_mailbox_in_the_envelope_and_the_header(
    simulator: Any, smtp_server: Any
) -> None:
    # Given a CRM address with a display name that needs quoting and one that needs encoding
    sink = smtp_server()
    to = ['"Müller, Jürgen \\"JM\\"" <jm@example.net>', "Zoë <zoe@bücher.example>"]
    simulator.seed_pending(1, owner_id=OWNER_ID, to=to)

    report = _one_cycle(simulator, sink)

    # Then RCPT TO names exactly the two mailboxes the To header shows, names decoded intact
    assert report.sent == 1
    (received,) = sink.messages
    assert _rcpt_lines(sink) == ["RCPT TO:<jm@example.net>", "RCPT TO:<zoe@xn--bcher-kva.example>"]
    addresses = received.message()["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [
        ('Müller, Jürgen "JM"', "jm@example.net"),
        ("Zoë", "zoe@xn--bcher-kva.example"),
    ]


def test_crlf_in_an_attachments_type_name_and_content_id_stays_out_of_its_headers(
    simulator: Any, smtp_server: Any
) -> None:
    # Given an attachment whose MIME type, file name and content id carry CR/LF and a header
    sink = smtp_server()
    attachment = {
        "filename": "a\r\nX-Injected: name\r\n.pdf",
        "mimetype": "application/pdf\r\nX-Injected: type",
        "attachmentcontentid": "logo\r\nX-Injected: cid",
        "body": base64.b64encode(b"%PDF-1.4 x").decode(),
    }
    simulator.seed_pending(1, owner_id=OWNER_ID, to=[GOOD], attachments=[attachment])

    report = _one_cycle(simulator, sink)

    # Then it is sent, and no part of the message has a header the attacker wrote
    assert report.sent == 1
    (received,) = sink.messages
    parts = list(received.message().walk())
    assert all("X-Injected" not in part for part in parts)
    assert b"\r\nX-Injected" not in received.data
    (file,) = [p for p in parts if p.get_filename()]
    assert file.get_content_type() == "application/octet-stream"
    assert file.get_filename() == "a X-Injected: name .pdf"


def test_nul_bytes_never_reach_the_wire_in_subject_or_body(
    simulator: Any, smtp_server: Any
) -> None:
    # Given an email with NULs in its subject and body (a NUL recipient: see HOSTILE)
    sink = smtp_server()
    simulator.seed_pending(
        1, owner_id=OWNER_ID, to=[GOOD], subject="Hallo\x00Welt", body="<p>Text\x00mit NUL</p>"
    )

    report = _one_cycle(simulator, sink)

    # Then it is sent without a single NUL, the text around them kept
    assert report.sent == 1
    (received,) = sink.messages
    assert b"\x00" not in received.data
    msg = received.message()
    assert msg["Subject"] == "HalloWelt"
    assert "<p>Textmit NUL</p>" in msg.get_body(("html",)).get_content()


def test_a_100_kb_subject_without_spaces_is_sent_with_every_line_within_998_octets(
    simulator: Any, smtp_server: Any
) -> None:
    # Given a 100 KB subject with no space to fold at, and a tracking token
    sink = smtp_server()
    subject = "x" * 100_000
    simulator.seed_pending(
        1, owner_id=OWNER_ID, to=[GOOD], subject=subject, tracking_token="CRM:0000042"
    )

    report = _one_cycle(simulator, sink)

    # Then the server takes it (no "500 Line too long"), the subject cut but its token kept
    assert (report.sent, report.failed) == (1, 0)
    (received,) = sink.messages
    assert max(len(line) for line in received.data.split(b"\r\n")) <= 998
    decoded = received.message()["Subject"]
    assert decoded.startswith("x" * 998) and decoded.endswith(" CRM:0000042")
    assert len(decoded) < 1100


def test_the_envelope_check_of_the_smtp_fixture_catches_a_bcc_the_headers_do_not_show(
    smtp_server: Any,
) -> None:
    # Given a message whose To header shows the victim while the envelope adds another
    sink = smtp_server()
    head = b"From: a@example.com\r\nTo: victim@example.net\r\nMessage-ID: <m1@example.com>\r\n"
    with smtplib.SMTP("127.0.0.1", sink.port) as client:
        client.sendmail("a@example.com", ["victim@example.net", EVIL], head + b"\r\nx\r\n")

    # Then the check the fixture runs at teardown reports it (and is reset for the teardown)
    problems = sink.envelope_problems()
    sink.handler.messages.clear()
    assert problems == [
        f"<m1@example.com>: RCPT TO:<{EVIL}> is neither in To/Cc (['victim@example.net']) nor a Bcc"
    ]
