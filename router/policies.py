"""The classification policies of an incoming instance: deliver, skip or quarantine a message.

Use :func:`policy_for` to know what an instance does with a kind of message (its
``AutoReplyPolicy``, ``BouncePolicy``, ``ReadReceiptPolicy``, ``FeedbackReportPolicy`` and
``NonEmailPolicy``), and :func:`apply_policy` from the delivery (:mod:`router.delivery`) to act
on it for a parsed message before it reaches the CRM. A bounce of an email this router sent
closes that email's loop first (:func:`router.outgoing.handle_bounce`), whatever the policy.
"""

from __future__ import annotations

import logging

from router.config import ProviderConfiguration
from router.context import Context
from router.errors import RouterError
from router.failures import quarantine_message
from router.ledger import InboundLedger
from router.mail.classify import NON_EMAIL
from router.models import Activity, Classification, LedgerEntry
from router.outgoing import handle_bounce
from router.report import CycleReport

log = logging.getLogger(__name__)


def policy_for(cfg: ProviderConfiguration, kind: Classification) -> str:
    """The instance's policy (deliver / skip / quarantine) for a kind of message."""
    if kind in NON_EMAIL:
        return cfg.non_email_policy
    policies = {
        Classification.AUTO_REPLY: cfg.auto_reply_policy,
        Classification.BOUNCE: cfg.bounce_policy,
        Classification.READ_RECEIPT: cfg.read_receipt_policy,
        Classification.FEEDBACK_REPORT: cfg.feedback_report_policy,
    }
    return str(policies.get(kind, "deliver"))


def apply_policy(
    ctx: Context,
    cfg: ProviderConfiguration,
    entry: LedgerEntry,
    activity: Activity,
    report: CycleReport,
) -> Activity | None:
    """The activity to deliver, or None when its class's policy settled the entry here."""
    kind = activity.classification
    if kind is Classification.BOUNCE and activity.bounce is not None:
        _close_bounce_loop(ctx, activity)
    policy = policy_for(cfg, kind)
    if policy == "deliver":
        return activity
    report.count_class(kind)
    if policy == "quarantine":
        quarantine_message(ctx, cfg.name, entry.key, f"classified as {kind.value}", report)
        return None
    ledger = InboundLedger(ctx.store, cfg.name)
    ledger.skip(entry.key, activity.message_id, f"classified as {kind.value}")
    report.filtered += 1
    report.note(entry.key, "skipped", kind.value)
    return None


def _close_bounce_loop(ctx: Context, activity: Activity) -> None:
    """A bounce of an email this router sent marks that CRM email Failed (router.outgoing)."""
    assert activity.bounce is not None
    try:
        handle_bounce(ctx, activity.bounce)
    except RouterError as exc:  # the bounce itself is still handled by the policy
        log.warning("bounce for %s not applied: %s", activity.bounce.original_message_id, exc)
