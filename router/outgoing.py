"""The outgoing cycle: pending CRM emails -> SMTP -> Sent / Failed, and bounces closing the loop.

:func:`send_cycle` runs one cycle for an outgoing instance::

    lease -> list pending CRM emails -> for each: claim in the ledger -> compose
    -> submit (ledger "submitted" right before the final dot) -> CRM Sent -> ledger "sent"

Ledger entries live in one namespace, :data:`OUTBOUND`, keyed ``out:<email_id>``, so two
instances serving the same users or queues cannot both claim an email. States::

    (none) -> CLAIMED -> SUBMITTED -> SENT
                      -> RETRY (4xx, connection error; backoff) -> CLAIMED ...
                      -> FAILED (5xx, every recipient refused, attempts exhausted, a bounce)

Why a crash never sends an email twice: "submitted" is written after the server accepted the
recipients and received the body, immediately before the final ``.`` that makes it deliver.
A crash before that write leaves CLAIMED - the server got no final dot and dropped the
transaction, so the email is sent again later. A crash after it leaves SUBMITTED - the next
cycle only marks the email Sent. (The one gap is a crash in the microseconds between that write
and the dot leaving the socket: the email would then be marked Sent without having left.)
A recipient refused with 4xx is retried alone, with the same Message-ID, so those who accepted
never get it twice.

:func:`handle_bounce` is called by the incoming side for a DSN: the Message-ID index finds the
ledger entry that sent the original, and the CRM email is marked Failed with the DSN's status.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.compose import Composed, compose_message, normalize_message_id
from router.config import ProviderConfiguration
from router.crm.base import CrmAdapter
from router.errors import (
    ConfigError,
    CrmRejected,
    LeaseLost,
    MessageRejected,
    RetryableError,
    RouterError,
    StopError,
)
from router.models import BounceInfo, Direction, LedgerEntry, LedgerState, OutboundEmail
from router.providers.base import OutgoingProvider, SubmitResult
from router.service import Context, owners
from router.state.base import Lease

log = logging.getLogger(__name__)

#: Ledger namespace of every outbound claim, shared by all outgoing instances.
OUTBOUND = "_outbound"
DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX = 60.0, 3600.0
Clock = Callable[[], float]
#: Entry states an email can still leave for SENT or FAILED.
_OPEN_STATES = (LedgerState.CLAIMED, LedgerState.SUBMITTED, LedgerState.RETRY, LedgerState.SENT)


@dataclass(frozen=True, slots=True)
class EmailOutcome:
    """What happened to one CRM email in a cycle (no content: safe to print and log)."""

    email_id: str
    outcome: str
    detail: str = ""
    message_id: str | None = None
    attempts: int = 0


@dataclass
class SendReport:
    """Counts and per-email outcomes of one send cycle."""

    instance: str
    busy: str | None = None
    pending: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    error: str | None = None
    duration: float = 0.0
    outcomes: list[EmailOutcome] = field(default_factory=list)

    def note(self, outcome: EmailOutcome) -> None:
        self.outcomes.append(outcome)
        counter = {"sent": "sent", "failed": "failed", "retry": "retried"}.get(outcome.outcome)
        setattr(self, counter or "skipped", getattr(self, counter or "skipped") + 1)


class _StopBatch(Exception):
    """Internal: the connection is gone; the rest of the batch waits for the next cycle."""


# -- the cycle ------------------------------------------------------------------------------------
def send_cycle(
    ctx: Context, name: str, *, holder: str | None = None, clock: Clock = time.time
) -> SendReport:
    """Run one send cycle of outgoing instance ``name``; see the module docstring.

    Returns a report with ``busy`` set when another worker holds the instance's lease. Router
    errors that stop the cycle (credentials, CRM outage) propagate after the lease is released
    and the claim in progress is given back.
    """
    cfg = _outgoing(ctx, name)
    report, started = SendReport(name), time.monotonic()
    lease = ctx.store.acquire_lease(name, holder or ctx.holder, lease_ttl(ctx))
    if lease is None:
        info = ctx.store.get_lease(name)
        report.busy = f"lease held by {info.holder if info else 'another worker'}"
        return report
    try:
        _Batch(ctx, cfg, lease, report, clock).run()
    except RouterError as exc:
        report.error = _short(exc)
        ctx.store.record_poll(name, processed=report.sent + report.failed, error=report.error)
        raise
    finally:
        ctx.store.release_lease(lease)
        report.duration = time.monotonic() - started
    ctx.store.record_poll(name, processed=report.sent + report.failed, error=report.error)
    return report


class _Batch:
    """One cycle's work over the pending emails, with one provider connection."""

    def __init__(
        self,
        ctx: Context,
        cfg: ProviderConfiguration,
        lease: Lease,
        report: SendReport,
        clock: Clock,
    ) -> None:
        self.ctx, self.cfg, self.lease, self.report, self.clock = ctx, cfg, lease, report, clock
        self.store, self.name = ctx.store, cfg.name
        self.crm: CrmAdapter = ctx.crm(cfg)
        self.provider: OutgoingProvider | None = None
        self.ttl = lease_ttl(ctx)
        self.renew_at = time.monotonic() + self.ttl / 3

    def run(self) -> None:
        pending = self.crm.list_pending(owners(self.cfg), self.cfg.max_message_count)
        self.report.pending = len(pending)
        self.prepared = _Prepared()
        try:
            for i, email in enumerate(pending):
                self._keep_lease()
                self.prepared.upcoming = pending[i + 1] if i + 1 < len(pending) else None
                self.report.note(self._one(email))
        except _StopBatch as exc:
            self.report.error = str(exc)
        finally:
            if self.provider is not None:
                self.provider.close()

    def _keep_lease(self) -> None:
        if time.monotonic() < self.renew_at:
            return
        renewed = self.store.renew_lease(self.lease, self.ttl)
        if renewed is None:
            raise LeaseLost(f"{self.name}: lease lost during the send cycle")
        self.lease, self.renew_at = renewed, time.monotonic() + self.ttl / 3

    # -- deciding what an email needs -----------------------------------------------------------
    def _one(self, email: OutboundEmail) -> EmailOutcome:
        key = ledger_key(email.email_id)
        entry = self.store.get_entry(OUTBOUND, key)
        if entry is None:
            return self._claim_new(email, key)
        if entry.state is LedgerState.SUBMITTED:
            if self._writer_gone(entry):
                return self._finish(email, entry)
            return EmailOutcome(email.email_id, "skipped", "being submitted by another worker")
        if entry.state is LedgerState.SENT:
            return self._mark_sent(email, entry)
        if entry.state is LedgerState.FAILED:
            return self._mark_failed(email, entry, entry.reason or "failed")
        if entry.state is LedgerState.CLAIMED:
            return self._reclaim(email, entry)
        if entry.state is LedgerState.RETRY:
            return self._retry(email, entry)
        return EmailOutcome(email.email_id, "skipped", f"ledger state {entry.state.value}")

    def _writer_gone(self, entry: LedgerEntry) -> bool:
        """True when whoever wrote ``entry`` cannot still be working on it.

        Our own instance's earlier cycle is gone (we hold its lease now); another instance's
        entry counts as abandoned once it is older than a lease.
        """
        if entry.extra.get("instance") == self.name:
            return True
        return entry.updated_at < self.clock() - self.ttl

    def _claim_new(self, email: OutboundEmail, key: str) -> EmailOutcome:
        if not self._ensure_provider():
            return EmailOutcome(email.email_id, "skipped", "no connection")
        token = secrets.token_hex(8)
        entry = self.store.create_entry(OUTBOUND, key, LedgerState.CLAIMED, extra=self._mine(token))
        if entry is None:
            return EmailOutcome(email.email_id, "skipped", "claimed by another worker")
        return self._send(email, entry, token)

    def _reclaim(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        if not self._writer_gone(entry):
            return EmailOutcome(email.email_id, "skipped", "claimed by another worker")
        return self._take(email, entry, LedgerState.CLAIMED)

    def _retry(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        due = float(entry.extra.get("next_at", 0.0))
        if due > self.clock():
            return EmailOutcome(
                email.email_id,
                "skipped",
                f"retry in {due - self.clock():.0f}s",
                None,
                entry.attempts,
            )
        return self._take(email, entry, LedgerState.RETRY)

    def _take(self, email: OutboundEmail, entry: LedgerEntry, state: LedgerState) -> EmailOutcome:
        """Move a CLAIMED (abandoned) or RETRY (due) entry to a claim of ours."""
        if not self._ensure_provider():
            return EmailOutcome(email.email_id, "skipped", "no connection")
        token = secrets.token_hex(8)
        taken = self.store.transition(
            OUTBOUND, entry.key, [state], LedgerState.CLAIMED, extra=self._mine(token)
        )
        # A compare-and-set on the state alone cannot tell two takers apart: read back whose
        # token won, so only one of two racing workers goes on.
        current = self.store.get_entry(OUTBOUND, entry.key)
        if taken is None or current is None or current.extra.get("claim") != token:
            return EmailOutcome(email.email_id, "skipped", "claimed by another worker")
        return self._send(email, current, token)

    def _mine(self, token: str) -> dict[str, object]:
        return {"instance": self.name, "claim": token, "holder": self.lease.holder}

    # -- sending --------------------------------------------------------------------------------
    def _send(self, email: OutboundEmail, entry: LedgerEntry, token: str) -> EmailOutcome:
        try:
            composed = self.prepared.take(email)
        except (ValueError, TypeError, UnicodeError) as exc:  # bad data in the CRM record
            return self._fail(email, entry, f"cannot compose the message: {exc}")
        rcpts = list(entry.extra.get("rcpts") or composed.recipients)
        attempts = max(entry.attempts, email.delivery_attempts) + 1
        hook = _CommitHook(self, entry.key, token, composed.message_id)
        try:
            result = self._submit(email, composed, rcpts, hook)
        except MessageRejected as exc:
            return self._after_rejection(email, entry, str(exc))
        except StopError:
            self._give_back(entry.key)
            raise
        except LeaseLost as exc:
            return EmailOutcome(email.email_id, "skipped", str(exc))
        except RetryableError as exc:
            # No reply to the final dot counts as not delivered (RFC 5321 6.1): send again.
            outcome = self._schedule_retry(email, entry, attempts, rcpts, _short(exc), False)
            self.report.note(outcome)
            raise _StopBatch(_short(exc)) from exc
        return self._after_submit(email, entry, result, attempts)

    def _submit(
        self, email: OutboundEmail, composed: Composed, rcpts: list[str], hook: _CommitHook
    ) -> SubmitResult:
        assert self.provider is not None
        sender = _envelope_from(self.provider, email, self.cfg)
        if "commit-hook" in self.provider.capabilities:
            submit = getattr(self.provider, "submit")  # noqa: B009 - the extended signature
            waiting = self.prepared.prepare_upcoming
            result: SubmitResult = submit(email, composed.raw, sender, hook, rcpts, waiting)
            return result
        result = self.provider.submit(email, composed.raw, sender)
        if result.accepted:
            hook(result)
        return result

    def _after_submit(
        self,
        email: OutboundEmail,
        entry: LedgerEntry,
        result: SubmitResult,
        attempts: int,
    ) -> EmailOutcome:
        temporary = [r for r, (code, _) in result.refused.items() if code < 500]
        if temporary:
            reason = "; ".join(f"{r}: {c} {t}" for r, (c, t) in result.refused.items() if c < 500)
            delivered = bool(result.accepted)
            return self._schedule_retry(email, entry, attempts, temporary, reason, delivered)
        current = self.store.get_entry(OUTBOUND, entry.key) or entry
        return self._mark_sent(email, current)

    def _after_rejection(
        self, email: OutboundEmail, entry: LedgerEntry, reason: str
    ) -> EmailOutcome:
        if entry.extra.get("delivered"):  # some recipients had it already: the email did leave
            return self._mark_sent(email, self.store.get_entry(OUTBOUND, entry.key) or entry)
        return self._fail(email, entry, reason)

    def _schedule_retry(
        self,
        email: OutboundEmail,
        entry: LedgerEntry,
        attempts: int,
        rcpts: list[str],
        reason: str,
        delivered: bool,
    ) -> EmailOutcome:
        was_delivered = delivered or bool(entry.extra.get("delivered"))
        if attempts >= self.cfg.maximum_delivery_attempts:
            if was_delivered:
                return self._mark_sent(email, self.store.get_entry(OUTBOUND, entry.key) or entry)
            return self._fail(email, entry, f"{reason} (after {attempts} attempts)")
        due = self.clock() + self._backoff(attempts)
        self.store.transition(
            OUTBOUND,
            entry.key,
            [LedgerState.CLAIMED, LedgerState.SUBMITTED],
            LedgerState.RETRY,
            attempts=attempts,
            reason=reason[:1000],
            extra={"next_at": due, "rcpts": rcpts, "delivered": was_delivered},
        )
        self.crm.record_attempt(email.email_id, attempts)
        log.info("%s: email %s: retry %d in %.0fs", self.name, email.email_id, attempts, due)
        return EmailOutcome(email.email_id, "retry", reason[:300], None, attempts)

    def _backoff(self, attempts: int) -> float:
        assert self.provider is not None
        base = float(getattr(self.provider.options, "retry_backoff", DEFAULT_BACKOFF))
        cap = float(getattr(self.provider.options, "retry_backoff_max", DEFAULT_BACKOFF_MAX))
        return float(min(cap, base * 2 ** (attempts - 1)))

    # -- telling the CRM ------------------------------------------------------------------------
    def _finish(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        """A SUBMITTED entry left by a crash: the server had the message; tell the CRM."""
        retry = list(entry.extra.get("retry_rcpts") or [])
        if retry:
            attempts = max(entry.attempts, email.delivery_attempts) + 1
            if not self._ensure_provider():
                return EmailOutcome(email.email_id, "skipped", "no connection")
            return self._schedule_retry(email, entry, attempts, retry, "temporarily refused", True)
        return self._mark_sent(email, entry)

    def _mark_sent(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        message_id = entry.message_id or compose_message_id(email)
        try:
            self.crm.mark_sent(email.email_id, message_id, email.tracking_token)
        except CrmRejected as exc:  # e.g. deleted in the CRM meanwhile: the mail did leave
            log.warning("%s: email %s sent but not marked: %s", self.name, email.email_id, exc)
        # From CLAIMED/RETRY too: a retry of the last few recipients may end the email as Sent.
        self.store.transition(OUTBOUND, entry.key, _OPEN_STATES, LedgerState.SENT)
        return EmailOutcome(email.email_id, "sent", "", message_id, entry.attempts)

    def _fail(self, email: OutboundEmail, entry: LedgerEntry, reason: str) -> EmailOutcome:
        reason = reason[:1000]
        self.store.transition(
            OUTBOUND,
            entry.key,
            [LedgerState.CLAIMED, LedgerState.SUBMITTED, LedgerState.RETRY],
            LedgerState.FAILED,
            reason=reason,
        )
        return self._mark_failed(email, entry, reason)

    def _mark_failed(self, email: OutboundEmail, entry: LedgerEntry, reason: str) -> EmailOutcome:
        try:
            self.crm.mark_failed(email.email_id, reason)
        except CrmRejected as exc:
            log.warning("%s: email %s failed but not marked: %s", self.name, email.email_id, exc)
        log.info("%s: email %s failed: %s", self.name, email.email_id, reason)
        return EmailOutcome(
            email.email_id, "failed", reason[:300], entry.message_id, entry.attempts
        )

    # -- connection -----------------------------------------------------------------------------
    def _ensure_provider(self) -> bool:
        """Open the connection before the first claim, so a refused login claims nothing."""
        if self.provider is not None:
            return True
        provider = self.ctx.provider(self.cfg)
        if not isinstance(provider, OutgoingProvider):
            raise ConfigError(f"{self.name}: {self.cfg.provider_class} cannot send mail")
        try:
            provider.open()
        except RetryableError as exc:
            raise _StopBatch(_short(exc)) from exc
        self.provider = provider
        return True

    def _give_back(self, key: str) -> None:
        """Release a claim we hold so the email is taken again as soon as someone can send."""
        self.store.transition(
            OUTBOUND, key, [LedgerState.CLAIMED], LedgerState.RETRY, extra={"next_at": 0.0}
        )


class _Prepared:
    """Composes the next email while the server is busy storing the current one.

    The wait for the reply to the final dot is the longest of the SMTP exchange; composing the
    next message there (in this thread) overlaps the two. A message composed for an email
    that turns out not to need sending is simply dropped.
    """

    def __init__(self) -> None:
        self.upcoming: OutboundEmail | None = None
        self.ready: tuple[str, Composed | Exception] | None = None

    def prepare_upcoming(self) -> None:
        email = self.upcoming
        if email is None or (self.ready is not None and self.ready[0] == email.email_id):
            return
        try:
            self.ready = (email.email_id, compose_message(email))
        except Exception as exc:  # reported when that email is taken, like an inline failure
            self.ready = (email.email_id, exc)

    def take(self, email: OutboundEmail) -> Composed:
        ready, self.ready = self.ready, None
        if ready is None or ready[0] != email.email_id:
            return compose_message(email)
        if isinstance(ready[1], Exception):
            raise ready[1]
        return ready[1]


class _CommitHook:
    """Writes "submitted" to the ledger right before the final dot (see the module docstring)."""

    def __init__(self, batch: _Batch, key: str, token: str, message_id: str) -> None:
        self.batch, self.key, self.token, self.message_id = batch, key, token, message_id
        self.done = False

    def __call__(self, result: SubmitResult) -> None:
        store = self.batch.store
        current = store.get_entry(OUTBOUND, self.key)
        if current is None or current.extra.get("claim") != self.token:
            raise LeaseLost(f"claim of {self.key} was taken over; not submitting")
        store.index_message_id(sent_index_key(self.message_id), OUTBOUND, self.key)
        temporary = [r for r, (code, _) in result.refused.items() if code < 500]
        moved = store.transition(
            OUTBOUND,
            self.key,
            [LedgerState.CLAIMED],
            LedgerState.SUBMITTED,
            message_id=self.message_id,
            extra={"instance": self.batch.name, "retry_rcpts": temporary, "delivered": True},
        )
        if moved is None or moved.extra.get("claim") != self.token:
            # Someone else owns the email now: abort before the dot, the server discards it,
            # and hand the entry back in the state its owner expects.
            if moved is not None:
                store.transition(OUTBOUND, self.key, [LedgerState.SUBMITTED], LedgerState.CLAIMED)
            raise LeaseLost(f"claim of {self.key} was taken over; not submitting")
        self.done = True


# -- bounces --------------------------------------------------------------------------------------
def handle_bounce(ctx: Context, bounce: BounceInfo) -> bool:
    """Mark the CRM email a DSN reports on Failed; True when it was an email this router sent.

    Works from any instance: the Message-ID index and the outbound ledger are global, and the
    email is marked through the CRM of the instance that sent it.
    """
    if not bounce.original_message_id:
        return False
    hit = ctx.store.lookup_message_id(sent_index_key(bounce.original_message_id))
    if hit is None:
        return False
    entry = ctx.store.get_entry(*hit)
    sender = str(entry.extra.get("instance", "")) if entry is not None else ""
    if entry is None or not sender:
        return False
    reason = " ".join(f"{bounce.status} {bounce.diagnostic}".split()) or "bounced"
    reason = f"bounced: {reason}"[:1000]
    ctx.store.transition(
        OUTBOUND,
        entry.key,
        [s for s in LedgerState if s is not LedgerState.FAILED],
        LedgerState.FAILED,
        reason=reason,
    )
    ctx.crm(ctx.instance(sender)).mark_failed(email_id_of(entry.key), reason)
    log.info("bounce for %s: email %s marked failed", bounce.original_message_id, entry.key)
    return True


# -- names and helpers ----------------------------------------------------------------------------
def ledger_key(email_id: str) -> str:
    """Ledger key of a CRM email in the :data:`OUTBOUND` namespace."""
    return f"out:{email_id}"


def email_id_of(key: str) -> str:
    return key.removeprefix("out:")


def sent_index_key(message_id: str) -> str:
    """Message-ID index key of an email this router sent."""
    return f"out:{normalize_message_id(message_id)}"


def compose_message_id(email: OutboundEmail) -> str:
    from router.compose import message_id_for

    return message_id_for(email, email.sender.email)


def lease_ttl(ctx: Context) -> float:
    """Lease of a send cycle: MaxThreadExecution (a cycle's time limit)."""
    return ctx.config.system.max_thread_execution / 1000.0


def _envelope_from(
    provider: OutgoingProvider, email: OutboundEmail, cfg: ProviderConfiguration
) -> str:
    configured = getattr(provider.options, "envelope_from", None)
    return str(configured or email.sender.email or cfg.email_address or "")


def _outgoing(ctx: Context, name: str) -> ProviderConfiguration:
    cfg = ctx.instance(name)
    if cfg.direction is not Direction.OUTGOING:
        raise ConfigError(f"{name} is an {cfg.direction.value} instance; use `poll` for it")
    return cfg


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


__all__ = [
    "OUTBOUND",
    "EmailOutcome",
    "SendReport",
    "handle_bounce",
    "ledger_key",
    "send_cycle",
    "sent_index_key",
]
