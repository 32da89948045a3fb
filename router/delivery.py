"""Delivery to the CRM: staged messages become CRM activities, in chunks and batches.

Use :func:`deliver_staged` (through :mod:`router.service`) to deliver an incoming instance's
staged messages; the poll cycle (:mod:`router.incoming`) calls it after staging unless a
separate CRM task does it, and a replay (:mod:`router.quarantine`) calls it for one message.

Per staged message (:func:`_prepare`): parse it, skip it if the ledger's Message-ID index says
the CRM already has it, and apply its class's policy (:mod:`router.policies`). Per chunk
(:func:`_hand_over`): ask the CRM for the receiving owners' tracking filters
(``CrmAdapter.screen``: a message an owner does not want is recorded as filtered), hand the rest
to the CRM adapter in one call and record each outcome in the ledger with one store commit.

In a forward mailbox (``<ForwardMailbox>``) each staged message is a carrier: its originals are
delivered, each for its own owner (:mod:`router.forwarding`), and the carrier is settled once
every original is.

Why this keeps the invariants (DESIGN.md): delivery holds its own lease
(:func:`router.ledger.take_delivery_lease`) so a redelivered CRM task and a poll cannot deliver
the same staged entry at once; each entry's attempt is counted before the CRM sees it, and the
ledger's compare-and-set and the CRM's own Message-ID check make a repeated delivery a no-op.
A failure that is one message's fault is counted against it (:mod:`router.failures`), never
against its neighbours; a CRM outage stops the run and leaves the rest staged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from router.config import ProviderConfiguration
from router.context import Context, delivery_target
from router.crm.base import ACCEPTED, CrmAdapter, DeliveryTarget, Verdict
from router.errors import ConfigError, CrmError, MessageUnusable
from router.failures import CONNECTION_ERRORS, count_failure, quarantine_message
from router.forwarding import Carrier, OwnerDirectory, pieces, plan, tally
from router.ledger import InboundLedger, take_delivery_lease
from router.mail.parse import parse_message
from router.models import Activity, DeliveryResult, Direction, LedgerEntry
from router.policies import apply_policy, policy_for
from router.report import CycleReport

log = logging.getLogger(__name__)

#: Activities handed to the CRM adapter per call (the adapter batches further). A chunk waits
#: for several CRM round trips (tracking filters, the batches), so one chunk is as large as the
#: Dataverse adapter's default fan-out (16 batches of 10 in flight) and a chunk fills it; it is
#: also the size at which router.pipeline starts delivering beside the fetch.
DELIVERY_CHUNK = 160
#: A delivery chunk is handed over early once its activities hold this many bytes: with ten
#: threads each building a $batch body (activities, base64 JSON, the body itself: ~5x this),
#: peak RSS stays under 300 MB even when every chunk meets 1-5 MB attachments.
DELIVERY_BYTES = 4_000_000


def incoming_instance(ctx: Context, name: str) -> ProviderConfiguration:
    """The configuration of incoming instance ``name`` (ConfigError for an outgoing one)."""
    cfg = ctx.instance(name)
    if cfg.direction is not Direction.INCOMING:
        raise ConfigError(f"{name} is an {cfg.direction.value} instance; use `send` for it")
    return cfg


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
    cfg = incoming_instance(ctx, name)
    report, started = CycleReport(name), time.monotonic()
    lease = take_delivery_lease(ctx.store, name, holder or ctx.holder, ctx.config.system)
    if lease is None:
        report.skipped = "another worker is delivering this instance"
        return report
    try:
        entries = InboundLedger(ctx.store, name).staged()
        wanted = set(keys) if keys is not None else None
        todo = [e for e in entries if wanted is None or e.key in wanted]
        owners = OwnerDirectory.of(ctx.config, cfg.deployment) if cfg.forward_mailbox else None
        for chunk in _chunks(todo, DELIVERY_CHUNK):
            _deliver_chunk(ctx, cfg, chunk, report, owners)
    finally:
        ctx.store.release_lease(lease)
        report.duration = time.monotonic() - started
    return report


@dataclass(frozen=True, slots=True)
class Raised:
    """What delivering one activity raised (kept to count it against that message)."""

    exc: Exception


@dataclass(slots=True)
class Ready:
    """A staged entry and what it delivers: one activity, or a forward carrier's originals."""

    entry: LedgerEntry
    message_id: str  # the entry's own (a carrier's, or the message's)
    items: list[tuple[Activity, DeliveryTarget]] = field(default_factory=list)
    carrier: bool = False
    #: originals of a carrier that an earlier run delivered (found in the ledger's index)
    earlier: int = 0


