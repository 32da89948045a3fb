"""The send cycle against a real SMTP server (aiosmtpd): composition, marking, retries, failures."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from router.errors import CrmUnavailable, ProviderAuthError
from router.ledger import OUTBOUND
from router.models import Address, LedgerState, OutboundEmail
from router.outgoing import send_cycle
from router.state.keys import outbound_key
from tests.integration.send_support import (
    DASH,
    OWNER,
    configuration,
    make_context,
    outgoing_cfg,
    sample_email,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Clock:
    """A clock the test moves forward, so retries come due without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_500_pending_emails_arrive_once_each_as_correct_messages(smtp_server: Any) -> None:
    # Given 500 pending CRM emails with non-ASCII names, Cc, Bcc and attachments
    sink = smtp_server()
    cfg = outgoing_cfg(sink.port, params={"envelope_from": "bounces@example.com"})
    ctx, crm = make_context(configuration(cfg))
    emails = [sample_email(i) for i in range(500)]
    for email in emails:
        crm.add_outbound(email, OWNER)

    # When one send cycle runs
    report = send_cycle(ctx, "out")

    # Then the server got each email exactly once, each marked Sent with its Message-ID
    assert (report.sent, report.failed, report.retried) == (500, 0, 0)
    assert len(sink.messages) == 500
    by_id = {m.message()["Message-ID"]: m for m in sink.messages}
    assert len(by_id) == 500
    for email in emails:
        stored = crm.outbound[email.email_id]
        assert stored.status == "sent" and stored.marks == ["sent"]
        received = by_id[stored.sent_message_id]
        _check_message(email, received)


def _check_message(email: OutboundEmail, received: Any) -> None:
    msg = received.message()
    i = int(email.email_id[1:])
    assert received.mail_from == "bounces@example.com"
    assert sorted(received.rcpt_tos) == sorted(
        [f"to{i}@example.com", f"cc{i}@example.com", f"bcc{i}@example.com"]
    )
    assert msg["Subject"] == f"Grüße Nr. {i} {DASH} Ihr Angebot CRM:{i:07d}"
    assert str(msg["From"]) == "Vertrieb Köln <sales@example.com>"
    assert str(msg["To"]) == f"Jürgen Größ <to{i}@example.com>"
    assert str(msg["Cc"]) == f"Zoë Ångström <cc{i}@example.com>"
    assert "Bcc" not in msg and f"bcc{i}@".encode() not in received.data
    assert msg["Date"] is not None
    assert msg.get_content_type() == "multipart/mixed"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Hallo Jürgen," in text and "<b>" not in text
    assert f"Angebot <b>{i}</b>" in html
    files = [(p.get_filename(), p.get_content()) for p in msg.iter_attachments()]
    assert files == [(f"Angebot Nr. {i} {DASH} Müller.pdf", email.attachments[0].content)]
    assert b"filename*=utf-8''Angebot" in received.data  # RFC 2231
    assert received.data.isascii()


def test_a_second_cycle_sends_nothing_again(smtp_server: Any) -> None:
    sink = smtp_server()
    cfg = outgoing_cfg(sink.port)
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(sample_email(1), OWNER)
    send_cycle(ctx, "out")
    report = send_cycle(ctx, "out")
    assert report.pending == 0 and len(sink.messages) == 1


def test_smtp_auth_failure_stops_the_instance_and_sends_nothing(smtp_server: Any) -> None:
    sink = smtp_server(users={"sales": "right"})
    cfg = outgoing_cfg(sink.port, auth="password", user="sales", password="wrong")
    ctx, crm = make_context(configuration(cfg))
    for i in range(3):
        crm.add_outbound(sample_email(i), OWNER)

    with pytest.raises(ProviderAuthError) as err:
        send_cycle(ctx, "out")

    assert "535" in str(err.value) and "wrong" not in str(err.value)
    assert sink.messages == []
    assert all(s.status == "pending" for s in crm.outbound.values())
    assert ctx.store.list_entries(OUTBOUND) == []
    assert ctx.store.get_lease("out") is None
    assert ctx.store.get_stats("out").last_error is not None


