"""The Celery tasks: thin wrappers that call the use-cases in ``router`` for one instance.

Arguments are instance names and ledger keys only - never message bodies, addresses or secrets
(they are visible in the broker and in Flower).

What a task does with the router's errors (``router.errors``):

* :class:`~router.errors.RetryableError` - retried with exponential backoff and jitter, never
  sooner than the ``retry_after`` the remote side asked for, at most ``MAX_RETRIES`` times.
* :class:`~router.errors.QuarantineError` - logged; the service already set the message aside.
* :class:`~router.errors.StopError` (configuration, credentials) - logged as an error naming the
  instance and recorded in its counters (``email-router status``); not retried, and the
  instance's next tasks do nothing until the configuration file changes or ``STOP_PAUSE`` passes
  (retrying refused credentials every period would lock the account).

A task for an instance that is no longer in the configuration (or is disabled) does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task

from router.errors import ConfigError, QuarantineError, RetryableError, StopError
from router.logsetup import log_context
from router.models import Direction, LedgerState
from router.service import Context
from workers.app import MAX_RETRIES, RETRY_BACKOFF_MAX, app
from workers.context import HOLDER
from workers.signals import observe_cycle, observe_error, observe_lag

log = logging.getLogger(__name__)

Summary = dict[str, Any]
#: A deliver task enqueued by a poll expires after this many polling periods (at least a minute):
#: the next poll enqueues a fresh one while staged messages remain.
DELIVER_EXPIRY_PERIODS = 10
#: Prefix of the error recorded for a StopError; such an instance is paused (see _paused).
STOP_MARK = "stopped: "
#: Longest pause (seconds) of an instance after a StopError when the file does not change.
STOP_PAUSE = 600.0


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
    after = getattr(exc, "retry_after", None)
    if after is None:
        return backoff
    return max(float(backoff or 0.0), float(after))


# -- tasks ----------------------------------------------------------------------------------------
@app.task(bind=True, base=RouterTask, name="workers.tasks.poll")
def poll(self: RouterTask, instance: str) -> Summary | None:
    """Stage what is new in the mailbox, then hand CRM delivery to the ``crm`` queue."""
    return run_for(self.name, instance, Direction.INCOMING, _poll)


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
def housekeeping(self: RouterTask) -> Summary | None:
    """Re-queue delivery of staged leftovers; purge finished ledger entries past retention."""
    with HOLDER.use() as ctx:
        return _housekeeping(ctx)


# -- what each task does --------------------------------------------------------------------------
Body = Callable[[Context, str], Summary]


def run_for(task: str, instance: str, direction: Direction, body: Body) -> Summary | None:
    """Run ``body`` for an enabled instance of ``direction``; act on the router's errors."""
    with log_context(instance=instance), contextlib.ExitStack() as stack:
        try:
            ctx = stack.enter_context(HOLDER.use())
        except ConfigError as exc:  # nothing loaded yet: the file itself is broken
            log.error("%s: %s: configuration cannot be used: %s", instance, task, exc)
            return None
        if not _wanted(ctx, instance, direction) or _paused(ctx, instance):
            return None
        return _guarded(task, ctx, instance, body)


def _guarded(task: str, ctx: Context, instance: str, body: Body) -> Summary | None:
    try:
        return body(ctx, instance)
    except RetryableError as exc:
        observe_error(task, instance, exc)
        log.warning("%s: %s, will retry: %s", instance, task, exc)
        raise
    except QuarantineError as exc:
        log.warning("%s: %s: message set aside: %s", instance, task, exc)
    except StopError as exc:
        observe_error(task, instance, exc)
        _stopped(ctx, instance, exc)
    return None


def _wanted(ctx: Context, instance: str, direction: Direction) -> bool:
    cfg = next((p for p in ctx.config.providers if p.name == instance), None)
    if cfg is None or not cfg.enabled:
        log.info(
            "%s: not an enabled instance in the configuration any more; nothing to do", instance
        )
        return False
    if cfg.direction is not direction:
        log.error("%s: is an %s instance, not %s", instance, cfg.direction.value, direction.value)
        return False
    return True


def _stopped(ctx: Context, instance: str, exc: StopError) -> None:
    log.error("%s: stopped until the configuration or credentials are fixed: %s", instance, exc)
    try:
        ctx.store.record_poll(instance, error=f"{STOP_MARK}{type(exc).__name__}: {exc}"[:500])
    except Exception:  # the error is logged either way
        log.warning("%s: could not record the error", instance, exc_info=True)


def _paused(ctx: Context, instance: str) -> bool:
    """True while the instance's last cycle stopped on a StopError and nothing changed since.

    Retrying refused credentials every PollingPeriod would only lock the account: the instance
    waits until the configuration file changes (the usual fix) or STOP_PAUSE passes (a secret
    rotated in its own file or variable). Stored in the state store, so every worker agrees.
    """
    stats = ctx.store.get_stats(instance)
    stopped_at = stats.last_error_at
    if stopped_at is None or not (stats.last_error or "").startswith(STOP_MARK):
        return False
    if (stats.last_success or 0.0) > stopped_at or time.time() - stopped_at > STOP_PAUSE:
        return False
    # The version this worker has loaded, not the file on disk: a poll run with the old
    # credentials after the file was fixed but before the reload would only stop again.
    if HOLDER.loaded_mtime > stopped_at:
        return False
    log.info("%s: paused after %s", instance, stats.last_error)
    return True


def _poll(ctx: Context, name: str) -> Summary:
    from router.incoming import poll_instance

    report = poll_instance(ctx, name, deliver=False)
    observe_cycle("poll", report)
    observe_lag(ctx.store, name)
    if report.skipped is None and (report.staged or _has_staged(ctx, name)):
        period = ctx.instance(name).polling_seconds
        expires = max(60.0, DELIVER_EXPIRY_PERIODS * period)
        deliver.apply_async((name,), queue="crm", expires=expires)
    return summary(report)


def _has_staged(ctx: Context, name: str) -> bool:
    return bool(ctx.store.list_entries(name, [LedgerState.STAGED], limit=1))


def _deliver(ctx: Context, name: str, keys: list[str] | None) -> Summary:
    from router.incoming import deliver_staged

    report = deliver_staged(ctx, name, keys)
    observe_cycle("deliver", report)
    observe_lag(ctx.store, name)
    return summary(report)


def _send(ctx: Context, name: str) -> Summary:
    from router.outgoing import send_cycle

    report = send_cycle(ctx, name)
    observe_cycle("send", report)
    return summary(report)


def _housekeeping(ctx: Context) -> Summary:
    """Re-queue delivery where staged messages wait (a lost deliver task), purge old entries."""
    from router.housekeeping import housekeeping as purge_finished

    requeued = []
    for cfg in ctx.config.providers:
        if cfg.enabled and cfg.direction is Direction.INCOMING and _has_staged(ctx, cfg.name):
            deliver.apply_async((cfg.name,), queue="crm", expires=RETRY_BACKOFF_MAX)
            requeued.append(cfg.name)
    purged = purge_finished(ctx)
    return {"requeued": requeued, "purged": purged.total}


def summary(report: object) -> Summary:
    """The scalar fields of a report (counts, names, errors): safe for logs and Flower."""
    fields = getattr(report, "__dataclass_fields__", None) or vars(report)
    out: Summary = {}
    for key in fields:
        value = getattr(report, key, None)
        if isinstance(value, int | float | str | bool) or value is None:
            out[key] = value
    return out
