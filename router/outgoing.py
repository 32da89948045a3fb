"""The outgoing cycle: pending CRM emails -> SMTP -> Sent / Failed, and bounces closing the loop.

:func:`send_cycle` runs one cycle for an outgoing instance::

    lease -> list pending CRM emails -> for each: claim in the ledger -> compose
    -> submit (ledger "submitted" right before the final dot) -> CRM Sent -> ledger "sent"

Every ledger write is a named move of :class:`router.ledger.OutboundLedger` (one namespace for
every outgoing instance, so two instances serving the same users or queues cannot both claim an
email); this module only decides which move an email needs. States::

    (none) -> CLAIMED -> SUBMITTED -> SENT
                      -> RETRY (4xx, connection error; backoff) -> CLAIMED ...
                      -> FAILED (5xx, every recipient refused, attempts exhausted, a bounce)

Why a crash never sends an email twice, and never marks one Sent that did not leave:
"submitted" is written after the server accepted the recipients and received the body,
immediately before the final ``.`` that makes it deliver, and "handed over" right after the dot
is in the socket (the kernel sends it even if the process is killed then). A crash before the
first write leaves CLAIMED - the server got no final dot and dropped the transaction, so the
email is sent again later. A crash after the second leaves SUBMITTED, handed over - the next
cycle only marks the email Sent. A crash in the instant between the two leaves a SUBMITTED
entry nobody can settle for sure: the next cycle neither sends it again nor marks it Sent, but
sets it aside as *ambiguous* (ledger QUARANTINED, shown by ``status`` and ``quarantine list``)
and marks the CRM email Failed with a note saying it may or may not have been sent. A recipient
refused with 4xx is retried alone, with the same Message-ID, so those who accepted never get it
twice.

A provider without a commit point (see :class:`~router.providers.base.OutgoingProvider`) gets
"submitted" recorded before it is called (``ahead``) and "handed over" when it returns: a crash
during the call is that same ambiguous case.

:func:`handle_bounce` is called by the incoming side for a DSN: the Message-ID index finds the
ledger entry that sent the original, and the CRM email is marked Failed with the DSN's status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

from router.config import ProviderConfiguration
from router.context import Context, owners
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
from router.ledger import Claim, OutboundLedger, lease_ttl, take_poll_lease
from router.ledger.outgoing import (
    claimant,
    email_id_of,
    reached_someone,
    refused_at_submission,
    retry_due,
    retry_recipients,
    unconfirmed,
    writer_gone,
)
from router.mail.compose import Composed, compose_message, message_id_for, normalize_message_id
from router.models import BounceInfo, Direction, LedgerEntry, LedgerState, OutboundEmail
from router.providers.base import OutgoingProvider, SubmitResult
from router.report import CycleOutcome, Tally
from router.state.base import Lease

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: The reason (and CRM note) of an email whose provider was cut short mid-submission.
AMBIGUOUS = (
    "may or may not have been sent: the sender stopped while handing it over; check with the"
    " recipients before sending it again"
)


@dataclass(frozen=True, slots=True)
class EmailOutcome:
    """What happened to one CRM email in a cycle (no content: safe to print and log)."""

    email_id: str
    outcome: str
    detail: str = ""
    message_id: str | None = None
    attempts: int = 0


@dataclass
class SendReport(CycleOutcome):
    """Counts and per-email outcomes of one send cycle."""

    EXAMINED: ClassVar[frozenset[str]] = frozenset({"pending"})

    instance: str
    busy: str | None = None
    pending: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    ambiguous: int = 0
    error: str | None = None
    duration: float = 0.0
    outcomes: list[EmailOutcome] = field(default_factory=list)

    def not_run(self) -> str | None:
        """Why the cycle did not run (``busy``: another worker held the lease)."""
        return self.busy or None

    def tally(self) -> Tally:
        """Sent emails count as delivered, and Failed ones as failed."""
        return Tally(delivered=self.sent, failed=self.failed)

    def note(self, outcome: EmailOutcome) -> None:
        """Record an email's outcome and count it (sent / failed / retried / ambiguous, else
        skipped)."""
        self.outcomes.append(outcome)
        counters = {
            "sent": "sent",
            "failed": "failed",
            "retry": "retried",
            "ambiguous": "ambiguous",
        }
        counter = counters.get(outcome.outcome)
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
    lease = take_poll_lease(ctx.store, name, holder or ctx.holder, ctx.config.system)
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
        self.ledger = OutboundLedger(ctx.store)
        self.crm: CrmAdapter = ctx.crm(cfg)
        self.provider: OutgoingProvider | None = None
        self.ttl = lease_ttl(ctx.config.system)
        self.renew_at = time.monotonic() + self.ttl / 3

    def run(self) -> None:
        """Settle every pending email of the instance, up to MaxMessageCount."""
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
        entry = self.ledger.get(email.email_id)
        if entry is None:
            return self._claim_new(email)
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
        if entry.state is LedgerState.QUARANTINED:  # ambiguous: the CRM was not told yet
            return self._mark_failed(email, entry, entry.reason or AMBIGUOUS)
        return EmailOutcome(email.email_id, "skipped", f"ledger state {entry.state.value}")

    def _writer_gone(self, entry: LedgerEntry) -> bool:
        """True when whoever wrote ``entry`` cannot still be working on it (we hold the lease)."""
        return writer_gone(entry, self.name, self.clock(), self.ttl)

    def _claim_new(self, email: OutboundEmail) -> EmailOutcome:
        if not self._ensure_provider():
            return EmailOutcome(email.email_id, "skipped", "no connection")
        claim = self.ledger.claim(email.email_id, self.name, self.lease.holder)
        if claim is None:
            return EmailOutcome(email.email_id, "skipped", "claimed by another worker")
        return self._send(email, claim)

    def _reclaim(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        if not self._writer_gone(entry):
            return EmailOutcome(email.email_id, "skipped", "claimed by another worker")
        return self._take(email, entry)

    def _retry(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        due = retry_due(entry)
        if due > self.clock():
            return EmailOutcome(
                email.email_id,
                "skipped",
                f"retry in {due - self.clock():.0f}s",
                None,
                entry.attempts,
            )
        return self._take(email, entry)

    def _take(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        """Take a CLAIMED (abandoned) or RETRY (due) entry over, in the state it was read."""
        if not self._ensure_provider():
            return EmailOutcome(email.email_id, "skipped", "no connection")
        claim = self.ledger.take_over(entry, self.name, self.lease.holder)
        if claim is None:
            return EmailOutcome(email.email_id, "skipped", "claimed by another worker")
        return self._send(email, claim)

    # -- sending --------------------------------------------------------------------------------
    def _send(self, email: OutboundEmail, claim: Claim) -> EmailOutcome:
        entry = claim.entry
        try:
            composed = self.prepared.take(email)
        except Exception as exc:  # bad data in one CRM email fails that email only, any kind
            return self._fail(email, entry, unsendable_reason(exc))
        rcpts = retry_recipients(entry) or list(composed.recipients)
        attempts = max(entry.attempts, email.delivery_attempts) + 1
        message_id = normalize_message_id(composed.message_id)
        hook = _CommitHook(self.ledger, self.name, claim, message_id)
        try:
            result = self._submit(email, composed, rcpts, hook)
        except MessageRejected as exc:
            return self._after_rejection(email, entry, str(exc))
        except StopError:
            # Release the claim so the email is taken again as soon as someone can send.
            self.ledger.give_back(entry.key)
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
        # The provider gets the parsed email the message was written from, never the CRM's own
        # text: its envelope can then only name the mailboxes the headers name.
        email = composed.email
        sender = _envelope_from(self.provider, email, self.cfg)
        waiting = self.prepared.prepare_upcoming
        return self.provider.submit(email, composed.raw, sender, hook, rcpts, waiting)

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
        return self._mark_sent(email, self.ledger.current(entry))

    def _after_rejection(
        self, email: OutboundEmail, entry: LedgerEntry, reason: str
    ) -> EmailOutcome:
        if reached_someone(entry):  # some recipients had it already: the email did leave
            return self._mark_sent(email, self.ledger.current(entry))
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
        was_delivered = delivered or reached_someone(entry)
        if attempts >= self.cfg.maximum_delivery_attempts:
            if was_delivered:
                return self._mark_sent(email, self.ledger.current(entry))
            return self._fail(email, entry, f"{reason} (after {attempts} attempts)")
        due = self.clock() + self._backoff(attempts)
        self.ledger.retry_later(
            entry.key,
            attempts=attempts,
            reason=reason[:1000],
            next_at=due,
            rcpts=rcpts,
            delivered=was_delivered,
        )
        self.crm.record_attempt(email.email_id, attempts)
        log.info("%s: email %s: retry %d in %.0fs", self.name, email.email_id, attempts, due)
        return EmailOutcome(email.email_id, "retry", reason[:300], None, attempts)

    def _backoff(self, attempts: int) -> float:
        assert self.provider is not None
        return self.provider.retry_backoff.delay(attempts)

    # -- telling the CRM ------------------------------------------------------------------------
    def _finish(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        """A SUBMITTED entry left by a crash: ambiguous unless handed over, else tell the CRM."""
        if unconfirmed(entry):
            return self._ambiguous(email, entry)
        retry = refused_at_submission(entry)
        if retry:
            attempts = max(entry.attempts, email.delivery_attempts) + 1
            if not self._ensure_provider():
                return EmailOutcome(email.email_id, "skipped", "no connection")
            return self._schedule_retry(email, entry, attempts, retry, "temporarily refused", True)
        return self._mark_sent(email, entry)

    def _ambiguous(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        """Set aside an email whose provider may or may not have sent it; never resend it."""
        if not self.ledger.ambiguous(entry.key, AMBIGUOUS):
            return EmailOutcome(email.email_id, "skipped", "settled by another worker")
        log.warning("%s: email %s may or may not have been sent", self.name, email.email_id)
        outcome = self._mark_failed(email, entry, AMBIGUOUS)
        return replace(outcome, outcome="ambiguous")

    def _mark_sent(self, email: OutboundEmail, entry: LedgerEntry) -> EmailOutcome:
        message_id = entry.message_id or compose_message_id(email)
        try:
            self.crm.mark_sent(email.email_id, message_id, email.tracking_token)
        except CrmRejected as exc:  # e.g. deleted in the CRM meanwhile: the mail did leave
            log.warning("%s: email %s sent but not marked: %s", self.name, email.email_id, exc)
        self.ledger.sent(entry.key)
        return EmailOutcome(email.email_id, "sent", "", message_id, entry.attempts)

    def _fail(self, email: OutboundEmail, entry: LedgerEntry, reason: str) -> EmailOutcome:
        reason = reason[:1000]
        self.ledger.failed(entry.key, reason)
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
        """Compose the next email now (called while the server stores the current one)."""
        email = self.upcoming
        if email is None or (self.ready is not None and self.ready[0] == email.email_id):
            return
        try:
            self.ready = (email.email_id, compose_message(email))
        except Exception as exc:  # reported when that email is taken, like an inline failure
            self.ready = (email.email_id, exc)

    def take(self, email: OutboundEmail) -> Composed:
        """The composed ``email``: prepared ahead if it was the one expected, else now."""
        ready, self.ready = self.ready, None
        if ready is None or ready[0] != email.email_id:
            return compose_message(email)
        if isinstance(ready[1], Exception):
            raise ready[1]
        return ready[1]


class _CommitHook:
    """Writes "submitted" to the ledger at the provider's commit point (SMTP: right before the
    final dot), or ``ahead`` of a provider without one, and "handed over" once the message left
    the process (see the module docstring)."""

    def __init__(
        self, ledger: OutboundLedger, instance: str, claim: Claim, message_id: str
    ) -> None:
        self.ledger, self.instance, self.claim = ledger, instance, claim
        self.message_id = message_id
        self.done = False

    def __call__(self, result: SubmitResult, *, ahead: bool = False) -> None:
        temporary = [r for r, (code, _) in result.refused.items() if code < 500]
        ledger, claim = self.ledger, self.claim
        if not ledger.submitted(claim, self.instance, self.message_id, temporary, ahead=ahead):
            # Someone else owns the email now: abort before the dot, the server discards it.
            raise LeaseLost(f"claim of {self.claim.key} was taken over; not submitting")
        self.done = True

    def handed_over(self) -> None:
        self.ledger.handed_over(self.claim)


# -- bounces --------------------------------------------------------------------------------------
def handle_bounce(ctx: Context, bounce: BounceInfo) -> bool:
    """Mark the CRM email a DSN reports on Failed; True when it was an email this router sent.

    Works from any instance: the Message-ID index and the outbound ledger are global, and the
    email is marked through the CRM of the instance that sent it.
    """
    if not bounce.original_message_id:
        return False
    ledger = OutboundLedger(ctx.store)
    entry = ledger.find_sent(normalize_message_id(bounce.original_message_id))
    sender = claimant(entry) if entry is not None else ""
    if entry is None or not sender:
        return False
    reason = " ".join(f"{bounce.status} {bounce.diagnostic}".split()) or "bounced"
    reason = f"bounced: {reason}"[:1000]
    ledger.bounced(entry.key, reason)
    ctx.crm(ctx.instance(sender)).mark_failed(email_id_of(entry), reason)
    log.info("bounce for %s: email %s marked failed", bounce.original_message_id, entry.key)
    return True


# -- names and helpers ----------------------------------------------------------------------------
def compose_message_id(email: OutboundEmail) -> str:
    """The Message-ID ``email`` is (or was) sent with, for marking it Sent in the CRM."""
    return message_id_for(email, email.sender.email)


def unsendable_reason(exc: Exception) -> str:
    """The reason an email that could not be composed is marked Failed with.

    Router errors (a refused address, an over-long header) say what is wrong and what to do;
    anything else is named by its type only, as its text might quote the message body.
    """
    if isinstance(exc, RouterError):
        return f"cannot send this email: {exc}"
    return (
        f"cannot compose the message ({type(exc).__name__}); check its subject, addresses and"
        " attachments in the CRM, and report it if they look right"
    )


def _envelope_from(
    provider: OutgoingProvider, email: OutboundEmail, cfg: ProviderConfiguration
) -> str:
    return provider.envelope_from or email.sender.email or cfg.email_address or ""


def _outgoing(ctx: Context, name: str) -> ProviderConfiguration:
    cfg = ctx.instance(name)
    if cfg.direction is not Direction.OUTGOING:
        raise ConfigError(f"{name} is an {cfg.direction.value} instance; use `poll` for it")
    return cfg


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


__all__ = [
    "EmailOutcome",
    "SendReport",
    "handle_bounce",
    "send_cycle",
]
