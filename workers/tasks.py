"""The Celery tasks: thin wrappers that call the use-cases in ``router`` for one instance.

Arguments are instance names and ledger keys only - never message bodies, addresses or secrets
(they are visible in the broker and in Flower).

What a task does with the router's errors (``router.errors``):

* :class:`~router.errors.RetryableError` - retried with exponential backoff and jitter, never
  sooner than the ``retry_after`` the remote side asked for, at most ``MAX_RETRIES`` times.
* :class:`~router.errors.QuarantineError` - logged; the service already set the message aside.
* :class:`~router.errors.StopError` (configuration, credentials) - logged as an error naming the
  instance and recorded in its counters (``email-router status``); not retried, and the
  instance's next tasks do nothing until the pause rule of :mod:`router.runtime.pause` lifts it
  (the configuration file changed, or ``STOP_PAUSE`` passed): retrying refused credentials every
  period would lock the account.

A poll that stopped at ``MaxMessageCount`` queues the instance's next poll at once, behind the
polls already queued (:func:`router.runtime.cycle.more_waiting`, the rule ``email-router run``
applies too): a backlog drains at full speed instead of one chunk per PollingPeriod.

Beat's dispatcher (:mod:`workers.dispatch`) sends due incoming instances as ``poll_batch`` tasks:
each instance of a batch is polled exactly as a ``poll`` task polls it (its own lease, pause
rule, error handling), one after the other; an instance whose poll fails with a retryable error
gets a ``poll`` task of its own with the backoff, and what is left of a batch after
:data:`BATCH_BUDGET` seconds goes back to the queue as a new batch, so one slow mailbox delays
its batch-mates by at most that much before another worker process can take them.

A task for an instance that is no longer in the configuration (or is disabled) does nothing.
The tasks call the use-cases through :mod:`router.service` only, and report what a cycle did with
the shared summary of :mod:`router.runtime.summary`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from router import service
from router.context import Context
from router.errors import ConfigError, RetryableError, RouterError, action_of
from router.logsetup import log_context
from router.models import Direction, LedgerState
from router.report import Summary
from router.runtime import pause
from router.runtime.cycle import more_waiting
from router.runtime.summary import summary
from router.state.base import InstancePeek, InstanceStats
from workers.app import MAX_RETRIES, RETRY_BACKOFF_MAX, app
from workers.context import HOLDER
from workers.signals import observe_cycle, observe_error, observe_lag

log = logging.getLogger(__name__)

#: A deliver task enqueued by a poll expires after this many polling periods (at least a minute):
#: the next poll enqueues a fresh one while staged messages remain.
DELIVER_EXPIRY_PERIODS = 10
#: Seconds a ``poll_batch`` task polls before it queues the rest of its batch as a new task.
BATCH_BUDGET = 2.0


class RouterTask(Task):
    """Base of the router's tasks: backoff retries that honour the remote ``retry_after``."""

    autoretry_for = (RetryableError,)
    retry_backoff = 2
    retry_backoff_max = RETRY_BACKOFF_MAX
    retry_jitter = True
    max_retries = MAX_RETRIES
    acks_late = True
    ignore_result = True

    def retry(self, *args: Any, exc: BaseException | None = None, **options: Any) -> Any:
        options["countdown"] = retry_countdown(exc, options.get("countdown"))
        return super().retry(*args, exc=exc, **options)


def retry_countdown(exc: BaseException | None, backoff: float | None) -> float | None:
    """The backoff delay, raised to the ``retry_after`` the error carries (if any)."""
    after = exc.retry_after if isinstance(exc, RetryableError) else None
    if after is None:
        return backoff
    return max(float(backoff or 0.0), float(after))


# -- tasks ----------------------------------------------------------------------------------------
@app.task(bind=True, base=RouterTask, name="workers.tasks.poll")
def poll(self: RouterTask, instance: str) -> Summary | None:
    """Stage what is new in the mailbox, then hand CRM delivery to the ``crm`` queue."""
    return run_for(self.name, instance, Direction.INCOMING, _poll)


