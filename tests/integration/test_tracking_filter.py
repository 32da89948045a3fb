"""Tracking filters through a real Dovecot and the Dataverse simulator's CheckIncomingEmail.

An owner whose filtering method is "responses to CRM email" (1) gets only the replies that carry
a tracking token in the subject or answer (In-Reply-To / References) an email the organisation
sent; the others are recorded as filtered with the CRM's reason and post-processed like
delivered mail. An owner taking all email (0) costs no CheckIncomingEmail at all.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from router.config import Configuration
from router.context import Context
from router.crm.dataverse import DataverseAdapter
from router.incoming import poll_instance
from router.models import LedgerState
from router.report import format_report
from router.state.sqlite import SqliteStore
from tests.servers.dovecot import Dovecot
from tests.servers.simulator import SimulatorServer

pytestmark = pytest.mark.dovecot

SENT_ID = f"<quote-{uuid.uuid4().hex}@crm.example>"


def mail(
    subject: str,
    *,
    in_reply_to: str = "",
    references: str = "",
    sender: str = "customer@example.org",
) -> bytes:
    extra = f"In-Reply-To: {in_reply_to}\r\n" if in_reply_to else ""
    extra += f"References: {references}\r\n" if references else ""
    return (
        f"From: Someone <{sender}>\r\nTo: {{to}}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n{extra}"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain\r\n\r\nhello\r\n"
    ).encode()


MAILBOX = [
    mail("Re: your quote CRM:0001001"),  # tracking token
    mail("Re: your quote", in_reply_to=SENT_ID),  # answers an email the CRM sent
    mail("Re: Re: your quote", references=f"<a@example.org> {SENT_ID}"),  # in References
    mail("A new question"),  # not a response
    mail("Re: something else", in_reply_to="<elsewhere@example.org>"),  # answers someone else
]
WANTED = ["Re: Re: your quote", "Re: your quote", "Re: your quote CRM:0001001"]


def rig(
    dovecot: Dovecot,
    simulator: SimulatorServer,
    tmp_path: Path,
    method: int,
    mailbox: list[bytes] = MAILBOX,
) -> Context:
    user = dovecot.new_user()
    owner = str(uuid.uuid4())
    simulator.add_rows(
        "systemusers",
        [{"systemuserid": owner, "internalemailaddress": user,
          "incomingemailfilteringmethod": method}],
    )  # fmt: skip
    dovecot.append_many(user, [raw.replace(b"{to}", user.encode()) for raw in mailbox])
    cfg = dovecot.provider_config(user, "imap", name="box", deployment="sim")
    cfg = cfg.model_copy(update={"user_ids": (owner,), "email_address": user})
    config = Configuration(deployments=(simulator.deployment(),), providers=(cfg,))
    return Context(config, SqliteStore(tmp_path / "state.db"))


def seed_sent_email(ctx: Context, simulator: SimulatorServer) -> None:
    """An email the organisation sent (marked Sent with its Message-ID, as the router does)."""
    (email_id,) = simulator.seed_pending(1, tracking_token="CRM:0001001")
    crm = ctx.crm(ctx.instance("box"))
    assert isinstance(crm, DataverseAdapter)
    crm.mark_sent(email_id, SENT_ID, "CRM:0001001")


def test_an_owner_taking_responses_gets_only_replies_to_crm_email(
    dovecot: Dovecot, simulator: SimulatorServer, tmp_path: Path
) -> None:
    ctx = rig(dovecot, simulator, tmp_path, method=1)
    try:
        seed_sent_email(ctx, simulator)
        report = poll_instance(ctx, "box")
        entries = ctx.store.list_entries("box", None)
    finally:
        ctx.close()
    received = sorted(r["subject"] for r in simulator.emails() if r["directioncode"] == 0)
    assert received == WANTED, format_report(report)
    assert (report.delivered, report.filtered) == (3, 2)
    assert report.tracking_filtered == {"NoCorrelationMatch": 2}
    assert {e.state for e in entries} == {LedgerState.DONE}  # filtered ones post-processed too
    reasons = [e.reason for e in entries if e.reason]
    assert reasons == ["tracking filter: ReasonCode 1 (NoCorrelationMatch)"] * 2


def test_an_owner_taking_all_email_costs_no_check_request(
    dovecot: Dovecot, simulator: SimulatorServer, tmp_path: Path
) -> None:
    ctx = rig(dovecot, simulator, tmp_path, method=0)
    try:
        since = simulator.last_request_id()
        report = poll_instance(ctx, "box")
    finally:
        ctx.close()
    assert report.delivered == len(MAILBOX)
    paths = [r["path"] for r in simulator.request_log(since)]
    assert not [p for p in paths if "CheckIncomingEmail" in p]
    assert len([p for p in paths if "usersettingscollection" in p]) == 1  # read once, cached


def test_an_owner_taking_mail_from_crm_records_gets_only_what_contacts_send(
    dovecot: Dovecot, simulator: SimulatorServer, tmp_path: Path
) -> None:
    # Given a contact known to the CRM (an activity party bound to it) and an owner with method 2
    mailbox = [mail("from a contact"), mail("from a stranger", sender="stranger@example.net")]
    ctx = rig(dovecot, simulator, tmp_path, method=2, mailbox=mailbox)
    try:
        crm = ctx.crm(ctx.instance("box"))
        assert isinstance(crm, DataverseAdapter)
        party = {"participationtypemask": 2, "addressused": "customer@example.org",
                 "partyid_contact@odata.bind": f"/contacts({uuid.uuid4()})"}  # fmt: skip
        crm.api.call("POST", "emails", "create", json={"subject": "hello",
                     "email_activity_parties": [party]})  # fmt: skip
        report = poll_instance(ctx, "box")
    finally:
        ctx.close()
    received = [r["subject"] for r in simulator.emails() if r["directioncode"] == 0]
    assert received == ["from a contact"], format_report(report)
    assert report.tracking_filtered == {"InvalidSender": 1}
