"""The incoming cycle: mailbox -> ledger (staged) -> CRM activity -> post-processing.

:func:`poll_instance` runs one cycle for an incoming instance::

    lease -> post-process what earlier cycles delivered -> list refs after the cursor
    -> fetch + stage each (ledger entry + raw bytes) -> move the cursor (lease-fenced)
    -> deliver_staged (unless a separate CRM task does it) -> post-process what was delivered

:func:`deliver_staged` is the CRM step: it parses staged messages, applies the classification
policy, hands activities to the CRM adapter in batches and records the outcome in the ledger.

Why this order keeps the invariants (DESIGN.md):

* The cursor only moves over refs whose ledger entry exists (staged, or quarantined by the size
  guard); on a failure mid-batch it moves over the staged prefix only.
* Nothing changes on the mail server before the ledger says DELIVERED (or SKIPPED); the entry
  then becomes DONE, after the provider's ``commit`` (POP3 deletes happen at QUIT).
* Delivery holds a second lease (``<instance>#deliver``) so a redelivered CRM task and a poll
  cannot deliver the same staged entry at once; the ledger's compare-and-set and the CRM's own
  Message-ID check make a repeated delivery a no-op.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from router.config import ProviderConfiguration
from router.errors import ConfigError, CrmError, MessageUnusable, RouterError
from router.models import (
    Activity,
    Classification,
    DeliveryResult,
    Direction,
    InboundMessage,
    LedgerEntry,
    LedgerState,
    MessageRef,
)
from router.providers.base import IncomingProvider, InstanceState, JsonDict
from router.service import Context, delivery_target
from router.state.base import Lease

log = logging.getLogger(__name__)

#: Ledger states whose refs are due for post-processing on the mail server.
HANDLED = (LedgerState.DELIVERED, LedgerState.SKIPPED)
#: Activities handed to the CRM adapter per call (the adapter batches further).
DELIVERY_CHUNK = 50
#: A delivery chunk is handed over early once its activities hold this many bytes: with ten
#: threads each building a $batch body (activities, base64 JSON, the body itself: ~5x this),
#: peak RSS stays under 300 MB even when every chunk meets 1-5 MB attachments.
DELIVERY_BYTES = 4_000_000
#: Fetched messages staged per store commit, and the bytes they may hold in memory meanwhile.
STAGE_GROUP = 50
STAGE_BYTES = 8_000_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one message (no content, safe to print and log)."""

    key: str
    outcome: str
    detail: str = ""


@dataclass
class CycleReport:
    """Counts and per-message outcomes of one poll or delivery run."""

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

    def note(self, key: str, outcome: str, detail: str = "") -> None:
        self.outcomes.append(Outcome(key, outcome, detail))


# -- poll -----------------------------------------------------------------------------------------
def poll_instance(
    ctx: Context, name: str, *, deliver: bool = True, holder: str | None = None
) -> CycleReport:
    """Run one poll cycle of incoming instance ``name``; see the module docstring.

    Returns a report with ``skipped`` set when another worker holds the lease. Router errors
    propagate after the lease is released and the error is recorded in the counters.
    """
    cfg = _incoming(ctx, name)
    report, started = CycleReport(name), time.monotonic()
    lease = ctx.store.acquire_lease(name, holder or ctx.holder, _lease_ttl(ctx))
    if lease is None:
        info = ctx.store.get_lease(name)
        report.skipped = f"lease held by {info.holder if info else 'another worker'}"
        return report
    try:
        _run_poll(ctx, cfg, lease, report, deliver)
    except RouterError as exc:
        report.error = str(exc)
        ctx.store.record_poll(name, processed=report.delivered, error=_short(exc))
        raise
    finally:
        ctx.store.release_lease(lease)
        report.duration = time.monotonic() - started
    ctx.store.record_poll(name, processed=report.delivered)
    return report


def _run_poll(
    ctx: Context, cfg: ProviderConfiguration, lease: Lease, report: CycleReport, deliver: bool
) -> None:
    provider = ctx.provider(cfg)
    assert isinstance(provider, IncomingProvider)
    try:
        provider.open()
        post_process(ctx, cfg, provider, report)
        state = InstanceState(
            ctx.store.get_cursor(cfg.name), ctx.store.get_provider_state(cfg.name)
        )
        loaded = copy.deepcopy(state.data)  # to save it only if the provider changed it
        refs = provider.list_new(state, cfg.max_message_count)
        report.listed = len(refs)
        _stage_all(ctx, cfg, provider, (state, loaded), refs, lease, report)
        if deliver:
            _merge(report, deliver_staged(ctx, cfg.name))
            post_process(ctx, cfg, provider, report)
    finally:
        provider.close()


