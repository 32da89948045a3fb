"""Tracking filters (an owner's incomingemailfilteringmethod) with fakes: the rules, the Dataverse
adapter's batching and caching of CheckIncomingEmail, and the incoming cycle's filtered path."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from typing import Any

import pytest

from router.config import Configuration, Deployment, ProviderConfiguration
from router.context import Context
from router.crm.base import ACCEPTED, DeliveryTarget, Verdict
from router.crm.dataverse_batch import Part, PartResult
from router.crm.dataverse_filters import CHECK_BATCH, TrackingFilters
from router.crm.dataverse_payloads import Shapes, check_incoming_path
from router.crm.memory import MemoryCrm
from router.crm.tracking import Facts, Lookups, answered_ids, decide
from router.incoming import poll_instance
from router.models import Activity, Address, Direction, LedgerState
from router.providers import memory as memprov
from router.report import format_report
from router.state.memory import MemoryStore

SENT = "<sent-by-crm@corp.example>"
LOOKUPS = Lookups(
    sent_by_org=lambda i: i == SENT,
    is_record=lambda a: a == "contact@example.org",
    is_email_enabled=lambda a: a in ("contact@example.org", "colleague@corp.example"),
)


def facts(subject: str = "hello", answers: tuple[str, ...] = (), sender: str = "x@y") -> Facts:
    return Facts(subject, answers, sender)


# -- the rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "case", "wanted", "code"),
    [
        (0, facts(), True, 6),
        (1, facts("Re: order CRM:0001042"), True, 2),
        (1, facts("Re: order", (SENT,)), True, 2),
        (1, facts("Re: order", ("<other@x>",)), False, 1),
        (2, facts(sender="contact@example.org"), True, 5),
        (2, facts(sender="colleague@corp.example"), False, 7),
        (3, facts(sender="colleague@corp.example"), True, 5),
        (3, facts(sender="stranger@example.net"), False, 7),
        (4, facts("Re: CRM:0001042", (SENT,)), False, -1),
    ],
)
def test_each_filtering_method_decides_as_documented(
    method: int, case: Facts, wanted: bool, code: int
) -> None:
    result = decide(method, case, LOOKUPS)
    assert (result.wanted, result.reason_code) == (wanted, code)


def test_answered_ids_put_in_reply_to_first_then_the_newest_reference() -> None:
    assert answered_ids("<b>", ("<a>", "<b>", "<c>")) == ("<b>", "<c>", "<a>")
    assert answered_ids(None, ()) == ()


def test_the_filters_check_carries_the_answered_id_only_when_there_is_one() -> None:
    plain = Activity("<m@x>", "s", "", Address("a@b.example"))
    reply = Activity("<m@x>", "s", "", Address("a@b.example"), in_reply_to=SENT)
    assert "ExtraProperties" not in check_incoming_path(plain, correlate=True)
    path = check_incoming_path(reply, correlate=True)
    assert "ExtraProperties=@p7" in path and "inreplyto" in path
    off = Shapes(check_in_reply_to=False)
    assert "ExtraProperties" not in check_incoming_path(reply, off, correlate=True)
    # the duplicate check before a repeated delivery never sends it
    assert "ExtraProperties" not in check_incoming_path(reply)


# -- the Dataverse adapter's screening (a fake $batch) --------------------------------------------
class FakeBatch:
    """Answers $batch parts: owners' filtering methods, and CheckIncomingEmail verdicts."""

    def __init__(self, methods: dict[str, int]) -> None:
        self.methods, self.requests = methods, []  # type: ignore[var-annotated]

    def __call__(self, parts: list[Part], what: str) -> list[PartResult]:
        self.requests.append([p.path.split("(")[0] for p in parts])
        return [self._answer(p) for p in parts]

    def _answer(self, part: Part) -> PartResult:
        if part.path.startswith("CheckIncomingEmail"):
            wanted = "CRM%3A" in part.path or "CRM:" in part.path
            body: dict[str, Any] = {"ShouldDeliver": wanted, "ReasonCode": 2 if wanted else 1}
            return PartResult(200, {}, body)
        owner = part.path.split("(")[1].split(")")[0]
        if owner not in self.methods:
            return PartResult(404, {}, {"error": {"message": "no such record"}})
        return PartResult(200, {}, {"incomingemailfilteringmethod": self.methods[owner]})


def items(count: int, owner: str, subject: str = "hello") -> list[tuple[Activity, DeliveryTarget]]:
    activity = Activity(f"<{uuid.uuid4().hex}@x>", subject, "", Address("a@b.example"))
    return [(activity, DeliveryTarget("u@corp.example", owner, None))] * count


