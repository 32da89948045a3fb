"""One bad message never blocks a mailbox: fetch, parse and CRM failures are counted per message.

The memory provider, CRM and store run the real incoming cycle; tests/integration and tests/e2e
prove the same through `email-router run` and a Celery worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import pytest

from router import delivery, quarantine
from router.config import ProviderConfiguration
from router.crm.base import DeliveryTarget
from router.crm.memory import MemoryCrm
from router.errors import CrmError, MessageUnusable, ProviderUnavailable
from router.incoming import poll_instance
from router.models import Activity, DeliveryResult, InboundMessage, LedgerState, MessageRef
from router.providers import memory as memprov
from tests.unit.test_incoming_cycle import Rig, make_message

POISON = 17


class PoisonedProvider(memprov.MemoryIncomingProvider):
    """A memory mailbox whose ``_fetch`` raises ValueError for the UIDs in ``poisoned``."""

    poisoned: set[int] = set()
    failure: type[Exception] = ValueError

    def _fetch(self, ref: MessageRef) -> bytes:
        if int(ref.key) in self.poisoned:
            raise self.failure(f"cannot read item {ref.key}")
        return super()._fetch(ref)


@pytest.fixture
def poisoned_rig(monkeypatch: pytest.MonkeyPatch) -> Rig:
    rig = Rig()
    monkeypatch.setattr(PoisonedProvider, "poisoned", {POISON})
    monkeypatch.setattr(rig.ctx, "provider", lambda cfg: PoisonedProvider(cfg))
    rig.append(50)
    return rig


def quarantined(rig: Rig) -> dict[str, str]:
    return {i.entry.key: i.entry.reason or "" for i in quarantine.list_items(rig.ctx, "box")}


def test_a_message_whose_fetch_raises_is_quarantined_after_three_cycles_and_49_are_delivered(
    poisoned_rig: Rig,
) -> None:
    # Given 50 messages, the 17th of which the provider cannot fetch (ValueError)
    rig = poisoned_rig
    # When three poll cycles run
    first = poll_instance(rig.ctx, "box")
    # Then the first already delivers the 49 others, and the bad one is only counted
    assert first.delivered == 49 and quarantined(rig) == {}
    assert rig.store.get_cursor("box") == {"last": POISON - 1}, "cursor passed an unstaged message"
    poll_instance(rig.ctx, "box")
    assert quarantined(rig) == {}
    third = poll_instance(rig.ctx, "box")
    assert third.quarantined == 1
    assert quarantined(rig) == {
        str(POISON): f"fetch failed 3 times: ValueError: cannot read item {POISON}"
    }
    assert len(rig.crm.activities) == 49
    # And once quarantined, the cursor moves past it: the mailbox is not blocked
    poll_instance(rig.ctx, "box")
    assert rig.store.get_cursor("box") == {"last": 50}
    assert rig.store.count_entries("box") == {LedgerState.DONE: 49, LedgerState.QUARANTINED: 1}


def test_a_fetch_crash_is_logged_with_its_traceback_once_not_every_cycle(
    poisoned_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="router.failures")
    for _ in range(3):
        poll_instance(poisoned_rig.ctx, "box")
    failures = [r for r in caplog.records if f"message {POISON} failed" in r.getMessage()]
    assert len(failures) == 3
    assert [r.exc_info is not None for r in failures] == [True, False, False]


def test_a_message_whose_fetch_fails_once_is_delivered_on_the_next_cycle(
    poisoned_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = poisoned_rig
    poll_instance(rig.ctx, "box")
    monkeypatch.setattr(PoisonedProvider, "poisoned", set())
    report = poll_instance(rig.ctx, "box")
    assert report.delivered == 1 and quarantined(rig) == {}
    assert rig.store.count_entries("box") == {LedgerState.DONE: 50}
    assert rig.store.get_cursor("box") == {"last": 50}


def test_max_message_attempts_one_quarantines_on_the_first_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig(max_message_attempts=1)
    monkeypatch.setattr(PoisonedProvider, "poisoned", {2})
    monkeypatch.setattr(rig.ctx, "provider", lambda cfg: PoisonedProvider(cfg))
    rig.append(3)
    report = poll_instance(rig.ctx, "box")
    assert (report.delivered, report.quarantined) == (2, 1)
    assert quarantined(rig) == {"2": "fetch failed 1 times: ValueError: cannot read item 2"}


def test_a_connection_failure_while_fetching_is_not_counted_against_the_message(
    poisoned_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PoisonedProvider, "failure", ConnectionResetError)
    with pytest.raises(ProviderUnavailable):
        poll_instance(poisoned_rig.ctx, "box")
    assert poisoned_rig.store.get_entry("box", str(POISON)) is None
    assert poisoned_rig.store.get_cursor("box") == {"last": POISON - 1}


def test_a_quarantined_fetch_failure_is_replayed_by_fetching_it_again(
    poisoned_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = poisoned_rig
    for _ in range(3):
        poll_instance(rig.ctx, "box")
    monkeypatch.setattr(PoisonedProvider, "poisoned", set())
    assert quarantine.replay(rig.ctx, "box", str(POISON)).delivered == 1
    assert len(rig.crm.activities) == 50


def test_a_message_the_parser_crashes_on_is_quarantined_after_three_cycles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 50 messages, one of which makes the parser raise (a bug, not MessageUnusable)
    rig = Rig()
    rig.append(POISON - 1)
    rig.box.append(make_message(POISON, subject="poison"))
    rig.append(50 - POISON, start=POISON + 1)
    real = delivery.parse

    def crashing(raw: bytes, cfg: ProviderConfiguration, **kw: object) -> Activity:
        if b"Subject: poison" in raw:
            raise ValueError("parser bug")
        return real(raw, cfg, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery, "parse", crashing)
    # When three cycles run, Then the 49 others are delivered and the bad one quarantined
    reports = [poll_instance(rig.ctx, "box") for _ in range(3)]
    assert [r.delivered for r in reports] == [49, 0, 0]
    assert [r.quarantined for r in reports] == [0, 0, 1]
    assert quarantined(rig) == {str(POISON): "parse failed 3 times: ValueError: parser bug"}


class OneRecordFails(MemoryCrm):
    """A CRM that raises a plain CrmError (not CrmUnavailable) for the "poison" activity."""

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        if activity.subject == "poison":
            raise CrmError("the CRM answered 400 for this record")
        return super().deliver(activity, target)

    def deliver_many(
        self, items: Sequence[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | CrmError]:
        return [self.deliver(a, t) for a, t in items]  # raises for the whole batch


def test_a_message_the_crm_keeps_failing_on_is_quarantined_and_the_others_are_delivered() -> None:
    rig = Rig()
    rig.crm = OneRecordFails()
    rig.ctx._crms["crm"] = rig.crm
    rig.append(POISON - 1)
    rig.box.append(make_message(POISON, subject="poison"))
    rig.append(50 - POISON, start=POISON + 1)
    reports = [poll_instance(rig.ctx, "box") for _ in range(3)]
    # the batch had created the first 16 before it raised: asked again, the CRM has them
    assert [r.delivered + r.duplicates for r in reports] == [49, 0, 0]
    assert [r.quarantined for r in reports] == [0, 0, 1]
    assert quarantined(rig) == {
        str(POISON): "deliver failed 3 times: CrmError: the CRM answered 400 for this record"
    }
    assert len(rig.crm.activities) == 49


class BatchedPoisonedProvider(PoisonedProvider):
    """Fetches in batches of 5, as IMAP pipelines FETCH: one bad message fails its batch."""

    def fetch_many(self, refs: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        for start in range(0, len(refs), 5):
            batch = refs[start : start + 5]
            fetched = [self.fetch(ref) for ref in batch]  # raises for the whole batch
            yield from fetched


def test_a_batch_failing_as_a_whole_is_blamed_on_the_bad_message_not_its_neighbours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig()
    monkeypatch.setattr(PoisonedProvider, "poisoned", {POISON})
    monkeypatch.setattr(rig.ctx, "provider", lambda cfg: BatchedPoisonedProvider(cfg))
    rig.append(50)
    reports = [poll_instance(rig.ctx, "box") for _ in range(3)]
    assert [r.delivered for r in reports] == [49, 0, 0]
    assert list(quarantined(rig)) == [str(POISON)]
    assert rig.store.count_entries("box") == {LedgerState.DONE: 49, LedgerState.QUARANTINED: 1}


def test_replaying_a_message_whose_fetch_still_fails_keeps_it_quarantined_and_says_why(
    poisoned_rig: Rig,
) -> None:
    rig = poisoned_rig
    for _ in range(3):
        poll_instance(rig.ctx, "box")
    with pytest.raises(MessageUnusable, match=r"fetching it failed again \(ValueError"):
        quarantine.replay(rig.ctx, "box", str(POISON))
    assert list(quarantined(rig)) == [str(POISON)]
