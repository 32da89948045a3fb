"""router.runtime.summary: one reading of a cycle's report for Celery task results and log lines.

The Celery poll task returns :func:`summary` of the report the use-case returned, and the
standalone runtime logs :func:`progress_line` of it: both go through the same function, so a
counter a report gains shows up in both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from router import service
from router.context import Context
from router.outgoing import SendReport
from router.report import CycleOutcome, CycleReport, Outcome, Tally
from router.runtime.cycle import execute
from router.runtime.summary import done, progress_line, summary
from tests.unit.test_tasks import World, message
from workers import tasks

REPORT = CycleReport(
    "box",
    listed=3,
    staged=2,
    known=1,
    delivered=2,
    duration=0.2,
    outcomes=[Outcome("k1", "delivered", "subject of a message")],
)


def test_a_summary_holds_the_counts_and_the_per_kind_counts_never_the_outcomes() -> None:
    result = summary(REPORT)
    assert result["instance"] == "box" and result["staged"] == 2 and result["skipped"] is None
    assert result["classified"] == {} and result["tracking_filtered"] == {}
    assert "outcomes" not in result
    assert "subject of a message" not in repr(result)


def test_the_per_class_counts_reach_the_summary_as_a_copy() -> None:
    # Given a report whose policies kept two auto-replies and a bounce out of the CRM
    report = CycleReport("box", classified={"auto_reply": 2, "bounce": 1})
    # When it is summarised and the report counts on afterwards
    result = summary(report)
    report.classified["auto_reply"] += 1
    # Then the summary holds the counts as they were, and only the done counters in done()
    assert result["classified"] == {"auto_reply": 2, "bounce": 1}
    assert done(report) == {}


def test_what_a_cycle_did_leaves_out_what_it_only_looked_at() -> None:
    assert done(REPORT) == {"staged": 2, "delivered": 2}
    assert done(SendReport("relay", pending=4, sent=3, error="x")) == {"sent": 3}
    assert done(CycleReport("box", listed=5, known=5)) == {}


def test_the_progress_line_names_the_instance_and_what_it_did() -> None:
    assert progress_line(REPORT, 0.25) == "box: staged 2, delivered 2 (0.25s)"
    assert progress_line(CycleReport("box", listed=5, known=5), 0.1) is None


def test_the_celery_task_and_the_standalone_runtime_report_the_same_cycle_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a use-case whose cycle ends with REPORT
    world = World(tmp_path, monkeypatch)

    def poll_instance(_ctx: Context, _name: str, **_kwargs: object) -> CycleReport:
        return REPORT

    monkeypatch.setattr(service, "poll_instance", poll_instance)
    # When the Celery task and the standalone runtime each run one cycle
    result = tasks.poll("box")
    with world.holder.use() as ctx, caplog.at_level(logging.INFO):
        execute(ctx, ctx.instance("box"))
    # Then the task's result is the summary, and the log line lists its counters
    assert result == summary(REPORT)
    assert "box: staged 2, delivered 2 (" in caplog.text


def test_the_celery_deliver_task_returns_the_per_class_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a staged auto-reply and an ordinary message (AutoReplyPolicy skips auto-replies)
    world = World(tmp_path, monkeypatch)
    world.box.append(_auto_reply())
    world.box.append(message(1))
    tasks.poll("box")
    # When the CRM task delivers them
    result = tasks.deliver("box")
    # Then its result counts the auto-reply by class, next to the delivered message
    assert result["delivered"] == 1 and result["filtered"] == 1
    assert result["classified"] == {"auto_reply": 1}


def _auto_reply() -> bytes:
    raw = message(0)
    return b"Auto-Submitted: auto-replied\r\n" + raw


@dataclass
class PurgeReport(CycleOutcome):
    """A report type the runtimes have never seen: it declares only what CycleOutcome asks."""

    EXAMINED: ClassVar[frozenset[str]] = frozenset({"looked_at"})

    instance: str
    looked_at: int = 0
    purged: int = 0
    busy: str | None = None
    error: str | None = None
    duration: float = 0.0

    def not_run(self) -> str | None:
        return self.busy

    def tally(self) -> Tally:
        return Tally(quarantined=self.purged)


def test_any_cycle_outcome_is_summarised_from_what_its_class_declares() -> None:
    report = PurgeReport("box", looked_at=9, purged=2)
    assert summary(report) == {
        "instance": "box",
        "looked_at": 9,
        "purged": 2,
        "busy": None,
        "error": None,
        "duration": 0.0,
    }
    assert progress_line(report, 0.5) == "box: purged 2 (0.50s)"
    assert PurgeReport("box", looked_at=3).done() == {}


def test_the_base_report_declares_a_cycle_that_ran_and_counted_nothing() -> None:
    @dataclass
    class Bare(CycleOutcome):
        instance: str
        error: str | None = None
        duration: float = 0.0

    assert Bare("box").not_run() is None
    assert Bare("box").tally() == Tally()
    assert Bare("box").done() == {}


def test_a_poll_report_adds_what_its_delivery_run_did() -> None:
    # Given a poll that staged two messages, and a delivery run that settled them
    poll = CycleReport("box", listed=2, staged=2)
    delivery = CycleReport("box", delivered=1, filtered=1, classified={"auto_reply": 1})
    delivery.note("k1", "delivered")
    # When the delivery's report is merged into the poll's
    poll.merge(delivery)
    poll.merge(CycleReport("box", classified={"auto_reply": 2, "bounce": 1}))
    # Then the poll reports both, counts and per-class counts added up
    assert done(poll) == {"staged": 2, "delivered": 1, "filtered": 1}
    assert poll.classified == {"auto_reply": 3, "bounce": 1}
    assert [o.key for o in poll.outcomes] == ["k1"]