#: What became of one activity of a chunk: delivered, refused, raised, or filtered.
Result: TypeAlias = "DeliveryResult | CrmError | Raised | Verdict"


def _deliver_chunk(
    ctx: Context,
    cfg: ProviderConfiguration,
    entries: Sequence[LedgerEntry],
    report: CycleReport,
    owners: OwnerDirectory | None,
) -> None:
    ready: list[Ready] = []
    held = 0
    for entry in entries:
        prepared = _prepare(ctx, cfg, entry, report, owners)
        if prepared is not None:
            ready.append(prepared)
            held += sum(_weight(activity) for activity, _ in prepared.items)
        if held >= DELIVERY_BYTES:  # big attachments: hand over early, memory stays bounded
            _hand_over(ctx, cfg, ready, report)
            ready, held = [], 0
    _hand_over(ctx, cfg, ready, report)


def _weight(activity: Activity) -> int:
    """Bytes an activity holds (body and decoded attachments); its JSON is about 1.4x that."""
    return len(activity.body_html) + sum(len(a.content) for a in activity.attachments)


def _hand_over(
    ctx: Context, cfg: ProviderConfiguration, ready: Sequence[Ready], report: CycleReport
) -> None:
    """Screen (tracking filters), deliver in one adapter call, then settle the ledger at once."""
    if not ready:
        return
    flat = [(r.entry, activity, target) for r in ready for activity, target in r.items]
    verdicts = _screen(ctx, cfg, [(activity, target) for _, activity, target in flat])
    wanted = [item for item, verdict in zip(flat, verdicts, strict=True) if verdict.wanted]
    results = iter(_deliver_unique(ctx, cfg, wanted) if wanted else [])
    outcomes: list[Result] = [next(results) if v.wanted else v for v in verdicts]
    with ctx.store.batch():  # one commit for the chunk's ledger updates, not three per message
        for r in ready:
            mine, outcomes = outcomes[: len(r.items)], outcomes[len(r.items) :]
            if r.carrier:
                _settle_carrier(ctx, cfg, r, mine, report)
            else:
                _settle(ctx, cfg, r, mine[0], report)


def _screen(
    ctx: Context, cfg: ProviderConfiguration, items: Sequence[tuple[Activity, DeliveryTarget]]
) -> list[Verdict]:
    """The owners' tracking filters; a check the CRM refuses lets the message through (it is
    delivered, or refused and quarantined, by the delivery itself)."""
    try:
        return ctx.crm(cfg).screen(items)
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:  # not an outage: never let a filter check block the mailbox
        log.warning("%s: tracking filter check failed, delivering unfiltered: %s", cfg.name, exc)
        return [ACCEPTED] * len(items)


def _settle(
    ctx: Context, cfg: ProviderConfiguration, r: Ready, outcome: Result, report: CycleReport
) -> None:
    """Record what happened to a direct message."""
    entry, activity = r.entry, r.items[0][0]
    if isinstance(outcome, Verdict):
        _filter(ctx, cfg.name, entry.key, activity.message_id, outcome, report)
    elif isinstance(outcome, Raised):
        count_failure(ctx, cfg, entry, entry.attempts + 1, ("deliver", outcome.exc), report)
    elif isinstance(outcome, CrmError):
        quarantine_message(ctx, cfg.name, entry.key, f"CRM refused the activity: {outcome}", report)
    else:
        _mark_delivered(
            ctx, cfg.name, entry.key, activity, outcome.activity_id, outcome.duplicate, report
        )


def _filter(
    ctx: Context, name: str, key: str, message_id: str, verdict: Verdict, report: CycleReport
) -> None:
    InboundLedger(ctx.store, name).filtered(key, message_id, _filter_reason(verdict))
    report.count_filtered(verdict)
    report.note(key, "filtered", verdict.reason)


def _filter_reason(verdict: Verdict) -> str:
    return f"tracking filter: ReasonCode {verdict.reason_code} ({verdict.reason})"


