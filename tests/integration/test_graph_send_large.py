"""Sending a CRM email over Graph's 4 MB sendMail limit: a draft, an upload session, ``send``.

Dataverse simulator (a pending email with a 9 MB and a 1 MB attachment) -> the real send cycle
-> Graph simulator, which takes the draft (refusing a MIME request over 4 MB, an attachment POST
from 3 MB, an upload session under 3 MB and a range over 4 MB, as Graph does) and composes the
sent message from the draft and its files.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os

from router.outgoing import send_cycle
from router.providers.credentials import SOURCES
from router.testing.graphsim import GraphSimulator
from router.testing.simulator import SimulatorServer
from tests.servers.graphsim import sending_context

OWNER_ID = "5e0d1a8c-0000-4000-8000-0000000000c9"
SENT = 3
BIG = os.urandom(9 * 1024 * 1024)  # random: no compression or pattern can hide a wrong byte
SMALL = os.urandom(1024 * 1024)


def files(message: email.message.EmailMessage) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[str(part.get_filename())] = payload
    return found


def test_an_email_with_a_9_mb_attachment_is_sent_once_with_every_byte_through_a_draft(
    simulator: SimulatorServer, graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    # Given a pending email of about 13 MB as MIME, three times Graph's sendMail limit
    SOURCES.clear()
    attachments = [
        {"filename": "plan.bin", "mimetype": "application/octet-stream",
         "body": base64.b64encode(BIG).decode()},
        {"filename": "angebot.pdf", "mimetype": "application/pdf",
         "body": base64.b64encode(SMALL).decode()},
    ]  # fmt: skip
    (email_id,) = simulator.seed_pending(
        1, owner_id=OWNER_ID, sender=graph_mailbox, to=["kunde@example.net"],
        bcc=["verdeckt@example.net"], attachments=attachments,
    )  # fmt: skip
    ctx = sending_context(simulator, graphsim, graph_mailbox, OWNER_ID)

    # When the send cycle runs (and once more: nothing may go twice)
    reports = [send_cycle(ctx, "graph-out") for _ in range(2)]
    ctx.close()

    # Then the email left once, with both files byte for byte, and is Sent in the CRM
    assert [r.sent for r in reports] == [1, 0]
    (sent,) = graphsim.sent(graph_mailbox)
    message = email.message_from_string(sent["mime"], policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    assert files(message) == {"plan.bin": BIG, "angebot.pdf": SMALL}
    assert "verdeckt@example.net" in sent["bcc"]
    (row,) = [e for e in simulator.emails() if e["activityid"] == email_id]
    assert row["statuscode"] == SENT and row["messageid"] == sent["message_id"]
    # ... the draft is gone from Drafts, and no request broke Graph's size rules
    assert graphsim.folder(graph_mailbox, "drafts") == []
    log = graphsim.request_log(graph_mailbox)
    assert {e["status"] for e in log} <= {201, 202}, sorted({e["status"] for e in log})