@app.task(bind=True, base=RouterTask, name="workers.tasks.poll_batch")
def poll_batch(self: RouterTask, instances: list[str]) -> dict[str, int]:
    """Poll several instances one after the other, each as ``poll`` would (beat's batches)."""
    started, polled = time.monotonic(), 0
    peeks = _peek(instances)
    for name in instances:
        if polled and time.monotonic() - started > BATCH_BUDGET:
            rest = instances[polled:]
            poll_batch.apply_async((rest,), queue="incoming", expires=_expiry(self))
            break
        _poll_in_batch(name, peeks.get(name))
        polled += 1
    return {"polled": polled, "queued": len(instances) - polled}


def _peek(instances: list[str]) -> dict[str, InstancePeek]:
    """What each poll would read first (pause, staged leftovers), for the batch in one read.

    Empty when the store cannot answer: each poll then reads its own (and reports the error).
    """
    try:
        with HOLDER.use() as ctx:
            return ctx.store.peek(instances)
    except RouterError as exc:
        log.warning(
            "batch of %d polls: read-ahead failed, polling one by one: %s", len(instances), exc
        )
        return {}


def _poll_in_batch(name: str, peek: InstancePeek | None) -> None:
    """One instance of a batch: its failure is its own (retried alone), never the batch's."""
    try:
        run_for(poll.name, name, Direction.INCOMING, _poll, peek)
    except RetryableError as exc:
        poll.apply_async((name,), countdown=retry_countdown(exc, 2.0))
    except SoftTimeLimitExceeded:  # the batch is over its budget now: the rest is re-queued
        log.warning("%s: poll stopped at the time limit (MaxThreadExecution)", name)
    except Exception:  # a bug in one instance's poll must not stop its batch-mates
        log.exception("%s: poll crashed (a bug)", name)


def _expiry(task: RouterTask) -> datetime | None:
    """The batch's own expiry (ISO text in the request): its remainder expires with it."""
    expires = task.request.expires
    if isinstance(expires, str):
        return datetime.fromisoformat(expires)
    return expires if isinstance(expires, datetime) else None


@app.task(bind=True, base=RouterTask, name="workers.tasks.deliver")
def deliver(self: RouterTask, instance: str, keys: list[str] | None = None) -> Summary | None:
    """Turn the instance's staged messages (all, or only ``keys``) into CRM activities."""
    return run_for(
        self.name, instance, Direction.INCOMING, lambda ctx, name: _deliver(ctx, name, keys)
    )


@app.task(bind=True, base=RouterTask, name="workers.tasks.send")
def send(self: RouterTask, instance: str) -> Summary | None:
    """Send the CRM's pending outbound emails of an outgoing instance."""
    return run_for(self.name, instance, Direction.OUTGOING, _send)


@app.task(bind=True, base=RouterTask, name="workers.tasks.housekeeping")
def housekeeping(self: RouterTask) -> dict[str, Any] | None:
    """Re-queue delivery of staged leftovers; purge finished ledger entries past retention."""
    with HOLDER.use() as ctx:
        return _housekeeping(ctx)


# -- what each task does --------------------------------------------------------------------------
Body = Callable[[Context, str], Summary]


def run_for(
    task: str, instance: str, direction: Direction, body: Body, peek: InstancePeek | None = None
) -> Summary | None:
    """Run ``body`` for an enabled instance of ``direction``; act on the router's errors.

    ``peek``: the instance's counters as a batch read them (else they are read here).
    """
    with log_context(instance=instance), contextlib.ExitStack() as stack:
        try:
            ctx = stack.enter_context(HOLDER.use())
        except ConfigError as exc:  # nothing loaded yet: the file itself is broken
            log.error("%s: %s: configuration cannot be used: %s", instance, task, exc)
            return None
        stats = peek.stats if peek is not None else None
        if not _wanted(ctx, instance, direction) or _paused(ctx, instance, stats):
            return None
        result = None
        try:
            result = _guarded(task, ctx, instance, body)
            return result
        finally:  # None: the cycle failed, and its lease's release may have failed with it
            service.settle_leases(ctx.store, failed=result is None)


def _guarded(task: str, ctx: Context, instance: str, body: Body) -> Summary | None:
    try:
        return body(ctx, instance)
    except RouterError as exc:
        if not _handled(task, ctx, instance, exc):
            raise  # Celery retries a "retry" error (autoretry_for); a "crash" is a bug
    return None