def _stage_all(
    ctx: Context,
    cfg: ProviderConfiguration,
    provider: IncomingProvider,
    states: tuple[InstanceState, JsonDict],
    refs: Sequence[MessageRef],
    lease: Lease,
    report: CycleReport,
) -> None:
    """Fetch and stage ``refs``; the cursor moves over exactly the refs now in the ledger."""
    done: list[MessageRef] = []
    group: list[InboundMessage] = []
    try:
        to_fetch = [r for r in refs if not _already_held(ctx, cfg, r, report, done)]
        wanted = {r.key for r in to_fetch}
        for message in provider.fetch_many(to_fetch):
            if message.ref.key in wanted:
                group.append(message)
            else:
                done.append(message.ref)
            if len(group) >= STAGE_GROUP or sum(len(m.raw) for m in group) >= STAGE_BYTES:
                _stage_group(ctx, cfg, group, report, done)
                group = []
    finally:
        try:  # what arrived before a failure (a dropped connection) is kept
            _stage_group(ctx, cfg, group, report, done)
        finally:
            _save_cursor(ctx, provider, states, _prefix(refs, done), lease)


def _stage_group(
    ctx: Context,
    cfg: ProviderConfiguration,
    group: Sequence[InboundMessage],
    report: CycleReport,
    done: list[MessageRef],
) -> None:
    """Stage fetched messages with one store commit (SQLite: one fsync, not one each)."""
    if not group:
        return
    with ctx.store.batch():
        staged = [_stage_one(ctx, cfg, m.ref, m.raw) for m in group]
    for message, new in zip(group, staged, strict=True):
        if new:
            report.staged += 1
            report.note(message.ref.key, "staged")
        done.append(message.ref)


def _already_held(
    ctx: Context,
    cfg: ProviderConfiguration,
    ref: MessageRef,
    report: CycleReport,
    done: list[MessageRef],
) -> bool:
    """True when ``ref`` needs no download: known to the ledger, or refused by the size guard."""
    if ctx.store.get_entry(cfg.name, ref.key) is not None:
        report.known += 1
        done.append(ref)
        return True
    if ref.size is not None and ref.size > cfg.max_message_size:
        reason = f"message is {ref.size} bytes, above MaxMessageSize {cfg.max_message_size}"
        ctx.store.create_entry(cfg.name, ref.key, LedgerState.QUARANTINED, reason=reason)
        report.quarantined += 1
        report.note(ref.key, "quarantined", reason)
        done.append(ref)
        return True
    return False


def _stage_one(ctx: Context, cfg: ProviderConfiguration, ref: MessageRef, raw: bytes) -> bool:
    return ctx.store.stage(cfg.name, ref.key, raw)


def _prefix(refs: Sequence[MessageRef], done: Sequence[MessageRef]) -> list[MessageRef]:
    """The longest prefix of ``refs`` (listing order) whose every ref is in ``done``."""
    held = {r.key for r in done}
    prefix: list[MessageRef] = []
    for ref in refs:
        if ref.key not in held:
            break
        prefix.append(ref)
    return prefix


def _save_cursor(
    ctx: Context,
    provider: IncomingProvider,
    states: tuple[InstanceState, JsonDict],
    refs: Sequence[MessageRef],
    lease: Lease,
) -> None:
    """Save the cursor and the provider state if they changed (``states``: now, as loaded)."""
    state, loaded = states
    cursor = provider.advance(state, refs)
    if cursor != state.cursor:
        ctx.store.set_cursor(lease, cursor)
    if state.data != loaded:  # compared with what was loaded: no read back per poll
        ctx.store.set_provider_state(lease, state.data)


# -- post-processing ------------------------------------------------------------------------------
def post_process(
    ctx: Context, cfg: ProviderConfiguration, provider: IncomingProvider, report: CycleReport
) -> None:
    """Apply AfterProcessing to every handled ref, then mark those entries DONE."""
    entries = ctx.store.list_entries(cfg.name, HANDLED)
    if not entries:
        return
    refs = [MessageRef(e.key) for e in entries]
    provider.post_process(refs, cfg.after_processing)
    with provider.wrap("commit post-processing"):
        provider.commit()
    with ctx.store.batch():
        for entry in entries:
            if ctx.store.transition(cfg.name, entry.key, HANDLED, LedgerState.DONE):
                report.post_processed += 1


