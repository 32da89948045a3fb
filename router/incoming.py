"""The poll cycle of an incoming instance: mailbox -> ledger (staged) -> CRM -> post-processing.

:func:`poll_instance` (through :mod:`router.service`) runs one cycle for an incoming instance::

    lease -> post-process what earlier cycles delivered -> list refs after the cursor
    -> fetch + stage each (ledger entry + raw bytes) -> move the cursor (lease-fenced)
    -> deliver_staged (unless a separate CRM task does it) -> post-process what was delivered

The CRM step is :func:`router.delivery.deliver_staged`, run beside the fetch as groups are
staged (:class:`router.pipeline.DeliveryPipeline`); what the cycle did is a
:class:`router.report.CycleReport`.

Why this order keeps the invariants (DESIGN.md):

* The cursor only moves over refs whose ledger entry exists (staged, or quarantined by the size
  guard); on a failure mid-batch it moves over the staged prefix only.
* Nothing changes on the mail server before the ledger says DELIVERED (or SKIPPED); the entry
  then becomes DONE, after the provider's ``commit`` (POP3 deletes happen at QUIT).
* A message whose fetch fails is counted against that message only (:mod:`router.failures`)
  and quarantined at ``MaxMessageAttempts``; the cursor stays before it until then.

Every ledger write is a named move of :class:`router.ledger.InboundLedger`; this module only
decides which move a message needs.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from router.config import ProviderConfiguration
from router.context import Context
from router.delivery import incoming_instance
from router.errors import RouterError
from router.failures import CONNECTION_ERRORS, log_failure, short
from router.ledger import InboundLedger, begin_poll
from router.models import InboundMessage, LedgerEntry, LedgerState, MessageRef
from router.pipeline import DeliveryPipeline
from router.providers.base import IncomingProvider, InstanceState, JsonDict
from router.report import CycleReport
from router.state.base import Lease, PollStart

log = logging.getLogger(__name__)

#: Fetched messages staged per store commit, and the bytes they may hold in memory meanwhile.
STAGE_GROUP = 50
STAGE_BYTES = 8_000_000


def poll_instance(
    ctx: Context, name: str, *, deliver: bool = True, holder: str | None = None
) -> CycleReport:
    """Run one poll cycle of incoming instance ``name``; see the module docstring.

    Returns a report with ``skipped`` set when another worker holds the lease. Router errors
    propagate after the lease is released and the error is recorded in the counters.
    """
    cfg = incoming_instance(ctx, name)
    report, started = CycleReport(name), time.monotonic()
    start = begin_poll(ctx.store, name, holder or ctx.holder, ctx.config.system)
    if start is None:
        info = ctx.store.get_lease(name)
        report.skipped = f"lease held by {info.holder if info else 'another worker'}"
        return report
    try:
        _run_poll(ctx, cfg, start, report, deliver)
    except RouterError as exc:
        report.error = str(exc)
        _end_poll(ctx, start.lease, report, started, short(exc))
        raise
    except BaseException:  # a defect, not a cycle outcome: released, not recorded
        ctx.store.release_lease(start.lease)
        report.duration = time.monotonic() - started
        raise
    _end_poll(ctx, start.lease, report, started, None)
    return report


def _end_poll(
    ctx: Context, lease: Lease, report: CycleReport, started: float, error: str | None
) -> None:
    """Release the lease and record the cycle (one store call); the report keeps the peek."""
    report.after = ctx.store.end_poll(lease, processed=report.delivered, error=error)
    report.duration = time.monotonic() - started


def _run_poll(
    ctx: Context, cfg: ProviderConfiguration, start: PollStart, report: CycleReport, deliver: bool
) -> None:
    provider = ctx.provider(cfg)
    assert isinstance(provider, IncomingProvider)
    try:
        provider.open()
        post_process(ctx, cfg, provider, report, start.entries)
        state = InstanceState(start.cursor, start.provider_state)
        loaded = copy.deepcopy(state.data)  # to save it only if the provider changed it
        refs = provider.list_new(state, cfg.max_message_count)
        report.listed = len(refs)
        lease = start.lease
        if not deliver:  # a separate CRM task delivers (the Celery runtime)
            _stage_all(ctx, cfg, provider, (state, loaded), refs, lease, report, _nothing)
            return
        with DeliveryPipeline(ctx, cfg.name) as pipeline:
            _stage_all(ctx, cfg, provider, (state, loaded), refs, lease, report, pipeline.staged)
            report.merge(pipeline.finish())
        post_process(ctx, cfg, provider, report)
    finally:
        provider.close()


def _nothing(_count: int) -> None:
    """No delivery to start when a group is staged."""


def _stage_all(
    ctx: Context,
    cfg: ProviderConfiguration,
    provider: IncomingProvider,
    states: tuple[InstanceState, JsonDict],
    refs: Sequence[MessageRef],
    lease: Lease,
    report: CycleReport,
    on_staged: Callable[[int], None],
) -> None:
    """Fetch and stage ``refs``; the cursor moves over exactly the refs now in the ledger.

    ``on_staged(n)`` is called after each group staged on the way, ``n`` newly staged
    (delivery may start on them).
    """
    done: list[MessageRef] = []
    group: list[InboundMessage] = []
    try:
        to_fetch = [r for r in refs if not _already_held(ctx, cfg, r, report, done)]
        wanted = {r.key for r in to_fetch}
        for message in _fetch_isolated(ctx, cfg, provider, to_fetch, report):
            if message.ref.key in wanted:
                group.append(message)
            else:
                done.append(message.ref)
            if len(group) >= STAGE_GROUP or sum(len(m.raw) for m in group) >= STAGE_BYTES:
                on_staged(_stage_group(ctx, cfg, group, report, done))
                group = []
    finally:
        try:  # what arrived before a failure (a dropped connection) is kept
            _stage_group(ctx, cfg, group, report, done)
        finally:
            _save_cursor(ctx, provider, states, _prefix(refs, done), lease)


def _fetch_isolated(
    ctx: Context,
    cfg: ProviderConfiguration,
    provider: IncomingProvider,
    refs: Sequence[MessageRef],
    report: CycleReport,
) -> Iterator[InboundMessage]:
    """``provider.fetch_many(refs)``, going on past a message whose fetch raised.

    A connection or credential failure (ProviderUnavailable, ProviderAuthError) ends the
    cycle as before. After any other exception the rest is fetched one message at a time, so
    that the failure is counted against the message at fault (a batched FETCH fails as a
    whole), never against its neighbours. A failed message is not staged: the cursor stays
    before it until it is staged or quarantined.
    """
    ledger, received = InboundLedger(ctx.store, cfg.name), set[str]()
    try:
        for message in provider.fetch_many(refs):
            received.add(message.ref.key)
            ledger.clear_fetch_failure(message.ref.key)
            yield message
        return
    except CONNECTION_ERRORS:
        raise
    except Exception:  # a bug or bad data in some message: find which, one by one
        log.debug("%s: batched fetch failed; fetching one by one", cfg.name)
    for ref in (r for r in refs if r.key not in received):
        try:
            message = provider.fetch(ref)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # this message's fault: counted, the others go on
            _fetch_failed(ctx, cfg, ref.key, exc, report)
            continue
        ledger.clear_fetch_failure(ref.key)
        yield message


def _fetch_failed(
    ctx: Context, cfg: ProviderConfiguration, key: str, exc: Exception, report: CycleReport
) -> None:
    """Count a failed fetch of ``key``; quarantine it at MaxMessageAttempts."""
    ledger, error = InboundLedger(ctx.store, cfg.name), short(exc)
    entry = ledger.fetch_failed(key, f"fetch failed: {error}")
    attempts = entry.attempts if entry is not None else 0
    log_failure(cfg.name, key, "fetch", attempts, exc)
    if entry is None or attempts < cfg.max_message_attempts:
        report.note(key, "fetch failed", f"attempt {attempts}: {error}")
        return
    reason = f"fetch failed {attempts} times: {error}"
    if ledger.give_up(key, reason) is not None:
        report.quarantined += 1
        report.note(key, "quarantined", reason)
        log.warning("%s: message %s quarantined: %s", cfg.name, key, reason)


def _stage_group(
    ctx: Context,
    cfg: ProviderConfiguration,
    group: Sequence[InboundMessage],
    report: CycleReport,
    done: list[MessageRef],
) -> int:
    """Stage fetched messages with one store commit (SQLite: one fsync, not one each); how
    many were new."""
    if not group:
        return 0
    ledger = InboundLedger(ctx.store, cfg.name)
    with ctx.store.batch():
        staged = [ledger.stage(m.ref.key, m.raw) for m in group]
    for message, new in zip(group, staged, strict=True):
        if new:
            report.staged += 1
            report.note(message.ref.key, "staged")
        done.append(message.ref)
    return sum(staged)


def _already_held(
    ctx: Context,
    cfg: ProviderConfiguration,
    ref: MessageRef,
    report: CycleReport,
    done: list[MessageRef],
) -> bool:
    """True when ``ref`` needs no download: known to the ledger, or refused by the size guard."""
    ledger = InboundLedger(ctx.store, cfg.name)
    entry = ledger.get(ref.key)
    if entry is not None and entry.state is LedgerState.RETRY:
        return False  # its last fetch failed: fetch it again
    if entry is not None:
        report.known += 1
        done.append(ref)
        return True
    if ref.size is not None and ref.size > cfg.max_message_size:
        reason = f"message is {ref.size} bytes, above MaxMessageSize {cfg.max_message_size}"
        ledger.refuse(ref.key, reason)
        report.quarantined += 1
        report.note(ref.key, "quarantined", reason)
        done.append(ref)
        return True
    return False


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
    ctx: Context,
    cfg: ProviderConfiguration,
    provider: IncomingProvider,
    report: CycleReport,
    handled: Sequence[LedgerEntry] | None = None,
) -> None:
    """Apply AfterProcessing to every handled ref, then mark those entries DONE.

    ``handled``: the handled entries when the caller has just read them (the cycle's start).
    """
    ledger = InboundLedger(ctx.store, cfg.name)
    entries = ledger.handled() if handled is None else handled
    if not entries:
        return
    refs = [MessageRef(e.key) for e in entries]
    provider.post_process(refs, cfg.after_processing)
    with provider.wrap("commit post-processing"):
        provider.commit()
    with ctx.store.batch():
        for entry in entries:
            if ledger.done(entry.key):
                report.post_processed += 1
