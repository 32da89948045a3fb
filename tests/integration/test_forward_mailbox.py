"""A forward mailbox on a real Dovecot, delivering to the Dataverse simulator.

Users' rules forward their mail to one mailbox, as attachments or inline (Gmail, Outlook,
Thunderbird and Apple Mail forms); the router delivers each original once, for the user it was
for, and quarantines (the default ``<ForwardUnknownPolicy>``) the carriers for unknown users.
A CRM that fails between two originals of one carrier loses and duplicates nothing.

Sizes: ``ER_FORWARD_USERS`` (50) users and ``ER_FORWARD_MESSAGES`` (200) carriers, 5 of them for
unknown users.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from router.config import Configuration, ProviderConfiguration
from router.context import Context
from router.crm.base import DeliveryTarget
from router.crm.dataverse import DataverseAdapter
from router.errors import CrmUnavailable
from router.incoming import poll_instance
from router.models import Activity, DeliveryResult, Direction, LedgerState
from router.report import format_report
from router.state.sqlite import SqliteStore
from tests.servers.dovecot import Dovecot
from tests.servers.simulator import SimulatorServer

pytestmark = pytest.mark.dovecot

USERS = int(os.environ.get("ER_FORWARD_USERS", "50"))
MESSAGES = int(os.environ.get("ER_FORWARD_MESSAGES", "200"))
UNKNOWN = 5
DOMAIN = f"corp{uuid.uuid4().hex[:6]}.example"


def user_address(n: int) -> str:
    return f"user{n}@{DOMAIN}"


def user_id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def original(n: int, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@example.org>"
    msg["To"] = to
    msg["Subject"] = f"question {n}"
    msg["Message-ID"] = f"<q{n}.{DOMAIN}@example.org>"
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    msg.set_content(f"Question number {n}.")
    return msg.as_bytes()


def attached(sender: str, *originals: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "forward@corp.example", "FW: question"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{DOMAIN}>"
    msg.set_content("")
    for raw in originals:
        msg.add_attachment(raw, maintype="message", subtype="rfc822")  # type: ignore[arg-type]
    return msg.as_bytes()


INLINE_FORMS = [
    "---------- Forwarded message ---------\nFrom: Customer {n} <customer{n}@example.org>\n"
    "Date: Mon, Mar 2, 2026 at 10:00 AM\nSubject: question {n}\nTo: <{to}>\n\n",
    "-----Original Message-----\nFrom: Customer {n} [mailto:customer{n}@example.org]\n"
    "Sent: Monday, March 2, 2026 10:00 AM\nTo: {to}\nSubject: question {n}\n\n",
    "-------- Forwarded Message --------\nSubject: \tquestion {n}\n"
    "Date: \tMon, 2 Mar 2026 10:00:00 +0000\nFrom: \tCustomer {n} <customer{n}@example.org>\n"
    "To: \t{to}\n\n",
    "Begin forwarded message:\n\nFrom: Customer {n} <customer{n}@example.org>\n"
    "Subject: question {n}\nDate: 2 March 2026 at 10:00:00 GMT\nTo: {to}\n\n",
]


def inline(sender: str, n: int, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "forward@corp.example", f"Fwd: question {n}"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{DOMAIN}>"
    head = INLINE_FORMS[n % len(INLINE_FORMS)].format(n=n, to=to)
    msg.set_content(f"FYI\n\n{head}Question number {n}.\n")
    return msg.as_bytes()


@dataclass(frozen=True)
class Sent:
    """What the forward mailbox holds: carriers, and which user each original is for."""

    carriers: list[bytes]
    owners: dict[str, int]  # attached originals' Message-IDs -> user number
    inline_subjects: dict[str, int]  # inline originals' subjects -> user number


def forwarded_mail(count: int) -> Sent:
    """``count`` carriers: attached and inline in turn, the last :data:`UNKNOWN` for nobody.

    Every third carrier comes from a shared rule account, not the user: the original's
    recipient then names the owner.
    """
    carriers, owners, subjects = [], {}, {}
    for n in range(count - UNKNOWN):
        user = n % USERS
        sender = user_address(user) if n % 3 else f"rules@{DOMAIN}"
        if n % 2:
            carriers.append(attached(sender, original(n, user_address(user))))
            owners[f"<q{n}.{DOMAIN}@example.org>"] = user
        else:
            carriers.append(inline(sender, n, user_address(user)))
            subjects[f"question {n}"] = user
    for n in range(count - UNKNOWN, count):
        carriers.append(attached("stranger@example.net", original(n, "nobody@example.net")))
    return Sent(carriers, owners, subjects)


def owner_instances(count: int) -> list[ProviderConfiguration]:
    """The users the Deployment knows (as outgoing instances naming address and user)."""
    return [
        ProviderConfiguration(
            name=f"user{n}",
            provider_class="memory",
            direction=Direction.OUTGOING,
            deployment="sim",
            email_address=user_address(n),
            user_ids=(user_id(n),),
        )
        for n in range(count)
    ]


@pytest.fixture
def forward_box(dovecot: Dovecot) -> str:
    """A fresh Dovecot user: the forward mailbox."""
    return dovecot.new_user()


def context_for(
    dovecot: Dovecot, simulator: SimulatorServer, user: str, db: Path, **fields: object
) -> Context:
    cfg = dovecot.provider_config(
        user, "imap", name="fwd", deployment="sim", max_message_count=MESSAGES + 10,
        after_processing="seen",
    ).model_copy(update={"forward_mailbox": True, **fields})  # fmt: skip
    providers = (cfg, *owner_instances(USERS))
    return Context(Configuration(deployments=(simulator.deployment(),), providers=providers),
                   SqliteStore(db))  # fmt: skip


def test_200_forwarded_messages_for_50_users_land_once_each_for_the_right_user(
    dovecot: Dovecot, simulator: SimulatorServer, forward_box: str, tmp_path: Path
) -> None:
    sent = forwarded_mail(MESSAGES)
    dovecot.append_many(forward_box, sent.carriers)
    ctx = context_for(dovecot, simulator, forward_box, tmp_path / "state.db")
    try:
        report = poll_instance(ctx, "fwd")
        again = poll_instance(ctx, "fwd")  # nothing new: nothing delivered twice
    finally:
        ctx.close()
    known = MESSAGES - UNKNOWN
    assert (report.delivered, report.unowned, report.quarantined) == (known, UNKNOWN, UNKNOWN), (
        format_report(report)
    )
    assert (again.listed, again.delivered) == (0, 0)
    rows = [r for r in simulator.emails() if r["directioncode"] == 0]
    assert len(rows) == known  # each original once
    by_id = {r["messageid"]: r for r in rows}
    for message_id, user in sent.owners.items():
        assert by_id[message_id]["ownerid"] == user_id(user)
    by_subject = {r["subject"]: r for r in rows if r["messageid"].startswith("<fwd-")}
    assert len(by_subject) == len(sent.inline_subjects)
    for subject, user in sent.inline_subjects.items():
        assert by_subject[subject]["ownerid"] == user_id(user)
    # delivered carriers were post-processed; the unknown ones wait in quarantine, unread
    seen = [dovecot.flags(forward_box, uid) for uid in dovecot.list_uids(forward_box)]
    assert sum("\\Seen" in flags for flags in seen) == known


class FailsAfterFirstOriginal(DataverseAdapter):
    """The real adapter, except that a batch fails (an outage) once its first item is created."""

    def deliver_many(
        self, items: Sequence[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | Exception]:  # type: ignore[override]
        super().deliver_many(items[:1])
        raise CrmUnavailable("injected: the CRM went away after the first original")


def test_a_crm_failure_between_two_originals_of_one_carrier_loses_and_duplicates_nothing(
    dovecot: Dovecot, simulator: SimulatorServer, forward_box: str, tmp_path: Path
) -> None:
    # Given a carrier holding two originals, and a CRM that fails right after the first
    originals = (original(1, user_address(1)), original(2, user_address(1)))
    dovecot.append_many(forward_box, [attached(user_address(1), *originals)])
    ctx = context_for(dovecot, simulator, forward_box, tmp_path / "state.db")
    ctx._crms["sim"] = FailsAfterFirstOriginal.from_deployment(simulator.deployment())
    try:
        with pytest.raises(CrmUnavailable):
            poll_instance(ctx, "fwd")
        # the carrier is still staged and untouched on the server; the CRM holds the first
        assert [e.state for e in ctx.store.list_entries("fwd", None)] == [LedgerState.STAGED]
        uid = dovecot.list_uids(forward_box)[0]
        assert "\\Seen" not in dovecot.flags(forward_box, uid)
        assert [r["messageid"] for r in simulator.emails()] == [f"<q1.{DOMAIN}@example.org>"]
        # When the CRM is back and the mailbox is polled again
        ctx._crms["sim"].close()
        del ctx._crms["sim"]
        report = poll_instance(ctx, "fwd")
    finally:
        ctx.close()
    # Then the second original is delivered once, the first is not delivered again
    ids = sorted(r["messageid"] for r in simulator.emails())
    assert ids == [f"<q1.{DOMAIN}@example.org>", f"<q2.{DOMAIN}@example.org>"]
    assert (report.delivered, report.duplicates) == (1, 1), format_report(report)
    assert "\\Seen" in dovecot.flags(forward_box, uid)  # post-processed only now
