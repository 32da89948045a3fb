"""An in-process CRM for tests, demos and the contract suite.

Use :class:`MemoryCrm` wherever a CRM is needed without a network: it keeps activities and outbound
emails in dictionaries guarded by a lock, is idempotent by Message-ID like Dataverse, and records
every call so tests can assert what the router asked for.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from router.crm.base import CrmAdapter, DeliveryTarget, Owners
from router.errors import CrmRejected
from router.models import Activity, DeliveryResult, OutboundEmail

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass
class StoredOutbound:
    """An outbound email in the fake CRM, with its status and the history of marks."""

    email: OutboundEmail
    owner: str
    status: str = PENDING
    reason: str | None = None
    attempts: int = 0
    sent_message_id: str | None = None
    marks: list[str] = field(default_factory=list)


class MemoryCrm(CrmAdapter):
    """Dictionary-backed CRM; ``fault`` (a callable raising a router error) injects failures."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.activities: dict[str, tuple[str, Activity, DeliveryTarget]] = {}
        self.outbound: dict[str, StoredOutbound] = {}
        self.calls: list[str] = []
        self.fault: Callable[[str], None] | None = None

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.fault is not None:
            self.fault(what)

    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        self._call("check_incoming")
        with self._lock:
            return activity.message_id not in self.activities

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        self._call("deliver")
        if not activity.message_id:
            raise CrmRejected("activity has no Message-ID")
        with self._lock:
            existing = self.activities.get(activity.message_id)
            if existing is not None:
                return DeliveryResult(existing[0], duplicate=True)
            activity_id = f"act-{next(self._ids)}"
            self.activities[activity.message_id] = (activity_id, activity, target)
            return DeliveryResult(activity_id)

    def add_outbound(self, email: OutboundEmail, owner: str = "") -> None:
        """Put an email in Pending Send (what SendEmail(IssueSend=true) does in Dataverse)."""
        with self._lock:
            self.outbound[email.email_id] = StoredOutbound(email, owner)

    def list_pending(self, owners: Owners, limit: int) -> list[OutboundEmail]:
        self._call("list_pending")
        wanted = set(owners.user_ids) | set(owners.queue_ids)
        with self._lock:
            rows = [
                replace(s.email, delivery_attempts=s.attempts)
                for s in self.outbound.values()
                if s.status == PENDING and (not wanted or s.owner in wanted)
            ]
        return rows[:limit]

    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        self._call("mark_sent")
        with self._lock:
            stored = self._get(email_id)
            stored.status, stored.sent_message_id = SENT, message_id
            stored.marks.append(SENT)

    def mark_failed(self, email_id: str, reason: str) -> None:
        self._call("mark_failed")
        with self._lock:
            stored = self._get(email_id)
            stored.status, stored.reason = FAILED, reason
            stored.marks.append(FAILED)

    def record_attempt(self, email_id: str, attempts: int) -> None:
        self._call("record_attempt")
        with self._lock:
            self._get(email_id).attempts = attempts

    def _get(self, email_id: str) -> StoredOutbound:
        try:
            return self.outbound[email_id]
        except KeyError:
            raise CrmRejected(f"no email with id {email_id}") from None