def _deliver_unique(
    ctx: Context,
    cfg: ProviderConfiguration,
    items: Sequence[tuple[LedgerEntry, Activity, DeliveryTarget]],
) -> list[DeliveryResult | CrmError | Raised]:
    """Deliver ``items``, each Message-ID once (an original two carriers forwarded)."""
    first: dict[str, int] = {}
    unique = [first.setdefault(a.message_id, i) == i for i, (_, a, _) in enumerate(items)]
    todo = [item for item, is_first in zip(items, unique, strict=True) if is_first]
    delivered = iter(_deliver_to_crm(ctx, cfg, todo))
    results: list[DeliveryResult | CrmError | Raised] = []
    for (_, activity, _), is_first in zip(items, unique, strict=True):
        earlier = next(delivered) if is_first else results[first[activity.message_id]]
        if not is_first and isinstance(earlier, DeliveryResult):
            earlier = DeliveryResult(earlier.activity_id, duplicate=True)
        results.append(earlier)
    return results


def _deliver_to_crm(
    ctx: Context,
    cfg: ProviderConfiguration,
    ready: Sequence[tuple[LedgerEntry, Activity, DeliveryTarget]],
) -> Sequence[DeliveryResult | CrmError | Raised]:
    """Deliver in ``ready``'s order: first attempts batched, repeated ones duplicate-checked.

    Each entry's attempt is counted in the ledger before the CRM sees it, so after a crash
    mid-delivery the next run knows which messages the CRM may already hold and asks it first
    (``deliver_checked``: CheckIncomingEmail) instead of a batch path that may not check.
    When the adapter raises something that is not an outage, each activity is delivered on
    its own (duplicate-checked) to find the one at fault; the others go through.
    """
    crm = ctx.crm(cfg)
    entries = {entry.key: entry for entry, _, _ in ready}  # a carrier's attempt counts once
    with ctx.store.batch():
        InboundLedger(ctx.store, cfg.name).count_attempts(entries.values())
    try:
        return _deliver_batch(crm, ready)
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:  # a bug or a refusal about one record, raised for the batch
        if len(ready) == 1:
            return [Raised(exc)]
        return [_deliver_one(crm, target, activity) for _, activity, target in ready]


def _deliver_one(
    crm: CrmAdapter, target: DeliveryTarget, activity: Activity
) -> DeliveryResult | CrmError | Raised:
    """Deliver one activity (duplicate-checked); what it raises, other than an outage, is kept."""
    try:
        return crm.deliver_checked([(activity, target)])[0]
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:  # isolated to this message: counted by the caller
        return Raised(exc)


def _deliver_batch(
    crm: CrmAdapter, ready: Sequence[tuple[LedgerEntry, Activity, DeliveryTarget]]
) -> list[DeliveryResult | CrmError]:
    fresh = [i for i, (entry, _, _) in enumerate(ready) if entry.attempts == 0]
    again = [i for i, (entry, _, _) in enumerate(ready) if entry.attempts > 0]
    results: dict[int, DeliveryResult | CrmError] = {}
    if fresh:
        batch = crm.deliver_many([(ready[i][1], ready[i][2]) for i in fresh])
        results.update(zip(fresh, batch, strict=True))
    if again:
        checked = crm.deliver_checked([(ready[i][1], ready[i][2]) for i in again])
        results.update(zip(again, checked, strict=True))
    return [results[i] for i in range(len(ready))]


def _prepare(
    ctx: Context,
    cfg: ProviderConfiguration,
    entry: LedgerEntry,
    report: CycleReport,
    owners: OwnerDirectory | None,
) -> Ready | None:
    """Parse and classify a staged entry; None when it was settled here (no CRM call).

    An exception other than MessageUnusable (a parser or classifier bug met by this message)
    is counted against the entry, which stays staged until MaxMessageAttempts.
    """
    try:
        return _parse_entry(ctx, cfg, entry, report, owners)
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:  # one message's fault: the others of the chunk go on
        ledger = InboundLedger(ctx.store, cfg.name)
        count_failure(ctx, cfg, entry, ledger.count_failure(entry), ("parse", exc), report)
        return None


def _parse_entry(
    ctx: Context,
    cfg: ProviderConfiguration,
    entry: LedgerEntry,
    report: CycleReport,
    owners: OwnerDirectory | None,
) -> Ready | None:
    raw = ctx.store.get_raw(cfg.name, entry.key)
    if raw is None:
        quarantine_message(ctx, cfg.name, entry.key, "staged bytes are missing", report)
        return None
    received = datetime.fromtimestamp(entry.updated_at, UTC)
    try:
        if owners is not None:  # a forward mailbox: deliver what the carrier holds
            return _prepare_carrier(ctx, cfg, entry, pieces(raw, cfg, owners, received), report)
        activity = parse(raw, cfg, received_on=received)
    except MessageUnusable as exc:
        quarantine_message(ctx, cfg.name, entry.key, str(exc), report)
        return None
    if InboundLedger(ctx.store, cfg.name).seen_before(activity.message_id):
        _mark_delivered(ctx, cfg.name, entry.key, activity, None, True, report)
        return None
    wanted = apply_policy(ctx, cfg, entry, activity, report)
    if wanted is None:
        return None
    return Ready(entry, wanted.message_id, [(wanted, delivery_target(cfg))])


