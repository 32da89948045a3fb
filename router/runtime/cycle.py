"""Running one cycle of one instance in ``email-router run``: call the use-case, never raise.

Use :func:`execute` in a worker thread of the scheduler (:mod:`router.runtime.schedule`): it runs
:func:`run_cycle` - a poll with delivery for an incoming instance, a send cycle for an outgoing
one, both through :mod:`router.service` - and turns every outcome into a :class:`RunResult`:
the error is logged and recorded in the instance's counters, metrics and the progress line
(:mod:`router.runtime.summary`) are written, and the scheduler decides from the result whether
the instance pauses (:mod:`router.runtime.pause`) and whether it runs again at once
(:func:`more_waiting`: the poll stopped at ``MaxMessageCount``; the Celery tasks ask it too).
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from dataclasses import dataclass

from router import metrics, service
from router.config import ProviderConfiguration
from router.context import Context
from router.errors import RouterError
from router.logsetup import log_context
from router.models import Direction
from router.report import CycleOutcome, CycleReport
from router.runtime.pause import MAX_RECORDED_ERROR, describe, pauses
from router.runtime.summary import progress_line, summary
from router.state.base import StateStore

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What one cycle of one instance ended with (made in the worker thread)."""

    name: str
    report: CycleOutcome | None = None
    error: BaseException | None = None
    duration: float = 0.0
    #: the poll stopped at MaxMessageCount: more mail may be waiting (see :func:`more_waiting`)
    more_waiting: bool = False

    @property
    def stopped(self) -> bool:
        """True when the cycle's error pauses its instance (see ``router.runtime.pause``)."""
        return pauses(self.error)


def run_cycle(ctx: Context, cfg: ProviderConfiguration) -> CycleOutcome:
    """One poll (incoming, with delivery) or send (outgoing) cycle; returns its report."""
    if cfg.direction is Direction.INCOMING:
        return service.poll_instance(ctx, cfg.name, deliver=True)
    return service.send_cycle(ctx, cfg.name)


def more_waiting(cfg: ProviderConfiguration, report: CycleOutcome | None) -> bool:
    """True when an incoming poll listed ``MaxMessageCount`` messages: more may be waiting.

    Both runtimes then run the instance's next poll at once instead of after its
    PollingPeriod, behind the polls already due (a backlog drains at full speed, and no
    instance starves the others). A mailbox that held exactly the limit costs one empty poll.
    """
    if cfg.direction is not Direction.INCOMING or report is None:
        return False
    fields = summary(report)
    listed = fields.get("listed")
    if fields.get("skipped") is not None or fields.get("error") is not None:
        return False
    return isinstance(listed, int) and listed >= cfg.max_message_count


def execute(ctx: Context, cfg: ProviderConfiguration) -> RunResult:
    """Run one cycle and turn every outcome into a :class:`RunResult` (never raises)."""
    with log_context(instance=cfg.name):
        return _execute(ctx, cfg)


def _execute(ctx: Context, cfg: ProviderConfiguration) -> RunResult:
    result, started = RunResult(cfg.name), time.monotonic()
    before = _last_error_at(ctx.store, cfg.name)
    try:
        result.report = run_cycle(ctx, cfg)
    except Exception as exc:  # one instance's failure must not stop the others
        result.error = exc
        _record_failure(ctx.store, cfg.name, exc, before)
    service.settle_leases(ctx.store, failed=result.error is not None)
    result.duration = time.monotonic() - started
    result.more_waiting = more_waiting(cfg, result.report)
    observe(ctx, cfg, result)
    return result


def _last_error_at(store: StateStore, name: str) -> float | None:
    try:
        return store.get_stats(name).last_error_at
    except RouterError:
        return None


def _record_failure(store: StateStore, name: str, exc: Exception, before: float | None) -> None:
    """Record the error unless the cycle already did (poll_instance records what it raises)."""
    if isinstance(exc, RouterError):
        log.warning("%s: cycle failed: %s", name, describe(exc))
    else:
        log.exception("%s: cycle crashed (a bug): %s", name, type(exc).__name__)
    try:
        if _last_error_at(store, name) == before:
            store.record_poll(name, error=describe(exc)[:MAX_RECORDED_ERROR])
    except RouterError as store_exc:
        log.warning("%s: could not record the error: %s", name, store_exc)


def observe(ctx: Context, cfg: ProviderConfiguration, result: RunResult) -> None:
    """Metrics and the progress line of a finished cycle."""
    if result.error is not None:
        metrics.record_error(cfg.name, result.error, result.duration)
    elif result.report is not None:
        metrics.record_cycle(result.report)
        line = progress_line(result.report, result.duration)
        if line:
            log.info("%s", line)
    if cfg.direction is not Direction.INCOMING:
        return
    after = result.report.after if isinstance(result.report, CycleReport) else None
    if after is not None:  # the poll read it back at its end: no store call
        metrics.set_lag(cfg.name, after.oldest_staged)
        return
    # RouterError: the store is having trouble; the cycle's own error says so
    with suppress(RouterError):
        metrics.update_lag(ctx.store, cfg.name)