# -- delivery to the CRM --------------------------------------------------------------------------
def deliver_staged(
    ctx: Context,
    name: str,
    keys: Iterable[str] | None = None,
    *,
    holder: str | None = None,
) -> CycleReport:
    """Turn staged messages of ``name`` into CRM activities (all, or only ``keys``).

    Per-message problems quarantine that message; a CRM outage (CrmUnavailable) stops the run,
    leaves the rest staged and propagates so the caller retries later.
    """
    cfg = _incoming(ctx, name)
    report, started = CycleReport(name), time.monotonic()
    lease = ctx.store.acquire_lease(f"{name}#deliver", holder or ctx.holder, _lease_ttl(ctx))
    if lease is None:
        report.skipped = "another worker is delivering this instance"
        return report
    try:
        entries = ctx.store.list_entries(name, [LedgerState.STAGED])
        wanted = set(keys) if keys is not None else None
        todo = [e for e in entries if wanted is None or e.key in wanted]
        for chunk in _chunks(todo, DELIVERY_CHUNK):
            _deliver_chunk(ctx, cfg, chunk, report)
    finally:
        ctx.store.release_lease(lease)
        report.duration = time.monotonic() - started
    return report


def _deliver_chunk(
    ctx: Context, cfg: ProviderConfiguration, entries: Sequence[LedgerEntry], report: CycleReport
) -> None:
    ready: list[tuple[LedgerEntry, Activity]] = []
    held = 0
    for entry in entries:
        activity = _prepare(ctx, cfg, entry, report)
        if activity is not None:
            ready.append((entry, activity))
            held += _weight(activity)
        if held >= DELIVERY_BYTES:  # big attachments: hand over early, memory stays bounded
            _hand_over(ctx, cfg, ready, report)
            ready, held = [], 0
    _hand_over(ctx, cfg, ready, report)


def _weight(activity: Activity) -> int:
    """Bytes an activity holds (body and decoded attachments); its JSON is about 1.4x that."""
    return len(activity.body_html) + sum(len(a.content) for a in activity.attachments)


def _hand_over(
    ctx: Context,
    cfg: ProviderConfiguration,
    ready: Sequence[tuple[LedgerEntry, Activity]],
    report: CycleReport,
) -> None:
    """Deliver prepared activities in one adapter call, then settle the ledger in one batch."""
    if not ready:
        return
    results = _deliver_to_crm(ctx, cfg, ready)
    with ctx.store.batch():  # one commit for the chunk's ledger updates, not three per message
        for (entry, activity), result in zip(ready, results, strict=True):
            if isinstance(result, CrmError):
                reason = f"CRM refused the activity: {result}"
                _quarantine(ctx, cfg.name, entry.key, reason, report)
            else:
                _mark_delivered(
                    ctx, cfg.name, entry.key, activity, result.activity_id, result.duplicate, report
                )


def _deliver_to_crm(
    ctx: Context, cfg: ProviderConfiguration, ready: Sequence[tuple[LedgerEntry, Activity]]
) -> list[DeliveryResult | CrmError]:
    """Deliver in ``ready``'s order: first attempts batched, repeated ones duplicate-checked.

    Each entry's attempt is counted in the ledger before the CRM sees it, so after a crash
    mid-delivery the next run knows which messages the CRM may already hold and asks it first
    (``deliver_checked``: CheckIncomingEmail) instead of a batch path that may not check.
    """
    crm, target = ctx.crm(cfg), delivery_target(cfg)
    fresh = [i for i, (entry, _) in enumerate(ready) if entry.attempts == 0]
    again = [i for i, (entry, _) in enumerate(ready) if entry.attempts > 0]
    with ctx.store.batch():
        for entry, _ in ready:
            ctx.store.transition(
                cfg.name,
                entry.key,
                [LedgerState.STAGED],
                LedgerState.STAGED,
                attempts=entry.attempts + 1,
            )
    results: dict[int, DeliveryResult | CrmError] = {}
    if fresh:
        batch = crm.deliver_many([(ready[i][1], target) for i in fresh])
        results.update(zip(fresh, batch, strict=True))
    if again:
        checked = crm.deliver_checked([(ready[i][1], target) for i in again])
        results.update(zip(again, checked, strict=True))
    return [results[i] for i in range(len(ready))]


def _prepare(
    ctx: Context, cfg: ProviderConfiguration, entry: LedgerEntry, report: CycleReport
) -> Activity | None:
    """Parse and classify a staged entry; None when it was settled here (no CRM call)."""
    raw = ctx.store.get_raw(cfg.name, entry.key)
    if raw is None:
        _quarantine(ctx, cfg.name, entry.key, "staged bytes are missing", report)
        return None
    try:
        activity = parse(raw, cfg, received_on=datetime.fromtimestamp(entry.updated_at, UTC))
    except MessageUnusable as exc:
        _quarantine(ctx, cfg.name, entry.key, str(exc), report)
        return None
    if ctx.store.lookup_message_id(_seen_key(cfg.name, activity.message_id)) is not None:
        _mark_delivered(ctx, cfg.name, entry.key, activity, None, True, report)
        return None
    return _apply_policy(ctx, cfg, entry, activity, report)


