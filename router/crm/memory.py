"""An in-process CRM for tests, demos and the contract suite.

Use :class:`MemoryCrm` wherever a CRM is needed without a network: it keeps activities and outbound
emails in dictionaries guarded by a lock, is idempotent by Message-ID like Dataverse, and records
every call so tests can assert what the router asked for. Like the Dataverse adapter it fits the
Message-ID and subject into Dataverse's column sizes (:mod:`router.mail.limits`), so what a test
reads back is what a real organisation would hold.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from router.crm.base import ACCEPTED, CrmAdapter, DeliveryTarget, MailboxRecord, Owners, Verdict
from router.crm.tracking import Facts, Lookups, answered_ids, decide
from router.errors import CrmRejected
from router.mail.limits import SUBJECT_MAX, clip, fit_message_id
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
        #: the CRM's mailbox records (``<LoadMailboxes>``) and the Test Access results written
        #: into them: mailbox id -> (incoming, reason) of each test
        self.mailboxes: dict[str, MailboxRecord] = {}
        self.mailbox_tests: dict[str, list[tuple[bool, str | None]]] = {}
        #: tracking filters (:mod:`router.crm.tracking`): owner (user or queue) id -> method,
        #: the Message-IDs of email the organisation sent, the addresses of leads, contacts and
        #: accounts, and those of the other email-enabled records (users, queues)
        self.filtering: dict[str, int] = {}
        self.sent_message_ids: set[str] = set()
        self.record_addresses: set[str] = set()
        self.enabled_addresses: set[str] = set()

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.fault is not None:
            self.fault(what)

    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        self._call("check_incoming")
        with self._lock:
            return fit_message_id(activity.message_id) not in self.activities

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        self._call("deliver")
        if not activity.message_id:
            raise CrmRejected("activity has no Message-ID")
        stored = _fitted(activity)
        with self._lock:
            existing = self.activities.get(stored.message_id)
            if existing is not None:
                return DeliveryResult(existing[0], duplicate=True)
            activity_id = f"act-{next(self._ids)}"
            self.activities[stored.message_id] = (activity_id, stored, target)
            return DeliveryResult(activity_id)

    def screen(self, items: Sequence[tuple[Activity, DeliveryTarget]]) -> list[Verdict]:
        """The owners' tracking filters; one ``check_incoming`` call recorded per filtered owner's
        message, none for owners who take everything (like the Dataverse adapter)."""
        verdicts = []
        for activity, target in items:
            method = self.filtering.get(target.user_id or target.queue_id or "", 0)
            if method == 0:
                verdicts.append(ACCEPTED)
                continue
            self._call("check_incoming")
            verdicts.append(decide(method, _facts(activity), self._lookups()))
        return verdicts

    def _lookups(self) -> Lookups:
        return Lookups(
            sent_by_org=self.sent_message_ids.__contains__,
            is_record=self.record_addresses.__contains__,
            is_email_enabled=lambda a: a in self.record_addresses or a in self.enabled_addresses,
        )

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

    def list_mailboxes(self) -> list[MailboxRecord]:
        self._call("list_mailboxes")
        with self._lock:
            return list(self.mailboxes.values())

    def record_mailbox_test(
        self, mailbox_id: str, incoming: bool, reason: str | None, reason_column: str | None
    ) -> None:
        self._call("record_mailbox_test")
        with self._lock:
            self.mailbox_tests.setdefault(mailbox_id, []).append((incoming, reason))

    def _get(self, email_id: str) -> StoredOutbound:
        try:
            return self.outbound[email_id]
        except KeyError:
            raise CrmRejected(f"no email with id {email_id}") from None


def _facts(activity: Activity) -> Facts:
    sender = activity.sender.email.lower() if activity.sender else ""
    return Facts(activity.subject, answered_ids(activity.in_reply_to, activity.references), sender)


def _fitted(activity: Activity) -> Activity:
    """``activity`` as Dataverse would store it: Message-ID and subject within their columns."""
    message_id, subject = fit_message_id(activity.message_id), clip(activity.subject, SUBJECT_MAX)
    if (message_id, subject) == (activity.message_id, activity.subject):
        return activity
    return replace(activity, message_id=message_id, subject=subject)