def _prepare_carrier(
    ctx: Context, cfg: ProviderConfiguration, entry: LedgerEntry, carrier: Carrier,
    report: CycleReport,
) -> Ready | None:  # fmt: skip
    """The originals of a carrier still to deliver (:func:`router.forwarding.plan`); None when
    none is left and the carrier was settled here.

    Originals for no known owner follow ``<ForwardUnknownPolicy>``: quarantine the whole carrier
    before anything is delivered, or count them and leave them out.
    """
    ledger = InboundLedger(ctx.store, cfg.name)
    todo = plan(carrier, ledger.seen_before, lambda kind: policy_for(cfg, kind) == "deliver")
    report.unowned += todo.unknown
    if todo.unknown and cfg.forward_unknown_policy == "quarantine":
        reason = f"{todo.unknown} forwarded message(s) for no known CRM user or queue"
        quarantine_message(ctx, cfg.name, entry.key, reason, report)
        return None
    for kind in todo.held_back:
        report.count_class(kind)
    ready = Ready(entry, carrier.message_id, todo.items, carrier=True, earlier=todo.earlier)
    if ready.items:
        return ready
    _settle_carrier(ctx, cfg, ready, [], report)
    return None


def _settle_carrier(
    ctx: Context, cfg: ProviderConfiguration, r: Ready, outcomes: Sequence[Result],
    report: CycleReport,
) -> None:  # fmt: skip
    """Record what happened to a carrier's originals; the carrier is settled only when all are.

    Each original the CRM now holds is indexed first, so a carrier that stays staged (one
    original failed) delivers only the others next time.
    """
    ledger, key = InboundLedger(ctx.store, cfg.name), r.entry.key
    result = tally(r.items, outcomes, r.earlier)
    for message_id in result.delivered + result.duplicates:
        ledger.original_delivered(key, message_id)
    if isinstance(result.failure, Raised):
        attempt = ("deliver", result.failure.exc)
        count_failure(ctx, cfg, r.entry, r.entry.attempts + 1, attempt, report)
        return
    if result.failure is not None:
        reason = f"CRM refused a forwarded message: {result.failure}"
        quarantine_message(ctx, cfg.name, key, reason, report)
        return
    report.delivered += len(result.delivered)
    report.duplicates += len(result.duplicates) + r.earlier
    for verdict in result.declined:
        report.count_filtered(verdict)
    if result.settlement == "forwarded":
        ledger.delivered(key, r.message_id, None, duplicate=not result.delivered)
    elif result.settlement == "filtered":  # the originals were counted, not the carrier
        ledger.filtered(key, r.message_id, _filter_reason(result.declined[0]))
    else:
        ledger.skip(key, r.message_id, "forwarded: nothing to deliver")
    report.note(key, result.settlement, result.summary)


def parse(
    raw: bytes, cfg: ProviderConfiguration, *, received_on: datetime | None = None
) -> Activity:
    """Parse raw bytes with the instance's size limit (MessageUnusable when hopeless).

    ``received_on`` (the staging time) stands in for a missing or unusable Date header.
    """
    return parse_message(raw, max_size=cfg.max_message_size, received_on=received_on)


def _mark_delivered(
    ctx: Context,
    name: str,
    key: str,
    activity: Activity,
    activity_id: str | None,
    duplicate: bool,
    report: CycleReport,
) -> None:
    ledger = InboundLedger(ctx.store, name)
    moved = ledger.delivered(key, activity.message_id, activity_id, duplicate=duplicate)
    if moved is None:
        return
    if duplicate:
        report.duplicates += 1
        report.note(key, "duplicate", "the CRM already has this Message-ID")
    else:
        report.delivered += 1
        report.note(key, "delivered", activity_id or "")


def _chunks(items: Sequence[LedgerEntry], size: int) -> Iterable[Sequence[LedgerEntry]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