def filters(batch: FakeBatch, ttl: float = 300.0) -> TrackingFilters:
    return TrackingFilters(batch, lambda part, what: RuntimeError(what), Shapes(), ttl)


def test_owners_who_take_everything_cost_one_read_and_then_no_request_at_all() -> None:
    batch = FakeBatch({"all": 0})
    screen = filters(batch)
    assert screen.screen(items(50, "all")) == [ACCEPTED] * 50
    assert screen.screen(items(50, "all")) == [ACCEPTED] * 50
    assert batch.requests == [["usersettingscollection"]]  # one read, cached for the TTL


def test_messages_of_filtering_owners_are_checked_in_batches_not_one_request_each() -> None:
    batch = FakeBatch({"all": 0, "responses": 1})
    count = CHECK_BATCH + 10
    verdicts = filters(batch).screen(
        items(count, "responses", "Re: CRM:0001001") + items(5, "responses") + items(20, "all")
    )
    assert verdicts[:count] == [Verdict(True, 2, "CorrelationMatch")] * count
    assert verdicts[count : count + 5] == [Verdict(False, 1, "NoCorrelationMatch")] * 5
    assert verdicts[count + 5 :] == [ACCEPTED] * 20
    sizes = [len(r) for r in batch.requests]
    assert sizes == [2, CHECK_BATCH, count + 5 - CHECK_BATCH]  # owners, then two check batches


def test_an_owner_without_settings_takes_everything_and_messages_without_owner_are_not_asked() -> (
    None
):
    batch = FakeBatch({})
    unowned = [(Activity("<a@x>", "s", "", None), DeliveryTarget("box@corp.example"))]
    assert filters(batch).screen(items(3, "ghost") + unowned) == [ACCEPTED] * 4
    assert batch.requests == [["usersettingscollection"]]


def test_the_filtering_method_is_read_again_after_its_ttl() -> None:
    batch = FakeBatch({"u": 0})
    screen = filters(batch, ttl=0.0)
    screen.screen(items(1, "u"))
    screen.screen(items(1, "u"))
    assert len(batch.requests) == 2


# -- the incoming cycle ---------------------------------------------------------------------------
def message(subject: str, in_reply_to: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "customer@example.org"
    msg["To"] = "owner@corp.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content("text")
    return msg.as_bytes()


def rig(method: int) -> tuple[Context, MemoryCrm, memprov.Mailbox]:
    address = f"owner-{uuid.uuid4().hex[:8]}@corp.example"
    cfg = ProviderConfiguration.model_validate(
        {"name": "box", "provider_class": "memory", "direction": Direction.INCOMING,
         "deployment": "crm", "email_address": address, "user_ids": ("owner-1",)}
    )  # fmt: skip
    dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
    ctx = Context(Configuration(deployments=(dep,), providers=(cfg,)), MemoryStore())
    crm = MemoryCrm()
    crm.filtering["owner-1"], crm.sent_message_ids = method, {SENT}
    ctx._crms["crm"] = crm
    return ctx, crm, memprov.mailbox(address)


def test_an_owner_taking_responses_gets_only_replies_to_crm_email() -> None:
    ctx, crm, box = rig(method=1)
    box.append(message("Re: your quote CRM:0001001"))
    box.append(message("Re: your quote", in_reply_to=SENT))
    box.append(message("A new question"))
    box.append(message("Re: something else", in_reply_to="<elsewhere@example.org>"))
    report = poll_instance(ctx, "box")
    subjects = sorted(a.subject for _, a, _ in crm.activities.values())
    assert subjects == ["Re: your quote", "Re: your quote CRM:0001001"]
    assert (report.delivered, report.filtered) == (2, 2)
    assert report.tracking_filtered == {"NoCorrelationMatch": 2}
    assert "declined by the owners' tracking filters: NoCorrelationMatch 2" in format_report(report)
    # filtered messages are post-processed like delivered ones, with the CRM's reason kept
    entries = ctx.store.list_entries("box", None)
    assert {e.state for e in entries} == {LedgerState.DONE}
    reasons = sorted(e.reason or "" for e in entries)
    assert reasons[-2:] == ["tracking filter: ReasonCode 1 (NoCorrelationMatch)"] * 2


def test_an_owner_taking_everything_is_never_asked() -> None:
    ctx, crm, box = rig(method=0)
    for n in range(5):
        box.append(message(f"question {n}"))
    report = poll_instance(ctx, "box")
    assert report.delivered == 5 and "check_incoming" not in crm.calls


def test_an_owner_taking_nothing_gets_nothing() -> None:
    ctx, crm, box = rig(method=4)
    box.append(message("Re: CRM:0001001", in_reply_to=SENT))
    report = poll_instance(ctx, "box")
    assert (report.delivered, report.filtered, len(crm.activities)) == (0, 1, 0)