def parse(
    raw: bytes, cfg: ProviderConfiguration, *, received_on: datetime | None = None
) -> Activity:
    """Parse raw bytes with the instance's size limit (MessageUnusable when hopeless).

    ``received_on`` (the staging time) stands in for a missing or unusable Date header.
    """
    from router.mime import parse_message

    return parse_message(raw, max_size=cfg.max_message_size, received_on=received_on)


def _apply_policy(
    ctx: Context,
    cfg: ProviderConfiguration,
    entry: LedgerEntry,
    activity: Activity,
    report: CycleReport,
) -> Activity | None:
    kind = activity.classification
    if kind is Classification.BOUNCE and activity.bounce is not None:
        _close_bounce_loop(ctx, activity)
    policy = policy_for(cfg, kind)
    if policy == "deliver":
        return activity
    if policy == "quarantine":
        _quarantine(ctx, cfg.name, entry.key, f"classified as {kind.value}", report)
        return None
    ctx.store.transition(
        cfg.name,
        entry.key,
        [LedgerState.STAGED],
        LedgerState.SKIPPED,
        message_id=activity.message_id,
        reason=f"classified as {kind.value}",
    )
    ctx.store.drop_raw(cfg.name, entry.key)
    report.filtered += 1
    report.note(entry.key, "skipped", kind.value)
    return None


def policy_for(cfg: ProviderConfiguration, kind: Classification) -> str:
    """The instance's policy (deliver / skip / quarantine) for a kind of message."""
    policies = {
        Classification.AUTO_REPLY: cfg.auto_reply_policy,
        Classification.BOUNCE: cfg.bounce_policy,
        Classification.READ_RECEIPT: cfg.read_receipt_policy,
        Classification.FEEDBACK_REPORT: cfg.feedback_report_policy,
    }
    return str(policies.get(kind, "deliver"))


def _close_bounce_loop(ctx: Context, activity: Activity) -> None:
    """A bounce of an email this router sent marks that CRM email Failed (router.outgoing)."""
    from router.outgoing import handle_bounce

    assert activity.bounce is not None
    try:
        handle_bounce(ctx, activity.bounce)
    except RouterError as exc:  # the bounce itself is still handled by the policy
        log.warning("bounce for %s not applied: %s", activity.bounce.original_message_id, exc)


def _mark_delivered(
    ctx: Context,
    name: str,
    key: str,
    activity: Activity,
    activity_id: str | None,
    duplicate: bool,
    report: CycleReport,
) -> None:
    moved = ctx.store.transition(
        name,
        key,
        [LedgerState.STAGED],
        LedgerState.DELIVERED,
        message_id=activity.message_id,
        activity_id=activity_id,
        extra={"duplicate": True} if duplicate else None,
    )
    ctx.store.index_message_id(_seen_key(name, activity.message_id), name, key)
    ctx.store.drop_raw(name, key)
    if moved is None:
        return
    if duplicate:
        report.duplicates += 1
        report.note(key, "duplicate", "the CRM already has this Message-ID")
    else:
        report.delivered += 1
        report.note(key, "delivered", activity_id or "")


def _quarantine(ctx: Context, name: str, key: str, reason: str, report: CycleReport) -> None:
    if ctx.store.transition(
        name, key, [LedgerState.STAGED], LedgerState.QUARANTINED, reason=reason
    ):
        report.quarantined += 1
        report.note(key, "quarantined", reason)
        log.warning("%s: message %s quarantined: %s", name, key, reason)


def _seen_key(instance: str, message_id: str) -> str:
    """Message-ID index key of what ``instance`` delivered (UIDVALIDITY resets rely on it)."""
    return f"in:{instance}:{message_id}"


# -- helpers --------------------------------------------------------------------------------------
def _incoming(ctx: Context, name: str) -> ProviderConfiguration:
    cfg = ctx.instance(name)
    if cfg.direction is not Direction.INCOMING:
        raise ConfigError(f"{name} is an {cfg.direction.value} instance; use `send` for it")
    return cfg


def _lease_ttl(ctx: Context) -> float:
    return ctx.config.system.max_thread_execution / 1000.0


def _chunks(items: Sequence[LedgerEntry], size: int) -> Iterable[Sequence[LedgerEntry]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _merge(into: CycleReport, other: CycleReport) -> None:
    for attr in ("delivered", "duplicates", "filtered", "quarantined"):
        setattr(into, attr, getattr(into, attr) + getattr(other, attr))
    into.outcomes.extend(other.outcomes)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


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
    final = {o.key: o for o in report.outcomes}  # a message's last outcome (staged -> delivered)
    lines += [
        f"  {o.key}: {o.outcome}" + (f" ({o.detail})" if o.detail else "") for o in final.values()
    ]
    if report.error:
        lines.append(f"error: {report.error}")
    return "\n".join(lines)