def test_smtp_auth_with_the_right_password_sends(smtp_server: Any) -> None:
    sink = smtp_server(users={"sales": "right"})
    cfg = outgoing_cfg(sink.port, auth="password", user="sales", password="right")
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(sample_email(1), OWNER)
    assert send_cycle(ctx, "out").sent == 1
    assert len(sink.messages) == 1


def test_recipient_refused_with_451_gets_the_email_once_on_retry(smtp_server: Any) -> None:
    # Given a server that answers 451 to the Cc recipient once, then accepts him
    sink = smtp_server(rcpt_replies={"cc1@example.com": ["451 4.7.1 greylisted, try later"]})
    cfg = outgoing_cfg(sink.port, params={"retry_backoff": "30"})
    clock = Clock()
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(sample_email(1), OWNER)

    # When the first cycle runs, the others get it and the email waits for its retry
    first = send_cycle(ctx, "out", clock=clock)
    assert first.retried == 1 and crm.outbound["e00001"].status == "pending"
    assert crm.outbound["e00001"].attempts == 1
    assert send_cycle(ctx, "out", clock=clock).skipped == 1  # backoff not elapsed

    # And after the backoff only the refused recipient is sent to
    clock.now += 31
    second = send_cycle(ctx, "out", clock=clock)

    assert second.sent == 1 and crm.outbound["e00001"].status == "sent"
    per_rcpt = Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert per_rcpt == {"to1@example.com": 1, "cc1@example.com": 1, "bcc1@example.com": 1}
    assert len({m.message()["Message-ID"] for m in sink.messages}) == 1


def test_all_recipients_451_then_accepted_is_sent_exactly_once(smtp_server: Any) -> None:
    sink = smtp_server(data_replies=["451 4.3.0 queue full"])
    cfg = outgoing_cfg(sink.port, params={"retry_backoff": "10"})
    clock = Clock()
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(sample_email(1), OWNER)

    assert send_cycle(ctx, "out", clock=clock).retried == 1
    clock.now += 11
    assert send_cycle(ctx, "out", clock=clock).sent == 1

    assert len(sink.messages) == 1
    assert crm.outbound["e00001"].marks == ["sent"]


def test_550_marks_the_email_failed_with_the_reply_text(smtp_server: Any) -> None:
    email = OutboundEmail(
        "bad", "Hi", "<p>x</p>", Address("sales@example.com"), to=(Address("nobody@example.com"),)
    )
    sink = smtp_server(
        rcpt_always={"nobody@example.com": "550 5.1.1 <nobody@example.com>: no such user"}
    )
    cfg = outgoing_cfg(sink.port)
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(email, OWNER)

    report = send_cycle(ctx, "out")

    assert report.failed == 1 and sink.messages == []
    stored = crm.outbound["bad"]
    assert stored.status == "failed"
    assert "550 5.1.1 <nobody@example.com>: no such user" in (stored.reason or "")
    assert ctx.store.get_entry(OUTBOUND, outbound_key("bad")).state is LedgerState.FAILED


def test_4xx_every_time_fails_after_maximum_delivery_attempts(smtp_server: Any) -> None:
    sink = smtp_server(rcpt_always={"to1@example.com": "452 4.2.2 mailbox full"})
    email = OutboundEmail(
        "e00001", "Hi", "<p>x</p>", Address("sales@example.com"), to=(Address("to1@example.com"),)
    )
    cfg = outgoing_cfg(sink.port, params={"retry_backoff": "1"}, max_attempts=3)
    clock = Clock()
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(email, OWNER)

    outcomes = []
    for _ in range(4):
        outcomes.append([o.outcome for o in send_cycle(ctx, "out", clock=clock).outcomes])
        clock.now += 100

    assert outcomes[:3] == [["retry"], ["retry"], ["failed"]]
    assert crm.outbound["e00001"].status == "failed"
    assert "452 4.2.2 mailbox full" in (crm.outbound["e00001"].reason or "")
    assert "after 3 attempts" in (crm.outbound["e00001"].reason or "")


