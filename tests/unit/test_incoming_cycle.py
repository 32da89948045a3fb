"""The incoming cycle's invariants, with the in-memory provider, CRM and state store.

The same behaviour is proven against Dovecot, SQLite/Redis and the Dataverse simulator in
tests/integration and tests/e2e; these tests pin the ordering rules of router.incoming itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from email.message import EmailMessage

import pytest

from router import quarantine
from router.config import Configuration, Deployment, ProviderConfiguration
from router.context import Context
from router.crm.base import DeliveryTarget
from router.crm.memory import MemoryCrm
from router.delivery import DELIVERY_CHUNK
from router.errors import CrmError, CrmRejected, CrmUnavailable, ProviderUnavailable
from router.incoming import STAGE_GROUP, poll_instance
from router.models import Activity, DeliveryResult, Direction, LedgerState, MessageRef
from router.providers import memory as memprov
from router.report import format_report
from router.state.memory import MemoryStore


def make_message(
    n: int,
    *,
    subject: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Sender {n} <sender{n}@example.com>"
    msg["To"] = "sales@example.com"
    msg["Subject"] = subject if subject is not None else f"message {n}"
    msg["Message-ID"] = message_id or f"<m{n}.{uuid.uuid4().hex}@example.com>"
    msg["Date"] = "Sat, 28 Nov 2026 08:00:00 +0000"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(f"body {n}")
    return msg.as_bytes()


def crm_outage(what: str) -> None:
    """A MemoryCrm fault: every delivery meets a 503 (the CRM is down)."""
    if what == "deliver":
        raise CrmUnavailable("503 from the CRM", retry_after=1)


class Rig:
    """One incoming memory instance wired to a MemoryCrm and a MemoryStore."""

    def __init__(self, **overrides: object) -> None:
        self.address = f"box-{uuid.uuid4().hex[:8]}@example.com"
        fields: dict[str, object] = {
            "name": "box",
            "provider_class": "memory",
            "direction": Direction.INCOMING,
            "deployment": "crm",
            "email_address": self.address,
        }
        fields.update(overrides)
        dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
        self.config = Configuration(
            deployments=(dep,), providers=(ProviderConfiguration.model_validate(fields),)
        )
        self.store = MemoryStore()
        self.ctx = Context(self.config, self.store)
        self.crm = MemoryCrm()
        self.ctx._crms["crm"] = self.crm
        self.box = memprov.mailbox(self.address)

    def append(self, count: int, start: int = 1) -> list[int]:
        return [self.box.append(make_message(n)) for n in range(start, start + count)]

    def subjects(self) -> list[str]:
        return [activity.subject for _, activity, _ in self.crm.activities.values()]


def test_poll_delivers_every_message_once_in_order() -> None:
    rig = Rig()
    rig.append(30)
    report = poll_instance(rig.ctx, "box")
    assert report.delivered == 30
    assert rig.subjects() == [f"message {n}" for n in range(1, 31)]


def test_second_poll_delivers_nothing() -> None:
    rig = Rig()
    rig.append(5)
    poll_instance(rig.ctx, "box")
    second = poll_instance(rig.ctx, "box")
    assert (second.listed, second.staged, second.delivered) == (0, 0, 0)
    assert len(rig.crm.activities) == 5


def test_max_message_count_caps_one_cycle_and_the_next_cycle_continues() -> None:
    rig = Rig(max_message_count=4)
    rig.append(10)
    assert poll_instance(rig.ctx, "box").delivered == 4
    assert poll_instance(rig.ctx, "box").delivered == 4
    assert poll_instance(rig.ctx, "box").delivered == 2
    assert rig.subjects() == [f"message {n}" for n in range(1, 11)]


def test_cursor_stops_before_a_message_whose_fetch_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig()
    rig.append(6)
    original = memprov.MemoryIncomingProvider._fetch

    def flaky(self: memprov.MemoryIncomingProvider, ref: memprov.MessageRef) -> bytes:
        if ref.key == "4":
            raise ConnectionResetError("connection dropped mid-fetch")
        return original(self, ref)

    monkeypatch.setattr(memprov.MemoryIncomingProvider, "_fetch", flaky)
    with pytest.raises(ProviderUnavailable):
        poll_instance(rig.ctx, "box")
    assert rig.store.get_cursor("box") == {"last": 3}
    monkeypatch.setattr(memprov.MemoryIncomingProvider, "_fetch", original)
    poll_instance(rig.ctx, "box")
    assert rig.subjects() == [f"message {n}" for n in range(1, 7)]


def test_nothing_is_deleted_on_the_server_before_the_crm_has_it() -> None:
    rig = Rig(after_processing="delete")
    rig.append(3)

    rig.crm.fault = crm_outage
    with pytest.raises(CrmUnavailable):
        poll_instance(rig.ctx, "box")
    assert len(rig.box.messages) == 3
    assert rig.store.count_entries("box") == {LedgerState.STAGED: 3}
    rig.crm.fault = None
    poll_instance(rig.ctx, "box")
    assert len(rig.crm.activities) == 3
    assert rig.box.messages == {}


def test_seen_mode_flags_delivered_messages_on_the_server() -> None:
    rig = Rig(after_processing="seen")
    uids = rig.append(2)
    poll_instance(rig.ctx, "box")
    assert all("\\Seen" in rig.box.flags[uid] for uid in uids)
    assert rig.store.count_entries("box") == {LedgerState.DONE: 2}


def test_a_poll_is_skipped_while_another_worker_holds_the_lease() -> None:
    rig = Rig()
    rig.append(1)
    lease = rig.store.acquire_lease("box", "other-worker", 60)
    assert lease is not None
    report = poll_instance(rig.ctx, "box")
    assert report.skipped == "lease held by other-worker"
    assert rig.crm.activities == {}


def test_unparseable_message_is_quarantined_and_the_mailbox_moves_on() -> None:
    rig = Rig()
    rig.append(1)
    rig.box.append(b"")
    rig.append(1, start=3)
    report = poll_instance(rig.ctx, "box")
    assert (report.delivered, report.quarantined) == (2, 1)
    [item] = quarantine.list_items(rig.ctx, "box")
    assert item.entry.key == "2" and item.entry.reason


def test_oversize_message_is_quarantined_without_being_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig(max_message_size=2048)
    rig.append(1)
    rig.box.append(make_message(2) + b"x" * 4096)
    fetched: list[str] = []
    original = memprov.MemoryIncomingProvider._fetch

    def spy(self: memprov.MemoryIncomingProvider, ref: memprov.MessageRef) -> bytes:
        fetched.append(ref.key)
        return original(self, ref)

    monkeypatch.setattr(memprov.MemoryIncomingProvider, "_fetch", spy)
    report = poll_instance(rig.ctx, "box")
    assert fetched == ["1"]
    assert report.quarantined == 1
    assert "MaxMessageSize" in (rig.store.get_entry("box", "2").reason or "")  # type: ignore[union-attr]


def test_auto_reply_is_not_an_activity_but_is_post_processed() -> None:
    rig = Rig(after_processing="delete")
    rig.box.append(
        make_message(
            1, subject="Out of Office: back Monday", headers={"Auto-Submitted": "auto-replied"}
        )
    )
    rig.append(1, start=2)
    report = poll_instance(rig.ctx, "box")
    assert (report.delivered, report.filtered) == (1, 1)
    assert rig.subjects() == ["message 2"]
    assert rig.box.messages == {}


def test_auto_reply_policy_deliver_makes_it_an_activity() -> None:
    rig = Rig(auto_reply_policy="deliver")
    rig.box.append(make_message(1, headers={"Auto-Submitted": "auto-replied"}))
    assert poll_instance(rig.ctx, "box").delivered == 1


def test_same_message_id_twice_becomes_one_activity() -> None:
    rig = Rig()
    rig.box.append(make_message(1, message_id="<same@example.com>"))
    rig.box.append(make_message(2, message_id="<same@example.com>"))
    report = poll_instance(rig.ctx, "box")
    assert (report.delivered, report.duplicates) == (1, 1)
    assert len(rig.crm.activities) == 1


def test_crm_rejection_quarantines_only_that_message_and_replay_delivers_it_once() -> None:
    rig = Rig()
    rig.append(3)
    original = rig.crm.deliver

    def picky(activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        if activity.subject == "message 2":
            raise CrmRejected("400 bad field")
        return original(activity, target)

    rig.crm.deliver = picky  # type: ignore[method-assign]
    report = poll_instance(rig.ctx, "box")
    assert (report.delivered, report.quarantined) == (2, 1)
    rig.crm.deliver = original  # type: ignore[method-assign]
    replayed = quarantine.replay(rig.ctx, "box", "2")
    assert replayed.delivered == 1
    assert sorted(rig.subjects()) == ["message 1", "message 2", "message 3"]
    assert quarantine.list_items(rig.ctx, "box") == []


def test_poll_records_counters_and_the_report_reads_well() -> None:
    rig = Rig()
    rig.append(2)
    report = poll_instance(rig.ctx, "box")
    stats = rig.store.get_stats("box")
    assert stats.processed == 2 and stats.last_success is not None and stats.last_error is None
    text = format_report(report)
    assert text.startswith("box: listed 2, staged 2, delivered 2")
    assert "  1: delivered" in text


class WorkerKilled(BaseException):
    """Stands for a kill -9: not an Exception, so no per-message isolation can catch it."""


class NonDedupingBatchCrm(MemoryCrm):
    """A CRM whose batch path creates without a duplicate check (the worst case)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.crash_after_batch = False

    def deliver_many(
        self, items: Sequence[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | CrmError]:
        results: list[DeliveryResult | CrmError] = []
        for activity, target in items:
            self.created.append(activity.message_id)
            results.append(DeliveryResult(self.deliver(activity, target).activity_id))
        if self.crash_after_batch:  # the worker dies after the CRM accepted the batch
            raise WorkerKilled("worker killed before the ledger was updated")
        return results


def test_a_delivery_interrupted_after_the_crm_accepted_it_is_retried_with_a_duplicate_check() -> (
    None
):
    rig = Rig()
    crm = NonDedupingBatchCrm()
    rig.ctx._crms["crm"] = crm
    rig.append(3)
    crm.crash_after_batch = True
    with pytest.raises(WorkerKilled):
        poll_instance(rig.ctx, "box")
    assert rig.store.count_entries("box") == {LedgerState.STAGED: 3}
    crm.crash_after_batch = False
    report = poll_instance(rig.ctx, "box")
    assert len(crm.created) == 3, "the retry went through the unchecked batch path again"
    assert report.duplicates == 3
    assert rig.store.count_entries("box") == {LedgerState.DONE: 3}


# -- delivery overlapping the fetch (router.pipeline) ---------------------------------------------
#: The first stage-group boundary with a whole delivery chunk staged: where delivery starts.
OVERLAP_AT = -(-DELIVERY_CHUNK // STAGE_GROUP) * STAGE_GROUP


def _fetch_waiting_at(
    monkeypatch: pytest.MonkeyPatch, uid: int, until: threading.Event, waited: list[bool]
) -> None:
    """Make the memory provider's fetch of ``uid`` wait (up to 5 s) for ``until``."""
    fetch = memprov.MemoryIncomingProvider._fetch

    def waiting_fetch(self: memprov.MemoryIncomingProvider, ref: MessageRef) -> bytes:
        if int(ref.key) == uid:
            waited.append(until.wait(timeout=5))
        return fetch(self, ref)

    monkeypatch.setattr(memprov.MemoryIncomingProvider, "_fetch", waiting_fetch)


def test_the_crm_receives_a_whole_staged_chunk_while_the_next_messages_are_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a backlog larger than a delivery chunk, whose fetch past the chunk waits for the CRM
    total = OVERLAP_AT + STAGE_GROUP
    rig = Rig(max_message_count=total)
    rig.append(total)
    delivering, waited = threading.Event(), list[bool]()
    rig.crm.fault = lambda what: delivering.set() if what == "deliver" else None
    _fetch_waiting_at(monkeypatch, OVERLAP_AT + 1, delivering, waited)
    # When one poll runs
    report = poll_instance(rig.ctx, "box")
    # Then the CRM was delivering before the fetch went on, and everything ended up done once
    assert waited == [True], "delivery did not overlap the fetch"
    assert report.delivered == report.post_processed == total
    assert rig.subjects() == [f"message {n}" for n in range(1, total + 1)]
    assert rig.store.count_entries("box") == {LedgerState.DONE: total}


def test_a_cycle_smaller_than_a_delivery_chunk_delivers_it_whole_after_the_fetch() -> None:
    # Given fewer new messages than a delivery chunk, in several stage groups
    rig = Rig(max_message_count=2 * STAGE_GROUP)
    rig.append(2 * STAGE_GROUP)
    threads: list[str] = []
    rig.crm.fault = lambda what: threads.append(threading.current_thread().name)
    # When one poll runs
    report = poll_instance(rig.ctx, "box")
    # Then they went to the CRM from the cycle's own thread, at the end, in one chunk
    assert report.delivered == 2 * STAGE_GROUP
    assert threads and set(threads) == {threading.current_thread().name}


def test_a_crm_outage_during_the_overlap_keeps_every_fetched_message_staged() -> None:
    # Given a backlog larger than a delivery chunk and a CRM that is down
    total = OVERLAP_AT + STAGE_GROUP
    rig = Rig(max_message_count=total)
    rig.append(total)

    rig.crm.fault = crm_outage
    # When a poll runs, its first chunk's delivery failing while the rest is fetched
    with pytest.raises(CrmUnavailable):
        poll_instance(rig.ctx, "box")
    # Then everything is staged, the cursor is past it, and nothing left the server
    assert rig.store.count_entries("box") == {LedgerState.STAGED: total}
    assert len(rig.box.messages) == total
    # And once the CRM is back the next poll delivers them all, fetching nothing again
    rig.crm.fault = None
    report = poll_instance(rig.ctx, "box")
    assert (report.listed, report.delivered) == (0, total)


def test_a_fetch_failure_waits_for_the_delivery_in_flight_and_starts_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a backlog whose connection drops once a whole delivery chunk is staged
    total = OVERLAP_AT + STAGE_GROUP
    rig = Rig(max_message_count=total)
    rig.append(total)
    fetch = memprov.MemoryIncomingProvider._fetch

    def dropping(self: memprov.MemoryIncomingProvider, ref: MessageRef) -> bytes:
        if int(ref.key) == OVERLAP_AT + 1:
            time.sleep(0.05)  # the chunk's delivery is under way
            raise ProviderUnavailable("connection dropped")
        return fetch(self, ref)

    monkeypatch.setattr(memprov.MemoryIncomingProvider, "_fetch", dropping)
    # When the poll fails
    with pytest.raises(ProviderUnavailable):
        poll_instance(rig.ctx, "box")
    # Then the delivery started on the staged chunk finished before the poll returned
    assert not [t for t in threading.enumerate() if t.name.startswith("deliver-box")]
    assert rig.store.count_entries("box") == {LedgerState.DELIVERED: OVERLAP_AT}
    # And the next poll post-processes those and delivers the rest
    monkeypatch.setattr(memprov.MemoryIncomingProvider, "_fetch", fetch)
    poll_instance(rig.ctx, "box")
    assert rig.store.count_entries("box") == {LedgerState.DONE: total}
    assert len(rig.crm.activities) == total
