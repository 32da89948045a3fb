"""A message's failures in the incoming flow: whose fault, how many, and putting it aside.

Use :data:`CONNECTION_ERRORS` to tell a failure that ends the cycle (the connection, the
credentials, the state store or the CRM as a whole) from one that is one message's fault; use
:func:`count_failure` for the latter (quarantined at ``MaxMessageAttempts``) and
:func:`quarantine_message` to put a message aside with its reason. The poll cycle
(:mod:`router.incoming`), the delivery (:mod:`router.delivery`) and the classification policies
(:mod:`router.policies`) record these fates alike: one ledger move, one count and note in the
cycle's report, one log line without message content.
"""

from __future__ import annotations

import logging

from router.config import ProviderConfiguration
from router.context import Context
from router.errors import CrmUnavailable, ProviderUnavailable, StateError, StopError
from router.ledger import InboundLedger
from router.models import LedgerEntry
from router.report import CycleReport

log = logging.getLogger(__name__)

#: Failures that are about the connection, the credentials, the state store or the CRM as a
#: whole, never about one message: they end the cycle and are never counted against a message.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    ProviderUnavailable,
    StopError,  # ConfigError, ProviderAuthError, CrmAuthError
    StateError,
    CrmUnavailable,
)


def short(exc: BaseException) -> str:
    """``Type: message`` of an exception, cut to what a ledger reason or a counter may hold."""
    return f"{type(exc).__name__}: {exc}"[:500]


def log_failure(name: str, key: str, step: str, attempts: int, exc: Exception) -> None:
    """Log a message's failure; with the traceback on its first failure only, not every cycle."""
    log.warning(
        "%s: %s of message %s failed (attempt %d): %s",
        name,
        step,
        key,
        attempts,
        short(exc),
        exc_info=exc if attempts <= 1 else None,
    )


def count_failure(
    ctx: Context,
    cfg: ProviderConfiguration,
    entry: LedgerEntry,
    attempts: int,
    failure: tuple[str, Exception],
    report: CycleReport,
) -> None:
    """A staged message failed ``attempts`` times at ``failure``'s step: quarantine at the limit."""
    step, exc = failure
    log_failure(cfg.name, entry.key, step, attempts, exc)
    if attempts < cfg.max_message_attempts:
        report.note(entry.key, f"{step} failed", f"attempt {attempts}: {short(exc)}")
        return
    reason = f"{step} failed {attempts} times: {short(exc)}"
    quarantine_message(ctx, cfg.name, entry.key, reason, report)


def quarantine_message(ctx: Context, name: str, key: str, reason: str, report: CycleReport) -> None:
    """Put staged message ``key`` aside with ``reason`` (counted once, if the ledger moved it)."""
    if InboundLedger(ctx.store, name).quarantine(key, reason):
        report.quarantined += 1
        report.note(key, "quarantined", reason)
        log.warning("%s: message %s quarantined: %s", name, key, reason)
