"""Forward mailboxes in the incoming cycle (router.forwarding, router.incoming), in memory:
owner matching, one activity per original, the unknown-owner policy, and a CRM failure between
two originals of one carrier."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from router.config import Configuration, Deployment, ProviderConfiguration
from router.context import Context
from router.crm.base import DeliveryTarget, Verdict
from router.crm.memory import MemoryCrm
from router.errors import CrmUnavailable
from router.forwarding import OwnerDirectory, tally
from router.incoming import poll_instance
from router.models import Activity, Address, DeliveryResult, Direction, LedgerState
from router.providers import memory as memprov
from router.report import format_report
from router.state.memory import MemoryStore

USERS = {f"user{i}@corp.example": f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 4)}
QUEUE = ("support@corp.example", "11111111-0000-4000-8000-000000000001")


def original(n: int, to: str, *, cc: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@example.org>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = f"question {n}"
    msg["Message-ID"] = f"<q{n}@example.org>"
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    msg.set_content(f"question {n}")
    return msg.as_bytes()


def carrier(sender: str, *originals: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "forward@corp.example"
    msg["Subject"] = "FW: forwarded"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@corp.example>"
    msg.set_content("forwarded by a rule")
    for raw in originals:
        msg.add_attachment(raw, maintype="message", subtype="rfc822")  # type: ignore[arg-type]
    return msg.as_bytes()


def instance(name: str, **fields: object) -> ProviderConfiguration:
    base: dict[str, object] = {
        "name": name,
        "provider_class": "memory",
        "direction": Direction.INCOMING,
        "deployment": "crm",
    }
    return ProviderConfiguration.model_validate({**base, **fields})


class Rig:
    """A forward mailbox plus one (outgoing) instance per user and one queue instance."""

    def __init__(self, **overrides: object) -> None:
        owners = [
            instance(f"u{i}", email_address=a, user_ids=(uid,), direction=Direction.OUTGOING)
            for i, (a, uid) in enumerate(USERS.items())
        ]
        owners.append(instance("q", email_address=QUEUE[0], queue_ids=(QUEUE[1],)))
        self.address = f"forward-{uuid.uuid4().hex[:8]}@corp.example"
        fwd = instance("fwd", email_address=self.address, forward_mailbox=True, **overrides)
        dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
        self.ctx = Context(
            Configuration(deployments=(dep,), providers=(fwd, *owners)), MemoryStore()
        )
        self.crm = MemoryCrm()
        self.ctx._crms["crm"] = self.crm
        self.box = memprov.mailbox(self.address)

    def owners(self) -> dict[str, DeliveryTarget]:
        """Message-ID -> the owner its activity was delivered for."""
        return {mid: target for mid, (_, _, target) in self.crm.activities.items()}

    def states(self) -> list[LedgerState]:
        return [e.state for e in self.ctx.store.list_entries("fwd", None)]


# -- owner matching -------------------------------------------------------------------------------
def activity(to: tuple[str, ...] = (), cc: tuple[str, ...] = ()) -> Activity:
    return Activity(
        "<a@b>", "s", "", Address("x@example.org"), tuple(map(Address, to)), tuple(map(Address, cc))
    )


def test_the_directory_holds_every_instance_of_the_deployment_naming_an_owner() -> None:
    rig = Rig()
    directory = OwnerDirectory.of(rig.ctx.config, "crm")
    assert len(directory) == 4  # three users and the queue; the forward mailbox names no owner
    assert directory.find("USER1@corp.example") == DeliveryTarget(
        "user1@corp.example", USERS["user1@corp.example"], None
    )
    assert directory.find(QUEUE[0]) == DeliveryTarget(QUEUE[0], None, QUEUE[1])
    assert OwnerDirectory.of(rig.ctx.config, "other").find("user1@corp.example") is None


def test_the_carriers_sender_wins_over_the_originals_recipients() -> None:
    directory = OwnerDirectory.of(Rig().ctx.config, "crm")
    found = directory.owner_for("user2@corp.example", activity(to=("user1@corp.example",)))
    assert found is not None and found.user_id == USERS["user2@corp.example"]


def test_without_a_known_sender_the_first_known_recipient_is_the_owner() -> None:
    directory = OwnerDirectory.of(Rig().ctx.config, "crm")
    mail = activity(to=("stranger@example.org",), cc=(QUEUE[0], "user1@corp.example"))
    found = directory.owner_for("someone@example.org", mail)
    assert found is not None and found.queue_id == QUEUE[1]
    assert directory.owner_for("", activity(to=("stranger@example.org",))) is None


# -- the cycle ------------------------------------------------------------------------------------
def test_each_original_is_delivered_once_for_the_user_whose_rule_forwarded_it() -> None:
    rig = Rig()
    rig.box.append(carrier("user1@corp.example", original(1, "user1@corp.example")))
    rig.box.append(carrier("user2@corp.example", original(2, "team@corp.example")))
    rig.box.append(carrier("robot@example.net", original(3, "x@y.example", cc=QUEUE[0])))
    report = poll_instance(rig.ctx, "fwd")
    assert (report.delivered, report.quarantined, report.unowned) == (3, 0, 0), format_report(
        report
    )
    owners = rig.owners()
    assert owners["<q1@example.org>"].user_id == USERS["user1@corp.example"]
    assert owners["<q2@example.org>"].user_id == USERS["user2@corp.example"]
    assert owners["<q3@example.org>"].queue_id == QUEUE[1]
    assert rig.states() == [LedgerState.DONE] * 3  # post-processed after delivery


def test_a_carrier_with_two_originals_delivers_both_and_is_then_done() -> None:
    rig = Rig()
    rig.box.append(
        carrier("user3@corp.example", original(1, "a@x.example"), original(2, "b@x.example"))
    )
    report = poll_instance(rig.ctx, "fwd")
    assert report.delivered == 2 and rig.states() == [LedgerState.DONE]
    assert {t.user_id for t in rig.owners().values()} == {USERS["user3@corp.example"]}


def test_one_original_forwarded_twice_is_one_activity() -> None:
    rig = Rig()
    rig.box.append(carrier("user1@corp.example", original(7, "user1@corp.example")))
    rig.box.append(carrier("user2@corp.example", original(7, "user1@corp.example")))
    first = poll_instance(rig.ctx, "fwd")
    rig.box.append(carrier("user1@corp.example", original(7, "user1@corp.example")))
    second = poll_instance(rig.ctx, "fwd")
    assert len(rig.crm.activities) == 1
    assert (first.delivered, first.duplicates, second.delivered) == (1, 1, 0)
    assert rig.states() == [LedgerState.DONE] * 3


def test_an_original_for_no_known_owner_quarantines_its_carrier_by_default() -> None:
    rig = Rig()
    rig.box.append(carrier("stranger@example.org", original(1, "nobody@example.org")))
    rig.box.append(carrier("user1@corp.example", original(2, "user1@corp.example")))
    report = poll_instance(rig.ctx, "fwd")
    assert (report.delivered, report.quarantined, report.unowned) == (1, 1, 1)
    quarantined = rig.ctx.store.list_entries("fwd", (LedgerState.QUARANTINED,))
    assert [e.reason for e in quarantined] == [
        "1 forwarded message(s) for no known CRM user or queue"
    ]
    assert "for no known user or queue: 1" in format_report(report)


def test_the_skip_policy_counts_an_unknown_owners_original_and_moves_on() -> None:
    rig = Rig(forward_unknown_policy="skip")
    rig.box.append(carrier("stranger@example.org", original(1, "nobody@example.org")))
    report = poll_instance(rig.ctx, "fwd")
    assert (report.delivered, report.quarantined, report.unowned) == (0, 0, 1)
    assert rig.states() == [LedgerState.DONE] and not rig.crm.activities


def test_mail_sent_straight_to_the_forward_mailbox_is_its_own_original() -> None:
    rig = Rig()
    rig.box.append(original(5, QUEUE[0]))
    report = poll_instance(rig.ctx, "fwd")
    assert report.delivered == 1 and rig.owners()["<q5@example.org>"].queue_id == QUEUE[1]


def test_a_crm_failure_between_two_originals_loses_and_duplicates_nothing() -> None:
    # Given a carrier with two originals and a CRM that fails after creating the first
    rig = Rig()
    rig.box.append(
        carrier("user1@corp.example", original(1, "a@x.example"), original(2, "b@x.example"))
    )
    rig.crm.deliver_many = _fails_after_first(rig.crm)  # type: ignore[method-assign]
    # When the cycle runs, the carrier stays staged and is not post-processed
    with pytest.raises(CrmUnavailable):
        poll_instance(rig.ctx, "fwd")
    assert list(rig.crm.activities) == ["<q1@example.org>"]
    assert rig.states() == [LedgerState.STAGED] and not any(rig.box.flags.values())
    # Then a re-poll with the CRM back delivers the second original only, then settles
    del rig.crm.deliver_many
    again = poll_instance(rig.ctx, "fwd")
    assert sorted(rig.crm.activities) == ["<q1@example.org>", "<q2@example.org>"]
    assert (again.delivered, again.duplicates) == (1, 1)
    assert rig.states() == [LedgerState.DONE]


def _fails_after_first(crm: MemoryCrm) -> Callable[..., object]:
    def deliver_many(items: list[tuple[Activity, DeliveryTarget]]) -> object:
        crm.deliver(*items[0])
        raise CrmUnavailable("the CRM went away after the first original")

    return deliver_many


def test_the_owners_tracking_filter_applies_to_each_forwarded_original() -> None:
    # user1 takes only responses to CRM email: of two originals, the reply with a token lands
    rig = Rig()
    rig.crm.filtering[USERS["user1@corp.example"]] = 1
    reply = original(1, "user1@corp.example").replace(b"question 1", b"Re: quote CRM:0001001")
    rig.box.append(carrier("user1@corp.example", reply, original(2, "user1@corp.example")))
    rig.box.append(carrier("user1@corp.example", original(3, "user1@corp.example")))
    report = poll_instance(rig.ctx, "fwd")
    assert list(rig.crm.activities) == ["<q1@example.org>"]
    assert (report.delivered, report.filtered) == (1, 2)
    assert report.tracking_filtered == {"NoCorrelationMatch": 2}
    # both carriers are settled and post-processed; the one wholly declined keeps the reason
    entries = rig.ctx.store.list_entries("fwd", None)
    assert [e.state for e in entries] == [LedgerState.DONE] * 2
    assert entries[1].reason == "tracking filter: ReasonCode 1 (NoCorrelationMatch)"


def test_a_carrier_is_forwarded_filtered_or_skipped_by_what_its_originals_became() -> None:
    items = [(activity(), DeliveryTarget("u@corp.example", "u1")) for _ in range(2)]
    declined = Verdict(False, 1, "NoCorrelationMatch")
    assert tally(items, [DeliveryResult("a1"), declined]).settlement == "forwarded"
    assert tally(items, [declined, declined]).settlement == "filtered"
    assert tally([], [], earlier=1).settlement == "forwarded"  # delivered by an earlier run
    assert tally([], []).settlement == "skipped"
    failed = tally(items, [DeliveryResult("a1"), CrmUnavailable("down")])
    assert failed.delivered == ["<a@b>"] and isinstance(failed.failure, CrmUnavailable)
