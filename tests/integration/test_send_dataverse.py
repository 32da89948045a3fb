"""The send cycle with the real Dataverse adapter against the simulator and an aiosmtpd server."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from router.config import Configuration, SystemConfiguration
from router.context import Context
from router.models import BounceInfo
from router.outgoing import handle_bounce, send_cycle
from router.state.memory import MemoryStore
from tests.integration.send_support import expect_dataverse_recipients, outgoing_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OWNER_ID = "5e0d1a8c-0000-4000-8000-000000000001"
SENT, FAILED = 3, 8


def _context(simulator: Any, port: int, **cfg_args: Any) -> Context:
    cfg = outgoing_cfg(port, owner=OWNER_ID, **cfg_args).model_copy(update={"deployment": "sim"})
    config = Configuration(
        system=SystemConfiguration(), deployments=(simulator.deployment("sim"),), providers=(cfg,)
    )
    return Context(config, MemoryStore())


def test_pending_dataverse_emails_are_sent_once_and_marked_sent(
    simulator: Any, smtp_server: Any
) -> None:
    # Given 20 emails in Pending Send in Dataverse, one with an attachment
    sink = smtp_server()
    simulator.seed_pending(
        19, owner_id=OWNER_ID, subject="Angebot {n} für Zoë", to=["kunde@example.net"]
    )
    pdf = {"filename": "Übersicht.pdf", "mimetype": "application/pdf",
           "body": base64.b64encode(b"%PDF-1.4 x").decode()}  # fmt: skip
    simulator.seed_pending(1, owner_id=OWNER_ID, subject="mit Anhang", attachments=[pdf])
    ctx = _context(simulator, sink.port)

    # When one send cycle runs (and a second finds nothing)
    report = send_cycle(ctx, "out")
    again = send_cycle(ctx, "out")
    ctx.close()
    expect_dataverse_recipients(sink, simulator)  # the envelopes checked against the parties

    # Then SMTP got each once, and Dataverse has them Sent with the Message-ID stored
    assert report.sent == 20 and again.pending == 0
    received = {m.message()["Message-ID"]: m.message() for m in sink.messages}
    assert len(sink.messages) == len(received) == 20
    emails = simulator.emails()
    assert {e["statuscode"] for e in emails} == {SENT}
    assert {e["messageid"] for e in emails} == set(received)
    subjects = sorted(m["Subject"] for m in received.values())
    assert "Angebot 3 für Zoë" in " ".join(subjects)
    (with_file,) = [m for m in received.values() if m["Subject"].startswith("mit Anhang")]
    assert [p.get_filename() for p in with_file.iter_attachments()] == ["Übersicht.pdf"]


def test_550_marks_the_dataverse_email_failed(simulator: Any, smtp_server: Any) -> None:
    sink = smtp_server(rcpt_always={"nobody@example.net": "550 5.1.1 no such user"})
    simulator.seed_pending(1, owner_id=OWNER_ID, to=["nobody@example.net"])
    ctx = _context(simulator, sink.port)

    report = send_cycle(ctx, "out")
    ctx.close()

    assert report.failed == 1 and sink.messages == []
    (email,) = simulator.emails()
    assert email["statuscode"] == FAILED


def test_bounce_marks_a_sent_dataverse_email_failed(simulator: Any, smtp_server: Any) -> None:
    sink = smtp_server()
    simulator.seed_pending(1, owner_id=OWNER_ID, to=["gone@example.net"])
    ctx = _context(simulator, sink.port)
    send_cycle(ctx, "out")
    message_id = sink.messages[0].message()["Message-ID"]

    handle_bounce(ctx, BounceInfo(message_id, ("gone@example.net",), "5.1.1", "user unknown"))
    ctx.close()

    (email,) = simulator.emails()
    assert email["statuscode"] == FAILED
