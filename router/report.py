"""What a cycle reports: the base every cycle's report shares, and the incoming one.

Use :class:`CycleOutcome` to read a report you did not build: the runtimes' summaries
(:mod:`router.runtime.summary`: a Celery task's result, ``email-router run``'s progress line) and
the metrics (:mod:`router.metrics`) call only what it declares - :meth:`~CycleOutcome.fields`,
:meth:`~CycleOutcome.done`, :meth:`~CycleOutcome.not_run`, :meth:`~CycleOutcome.tally` - so an
incoming :class:`CycleReport` and an outgoing :class:`router.outgoing.SendReport` are read alike.

:class:`CycleReport` is what one poll or delivery run of an incoming instance did (the poll cycle
of :mod:`router.incoming`, the delivery of :mod:`router.delivery`); :func:`format_report` prints
it for ``email-router poll``, the quarantine commands and the console. Nothing here holds message
content: keys, counts and reasons only, safe to print and log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from router.crm.base import Verdict
from router.models import Classification
from router.state.base import InstancePeek

Scalar = int | float | str | bool | None
#: A report's fields as the runtimes show them: its scalar fields (counts, names, errors) and its
#: per-kind counts (``classified``, ...). No message content, safe to show.
Summary = dict[str, Scalar | dict[str, int]]


@dataclass(frozen=True, slots=True)
class Tally:
    """What every cycle counts alike, whatever its direction: the metrics' counters."""

    #: messages that reached their destination: CRM activities created, or emails sent
    delivered: int = 0
    #: outbound emails marked Failed
    failed: int = 0
    #: messages put aside with a reason
    quarantined: int = 0
    #: messages a classification policy kept out of the CRM, per class value
    classified: Mapping[str, int] = field(default_factory=dict)