def test_crash_between_smtp_and_crm_marks_sent_without_sending_again(smtp_server: Any) -> None:
    # Given the CRM fails when told "Sent" (as if the process died right after SMTP accepted)
    sink = smtp_server()
    cfg = outgoing_cfg(sink.port)
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(sample_email(1), OWNER)

    def outage(call: str) -> None:
        if call == "mark_sent":
            raise CrmUnavailable("CRM down")

    crm.fault = outage
    with pytest.raises(CrmUnavailable):
        send_cycle(ctx, "out")
    assert ctx.store.get_entry(OUTBOUND, outbound_key("e00001")).state is LedgerState.SUBMITTED

    # When the CRM is back and the next cycle runs
    crm.fault = None
    report = send_cycle(ctx, "out")

    # Then the email is only marked Sent, never submitted again
    assert report.sent == 1 and len(sink.messages) == 1
    assert crm.outbound["e00001"].sent_message_id == sink.messages[0].message()["Message-ID"]


def test_two_instances_serving_the_same_user_send_each_email_once(smtp_server: Any) -> None:
    sink = smtp_server()
    a, b = outgoing_cfg(sink.port, name="a"), outgoing_cfg(sink.port, name="b")
    ctx, crm = make_context(configuration(a, b))
    for i in range(200):
        crm.add_outbound(sample_email(i, attachments=False), OWNER)

    threads = [threading.Thread(target=send_cycle, args=(ctx, n)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    ids = Counter(m.message()["Message-ID"] for m in sink.messages)
    assert len(ids) == 200 and set(ids.values()) == {1}
    assert all(s.status == "sent" for s in crm.outbound.values())


def test_server_dropping_the_idle_connection_is_reconnected(smtp_server: Any) -> None:
    sink = smtp_server()
    cfg = outgoing_cfg(sink.port)
    ctx, crm = make_context(configuration(cfg))
    for i in range(4):
        crm.add_outbound(sample_email(i, attachments=False), OWNER)
    original = ctx.provider

    def provider_that_loses_its_connection(cfg: Any) -> Any:
        provider = original(cfg)
        real = provider._transaction
        count = {"n": 0}

        def transaction(*args: Any) -> Any:
            count["n"] += 1
            if count["n"] == 3 and provider._client is not None:
                provider._client.sock.close()  # the server went away while idle
            return real(*args)

        provider._transaction = transaction
        return provider

    ctx.provider = provider_that_loses_its_connection  # type: ignore[method-assign]
    report = send_cycle(ctx, "out")
    assert report.sent == 4 and len(sink.messages) == 4


def test_recipient_that_keeps_deferring_ends_as_sent_when_the_others_got_it(
    smtp_server: Any,
) -> None:
    # Given a server that defers the Cc recipient on every attempt
    sink = smtp_server(rcpt_always={"cc1@example.com": "452 4.2.2 mailbox full"})
    cfg = outgoing_cfg(sink.port, params={"retry_backoff": "1"}, max_attempts=2)
    clock = Clock()
    ctx, crm = make_context(configuration(cfg))
    crm.add_outbound(sample_email(1), OWNER)

    # When the attempts run out
    for _ in range(3):
        send_cycle(ctx, "out", clock=clock)
        clock.now += 10

    # Then the email left (To and Bcc got it once) and is Sent, not Failed
    assert [m.rcpt_tos for m in sink.messages] == [("to1@example.com", "bcc1@example.com")]
    assert crm.outbound["e00001"].status == "sent"
    assert ctx.store.get_entry(OUTBOUND, outbound_key("e00001")).state is LedgerState.SENT