def _handled(task: str, ctx: Context, instance: str, exc: RouterError) -> bool:
    """Act on the error's action (``router.errors.action_of``); False when the task must raise."""
    if pause.pauses(exc):  # the rule the standalone scheduler applies too
        observe_error(task, instance, exc)
        _stopped(ctx, instance, exc)
        return True
    action = action_of(exc)
    if action == "quarantine":
        log.warning("%s: %s: message set aside: %s", instance, task, exc)
        return True
    if action == "retry":
        observe_error(task, instance, exc)
        log.warning("%s: %s, will retry: %s", instance, task, exc)
    return False


def _wanted(ctx: Context, instance: str, direction: Direction) -> bool:
    try:
        cfg = ctx.instance(instance)  # indexed: a scan of 100,000 instances per poll adds up
    except ConfigError:
        cfg = None
    if cfg is None or not cfg.enabled:
        log.info(
            "%s: not an enabled instance in the configuration any more; nothing to do", instance
        )
        return False
    if cfg.direction is not direction:
        log.error("%s: is an %s instance, not %s", instance, cfg.direction.value, direction.value)
        return False
    return True


def _stopped(ctx: Context, instance: str, exc: RouterError) -> None:
    log.error("%s: stopped until the configuration or credentials are fixed: %s", instance, exc)
    try:
        pause.Pause(pause.describe(exc), time.time()).record(ctx.store, instance)
    except Exception:  # the error is logged either way
        log.warning("%s: could not record the error", instance, exc_info=True)


def _paused(ctx: Context, instance: str, stats: InstanceStats | None = None) -> bool:
    """True while the pause some worker recorded for the instance is not lifted.

    The pause lives in the state store, so every worker agrees; the rule is the shared one of
    :mod:`router.runtime.pause` (the standalone scheduler applies it too).
    """
    stats = stats if stats is not None else ctx.store.get_stats(instance)
    stop = pause.Pause.recorded(stats)
    # The version this worker has loaded, not the file on disk: a poll run with the old
    # credentials after the file was fixed but before the reload would only stop again.
    if stop is None or stop.lifted(
        config_since=HOLDER.loaded_mtime,
        succeeded_at=stats.last_success,
        now=time.time(),
        longest=pause.STOP_PAUSE,
    ):
        return False
    log.info("%s: paused after %s", instance, stats.last_error)
    return True


def _poll(ctx: Context, name: str) -> Summary:
    """One poll; what its last step read back (``report.after``) sets the lag gauge and says
    whether staged messages wait for a ``deliver`` task: an idle poll makes two store calls."""
    report = service.poll_instance(ctx, name, deliver=False)
    observe_cycle("poll", report)
    cfg, after = ctx.instance(name), report.after
    if after is not None:  # None: skipped, the lease holder reports
        observe_lag(ctx.store, name, after)
        if after.oldest_staged is not None:
            expires = max(60.0, DELIVER_EXPIRY_PERIODS * cfg.polling_seconds)
            deliver.apply_async((name,), queue="crm", expires=expires)
    if more_waiting(cfg, report):
        # behind the polls already queued (FIFO): a backlog drains at full speed, fairly
        poll.apply_async((name,), expires=max(1.0, cfg.polling_seconds))
    return summary(report)


def _has_staged(ctx: Context, name: str) -> bool:
    return bool(ctx.store.list_entries(name, [LedgerState.STAGED], limit=1))


def _deliver(ctx: Context, name: str, keys: list[str] | None) -> Summary:
    report = service.deliver_staged(ctx, name, keys)
    observe_cycle("deliver", report)
    observe_lag(ctx.store, name)
    return summary(report)


def _send(ctx: Context, name: str) -> Summary:
    report = service.send_cycle(ctx, name)
    observe_cycle("send", report)
    return summary(report)


def _housekeeping(ctx: Context) -> dict[str, Any]:
    """Re-queue delivery where staged messages wait (a lost deliver task), purge old entries."""
    requeued = []
    for cfg in ctx.config.providers:
        if cfg.enabled and cfg.direction is Direction.INCOMING and _has_staged(ctx, cfg.name):
            deliver.apply_async((cfg.name,), queue="crm", expires=RETRY_BACKOFF_MAX)
            requeued.append(cfg.name)
    purged = service.housekeeping(ctx)
    return {"requeued": requeued, "purged": purged.total}
