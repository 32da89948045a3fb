"""One CRM contract, run against the in-process MemoryCrm and the Dataverse adapter over HTTPS.

:class:`CrmContract` holds the tests; each subclass provides the ``crm`` fixture and a few
probes that look at the CRM's side without going through the adapter under test (the memory
fake's dictionaries; the simulator's admin API).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from router.crm.base import CrmAdapter, DeliveryTarget, Owners
from router.crm.dataverse import DataverseAdapter
from router.crm.memory import MemoryCrm
from router.errors import CrmRejected
from router.models import Activity, Address, Attachment, DeliveryResult, OutboundEmail
from tests.servers.simulator import SimulatorServer

TARGET = DeliveryTarget(mailbox="sales@example.com")


def activity(n: int | str, **changes: object) -> Activity:
    fields: dict[str, object] = {
        "message_id": f"<contract-{n}-{uuid.uuid4().hex[:8]}@example.net>",
        "subject": f"Question {n}",
        "body_html": "<p>Hello</p>",
        "sender": Address("customer@example.net", "Customer"),
        "to": (Address("sales@example.com"),),
        "received_on": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    }
    fields.update(changes)
    return Activity(**fields)  # type: ignore[arg-type]


class CrmContract:
    """What every CRM adapter does; subclasses wire a backend and its probes."""

    user = "5f0c7a0e-1111-4c1e-9a54-000000000001"
    other_user = "5f0c7a0e-2222-4c1e-9a54-000000000002"

    # -- probes (subclasses) ----------------------------------------------------------------

    def count_with_message_id(self, crm: CrmAdapter, message_id: str) -> int:
        raise NotImplementedError

    def add_pending(self, crm: CrmAdapter, owner: str, count: int = 1) -> list[str]:
        raise NotImplementedError

    def status_of(self, crm: CrmAdapter, email_id: str) -> str:
        """``pending``, ``sent`` or ``failed``."""
        raise NotImplementedError

    # -- incoming ---------------------------------------------------------------------------

    def test_delivered_activity_gets_an_id(self, crm: CrmAdapter) -> None:
        act = activity(1)
        result = crm.deliver(act, TARGET)
        assert result.activity_id and not result.duplicate
        assert self.count_with_message_id(crm, act.message_id) == 1

    def test_second_delivery_is_a_duplicate_with_the_same_id(self, crm: CrmAdapter) -> None:
        act = activity(2)
        first = crm.deliver(act, TARGET)
        second = crm.deliver(act, TARGET)
        assert second == DeliveryResult(first.activity_id, duplicate=True)
        assert self.count_with_message_id(crm, act.message_id) == 1

    def test_check_incoming_says_no_once_delivered(self, crm: CrmAdapter) -> None:
        act = activity(3)
        assert crm.check_incoming(act, TARGET) is True
        crm.deliver(act, TARGET)
        assert crm.check_incoming(act, TARGET) is False

    def test_activity_without_message_id_is_rejected(self, crm: CrmAdapter) -> None:
        with pytest.raises(CrmRejected):
            crm.deliver(activity(4, message_id=""), TARGET)

    def test_attachments_and_odd_characters_are_delivered(self, crm: CrmAdapter) -> None:
        act = activity(
            5,
            subject="Re: it's 50% & <more>; ok?",
            attachments=(Attachment("report.pdf", "application/pdf", b"%PDF-1.4 \x00\xff"),),
        )
        assert crm.deliver(act, TARGET).activity_id
        assert self.count_with_message_id(crm, act.message_id) == 1

    def test_deliver_many_answers_each_item_in_order(self, crm: CrmAdapter) -> None:
        acts = [activity(f"m{i}") for i in range(7)]
        results = crm.deliver_many([(a, TARGET) for a in acts])
        assert len(results) == 7
        assert all(isinstance(r, DeliveryResult) and r.activity_id for r in results)
        assert len({r.activity_id for r in results if isinstance(r, DeliveryResult)}) == 7

    def test_deliver_many_fails_only_the_bad_item(self, crm: CrmAdapter) -> None:
        acts = [activity("ok1"), activity("bad", message_id=""), activity("ok2")]
        results = crm.deliver_many([(a, TARGET) for a in acts])
        assert isinstance(results[1], CrmRejected)
        assert isinstance(results[0], DeliveryResult) and isinstance(results[2], DeliveryResult)

    def test_deliver_many_twice_creates_nothing_new(self, crm: CrmAdapter) -> None:
        acts = [activity(f"d{i}") for i in range(3)]
        first = crm.deliver_many([(a, TARGET) for a in acts])
        again = crm.deliver_many([(a, TARGET) for a in acts])
        ids = [r.activity_id for r in first if isinstance(r, DeliveryResult)]
        assert [r.activity_id for r in again if isinstance(r, DeliveryResult)] == ids
        assert all(self.count_with_message_id(crm, a.message_id) == 1 for a in acts)

    # -- outgoing ---------------------------------------------------------------------------

    def test_list_pending_returns_only_the_owners_emails(self, crm: CrmAdapter) -> None:
        mine = self.add_pending(crm, self.user, 2)
        self.add_pending(crm, self.other_user, 1)
        pending = crm.list_pending(Owners(user_ids=(self.user,)), limit=10)
        assert sorted(e.email_id for e in pending) == sorted(mine)
        assert all(isinstance(e, OutboundEmail) and e.to for e in pending)

    def test_list_pending_respects_the_limit(self, crm: CrmAdapter) -> None:
        self.add_pending(crm, self.user, 3)
        assert len(crm.list_pending(Owners(user_ids=(self.user,)), limit=2)) == 2

    def test_marked_sent_email_is_no_longer_pending(self, crm: CrmAdapter) -> None:
        (email_id,) = self.add_pending(crm, self.user)
        crm.mark_sent(email_id, "<sent-1@example.com>", None)
        crm.mark_sent(email_id, "<sent-1@example.com>", None)  # idempotent
        assert self.status_of(crm, email_id) == "sent"
        assert crm.list_pending(Owners(user_ids=(self.user,)), limit=10) == []

    def test_marked_failed_email_is_no_longer_pending(self, crm: CrmAdapter) -> None:
        (email_id,) = self.add_pending(crm, self.user)
        crm.mark_failed(email_id, "550 5.1.1 user unknown")
        crm.mark_failed(email_id, "550 5.1.1 user unknown")  # idempotent
        assert self.status_of(crm, email_id) == "failed"
        assert crm.list_pending(Owners(user_ids=(self.user,)), limit=10) == []

    def test_a_sent_email_that_bounces_can_be_marked_failed(self, crm: CrmAdapter) -> None:
        (email_id,) = self.add_pending(crm, self.user)
        crm.mark_sent(email_id, "<sent-2@example.com>", None)
        crm.mark_failed(email_id, "bounced: 550 5.1.1 user unknown")
        assert self.status_of(crm, email_id) == "failed"

    def test_recorded_attempts_come_back_with_the_email(self, crm: CrmAdapter) -> None:
        (email_id,) = self.add_pending(crm, self.user)
        crm.record_attempt(email_id, 3)
        (email,) = crm.list_pending(Owners(user_ids=(self.user,)), limit=10)
        assert email.delivery_attempts == 3

    def test_marking_an_unknown_email_is_rejected(self, crm: CrmAdapter) -> None:
        with pytest.raises(CrmRejected):
            crm.mark_sent(str(uuid.uuid4()), "<x@example.com>", None)

    def test_who_am_i_names_the_caller(self, crm: CrmAdapter) -> None:
        assert crm.who_am_i()


class TestMemoryCrm(CrmContract):
    """The contract against the in-process fake."""

    @pytest.fixture
    def crm(self) -> MemoryCrm:
        return MemoryCrm()

    def count_with_message_id(self, crm: CrmAdapter, message_id: str) -> int:
        assert isinstance(crm, MemoryCrm)
        return sum(1 for key in crm.activities if key == message_id)

    def add_pending(self, crm: CrmAdapter, owner: str, count: int = 1) -> list[str]:
        assert isinstance(crm, MemoryCrm)
        ids = [str(uuid.uuid4()) for _ in range(count)]
        for email_id in ids:
            email = OutboundEmail(
                email_id,
                "Offer",
                "<p>Hi</p>",
                Address("sales@example.com"),
                to=(Address("customer@example.net"),),
            )
            crm.add_outbound(email, owner)
        return ids

    def status_of(self, crm: CrmAdapter, email_id: str) -> str:
        assert isinstance(crm, MemoryCrm)
        return crm.outbound[email_id].status


class TestDataverseAgainstSimulator(CrmContract):
    """The contract against the Dataverse adapter talking HTTPS to ``email-router crm-sim``."""

    STATUS = {6: "pending", 3: "sent", 8: "failed"}

    @pytest.fixture
    def crm(self, simulator: SimulatorServer) -> Iterator[DataverseAdapter]:
        self.sim = simulator
        adapter = DataverseAdapter.from_deployment(simulator.deployment())
        yield adapter
        adapter.close()

    def count_with_message_id(self, crm: CrmAdapter, message_id: str) -> int:
        return sum(1 for e in self.sim.emails() if e["messageid"] == message_id)

    def add_pending(self, crm: CrmAdapter, owner: str, count: int = 1) -> list[str]:
        return self.sim.seed_pending(count, owner_id=owner)

    def status_of(self, crm: CrmAdapter, email_id: str) -> str:
        (row,) = [e for e in self.sim.emails() if e["activityid"] == email_id]
        return self.STATUS.get(row["statuscode"], str(row["statuscode"]))
