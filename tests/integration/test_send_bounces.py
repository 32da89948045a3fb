"""Bounces close the loop: a DSN for an email the router sent marks that CRM email Failed."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import ProviderConfiguration
from router.ledger import OUTBOUND
from router.models import BounceInfo, Direction, LedgerState
from router.outgoing import handle_bounce, send_cycle
from router.providers.memory import mailbox
from router.state.keys import outbound_key
from tests.integration.send_support import (
    OWNER,
    configuration,
    make_context,
    outgoing_cfg,
    sample_email,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _dsn(original_message_id: str, recipient: str) -> bytes:
    """A multipart/report DSN as an MTA sends it (RFC 3464), quoting the original headers."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        "To: bounces@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.example.net>\r\n"
        "Date: Sat, 28 Nov 2026 08:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "Your message could not be delivered.\r\n"
        "--b1\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected\r\n"
        "--b1\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        "From: sales@example.com\r\n"
        f"To: {recipient}\r\n"
        f"Message-ID: {original_message_id}\r\n"
        "Subject: whatever\r\n"
        "--b1--\r\n"
    ).encode()


def _incoming_cfg() -> ProviderConfiguration:
    return ProviderConfiguration(
        name="bounces-in",
        provider_class="memory",
        direction=Direction.INCOMING,
        deployment="crm",
        email_address="bounces-test-mailbox@example.com",
        user_ids=(OWNER,),
    )


def test_dsn_arriving_in_an_incoming_mailbox_marks_the_sent_email_failed(
    smtp_server: Any,
) -> None:
    # Given an email the router sent through SMTP
    from router.incoming import poll_instance

    sink = smtp_server()
    out = outgoing_cfg(sink.port, params={"envelope_from": "bounces@example.com"})
    ctx, crm = make_context(configuration(out, _incoming_cfg()))
    crm.add_outbound(sample_email(7), OWNER)
    assert send_cycle(ctx, "out").sent == 1
    sent_id = crm.outbound["e00007"].sent_message_id
    assert sent_id == sink.messages[0].message()["Message-ID"]

    # When its DSN arrives in the incoming mailbox and that instance polls
    mailbox("bounces-test-mailbox@example.com").append(_dsn(sent_id, "to7@example.com"))
    poll_instance(ctx, "bounces-in")

    # Then the CRM email is Failed with the DSN's status and diagnostic
    stored = crm.outbound["e00007"]
    assert stored.status == "failed"
    assert "5.1.1" in (stored.reason or "") and "Recipient address rejected" in (
        stored.reason or ""
    )
    entry = ctx.store.get_entry(OUTBOUND, outbound_key("e00007"))
    assert entry is not None and entry.state is LedgerState.FAILED
    assert send_cycle(ctx, "out").pending == 0  # and it is never sent again


def test_bounce_for_a_message_the_router_did_not_send_changes_nothing(smtp_server: Any) -> None:
    sink = smtp_server()
    ctx, crm = make_context(configuration(outgoing_cfg(sink.port)))
    crm.add_outbound(sample_email(1), OWNER)
    send_cycle(ctx, "out")

    matched = handle_bounce(ctx, BounceInfo("<someone-else@example.org>", (), "5.1.1", "x"))

    assert matched is False and crm.outbound["e00001"].status == "sent"


def test_bounce_matches_without_angle_brackets(smtp_server: Any) -> None:
    sink = smtp_server()
    ctx, crm = make_context(configuration(outgoing_cfg(sink.port)))
    crm.add_outbound(sample_email(2), OWNER)
    send_cycle(ctx, "out")
    bare = (crm.outbound["e00002"].sent_message_id or "").strip("<>")

    assert handle_bounce(ctx, BounceInfo(bare, ("to2@example.com",), "5.2.2", "mailbox full"))
    assert crm.outbound["e00002"].reason == "bounced: 5.2.2 mailbox full"
