"""The cycle summary both runtimes report: what one poll, delivery or send cycle did.

Use :func:`summary` for the fields of a cycle's report (a Celery task's result, what Flower
shows: counts, names, errors and the per-kind counts such as ``classified``) and
:func:`progress_line` for the log line ``email-router run`` writes after a cycle that did
something. Both read the report through what :class:`router.report.CycleOutcome` declares, so
they never disagree about what a cycle did, whichever direction it ran.
"""

from __future__ import annotations

from router.report import CycleOutcome, Summary


def summary(report: CycleOutcome) -> Summary:
    """The fields of a cycle's report (counts, names, errors, per-kind counts), in order."""
    return report.fields()


def done(report: CycleOutcome) -> dict[str, int]:
    """The counters of what the cycle did, without the zeros."""
    return report.done()


def progress_line(report: CycleOutcome, duration: float) -> str | None:
    """``box: staged 2, delivered 2 (0.12s)`` for a cycle that did something, else None."""
    counts = report.done()
    if not counts:
        return None
    what = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in counts.items())
    return f"{report.instance}: {what} ({duration:.2f}s)"