class CycleOutcome:
    """Base of every cycle's report: what the runtimes' summaries and metrics read of it.

    Subclass it with a (non-slotted) dataclass whose fields are the report's ``instance``, its
    counters, names and per-kind count dicts; list in :attr:`EXAMINED` the counters that count
    what the cycle only looked at, and override :meth:`not_run` and :meth:`tally`.
    """

    instance: str
    #: Seconds the cycle took, and the error that ended it (a report may leave them out).
    duration: float = 0.0
    error: str | None = None
    #: Counters of what the cycle only looked at (listed, known, pending), not what it did.
    EXAMINED: ClassVar[frozenset[str]] = frozenset()

    def not_run(self) -> str | None:
        """Why the cycle did not run (another worker held the lease), else None."""
        return None

    def tally(self) -> Tally:
        """The counters the metrics keep; a report that counts none of them leaves the default."""
        return Tally()

    def fields(self) -> Summary:
        """The report's fields in their declared order: scalars and per-kind counts (copies).

        Lists of per-message outcomes are left out: a summary is shown where message keys and
        details have no place (Flower, a task's result).
        """
        out: Summary = {}
        for name, value in vars(self).items():
            if value is None or isinstance(value, int | float | str | bool):
                out[name] = value
            elif isinstance(value, dict):
                out[name] = {str(kind): int(count) for kind, count in value.items()}
        return out

    def done(self) -> dict[str, int]:
        """The counters of what the cycle did (not what it only looked at), without the zeros."""
        return {
            name: value
            for name, value in self.fields().items()
            if name not in self.EXAMINED
            and isinstance(value, int)
            and not isinstance(value, bool)
            and value
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one message (no content, safe to print and log)."""

    key: str
    outcome: str
    detail: str = ""


@dataclass
class CycleReport(CycleOutcome):
    """Counts and per-message outcomes of one poll or delivery run of an incoming instance."""

    EXAMINED: ClassVar[frozenset[str]] = frozenset({"listed", "known"})

    instance: str
    skipped: str | None = None
    listed: int = 0
    staged: int = 0
    known: int = 0
    delivered: int = 0
    duplicates: int = 0
    filtered: int = 0
    quarantined: int = 0
    post_processed: int = 0
    error: str | None = None
    duration: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    #: Messages handled by a classification policy (skipped or quarantined), per class value
    #: (``auto_reply``, ``bounce``, ``fax``, ``meeting_request``, ...).
    classified: dict[str, int] = field(default_factory=dict)
    #: Forwarded originals whose CRM user or queue was not found (``<ForwardUnknownPolicy>``).
    unowned: int = 0
    #: Messages the receiving owner's tracking filter declined (also in ``filtered``), per
    #: CheckIncomingEmail reason (``NoCorrelationMatch``, ``InvalidSender``, ...).
    tracking_filtered: dict[str, int] = field(default_factory=dict)
    #: What a poll's last step read back (counters, oldest staged message): None for a skipped
    #: poll or a delivery run. The runtimes set the lag gauge and queue CRM work from it.
    after: InstancePeek | None = None

    def not_run(self) -> str | None:
        """Why the run did not happen (``skipped``: another worker held the lease)."""
        return self.skipped or None

    def tally(self) -> Tally:
        """Delivered, quarantined and classified messages (an incoming run fails no email)."""
        return Tally(
            delivered=self.delivered,
            quarantined=self.quarantined,
            classified=dict(self.classified),
        )

    def note(self, key: str, outcome: str, detail: str = "") -> None:
        """Record what happened to message ``key`` (its last note is the one shown)."""
        self.outcomes.append(Outcome(key, outcome, detail))

    def count_class(self, kind: Classification) -> None:
        """Count one message that its class's policy kept out of the CRM."""
        self.classified[kind.value] = self.classified.get(kind.value, 0) + 1

    def count_filtered(self, verdict: Verdict) -> None:
        """Count one message the owner's tracking filter declined."""
        self.filtered += 1
        self.tracking_filtered[verdict.reason] = self.tracking_filtered.get(verdict.reason, 0) + 1

    def merge(self, other: CycleReport) -> None:
        """Add what a delivery run (``other``) did to this poll's report."""
        self.delivered += other.delivered
        self.duplicates += other.duplicates
        self.filtered += other.filtered
        self.quarantined += other.quarantined
        self.unowned += other.unowned
        self.outcomes.extend(other.outcomes)
        _add(self.classified, other.classified)
        _add(self.tracking_filtered, other.tracking_filtered)


def _add(counts: dict[str, int], more: Mapping[str, int]) -> None:
    for kind, count in more.items():
        counts[kind] = counts.get(kind, 0) + count


def format_report(report: CycleReport) -> str:
    """Human-readable summary of a cycle: counts, then one line per message."""
    if report.skipped:
        return f"{report.instance}: skipped ({report.skipped})"
    lines = [
        f"{report.instance}: listed {report.listed}, staged {report.staged}, "
        f"delivered {report.delivered}, duplicates {report.duplicates}, "
        f"filtered {report.filtered}, quarantined {report.quarantined}, "
        f"post-processed {report.post_processed} in {report.duration:.2f}s"
    ]
    lines += _per_kind_lines(report)
    final = {o.key: o for o in report.outcomes}  # a message's last outcome (staged -> delivered)
    lines += [
        f"  {o.key}: {o.outcome}" + (f" ({o.detail})" if o.detail else "") for o in final.values()
    ]
    if report.error:
        lines.append(f"error: {report.error}")
    return "\n".join(lines)


def _per_kind_lines(report: CycleReport) -> list[str]:
    lines = []
    if report.classified:
        by_class = ", ".join(f"{k} {n}" for k, n in sorted(report.classified.items()))
        lines.append(f"  by class (skipped or quarantined by policy): {by_class}")
    if report.tracking_filtered:
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(report.tracking_filtered.items()))
        lines.append(f"  declined by the owners' tracking filters: {reasons}")
    if report.unowned:
        lines.append(f"  forwarded messages for no known user or queue: {report.unowned}")
    return lines
