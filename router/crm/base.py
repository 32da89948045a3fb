"""The CRM adapter protocol: what the router needs from Dynamics 365 / Dataverse.

Use :class:`CrmAdapter` as the base of every adapter. The incoming side delivers activities built
from mail (idempotent by Message-ID, like the CRM's own CheckIncomingEmail); the outgoing side lists
the emails waiting to be sent for the owners an instance serves and marks them Sent or Failed.

Adapters raise only router errors: :class:`~router.errors.CrmUnavailable` (retry, with
``retry_after`` when the CRM asked for a delay), :class:`~router.errors.CrmRejected` (this
record is refused for good: quarantine / fail it) and :class:`~router.errors.CrmAuthError` (stop
the instance).

A ``<Deployment>`` names its adapter in ``<Adapter>`` (``dataverse``, ``memory`` or
``package.module:Class``); :func:`router.crm.factory.make_crm` builds it once per Deployment and
process through :meth:`CrmAdapter.from_deployment`, and every instance of that Deployment shares
it, from several threads at once: an adapter must be thread-safe.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from router.config import Deployment
from router.errors import CrmError, CrmRejected
from router.models import Activity, DeliveryResult, OutboundEmail


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Which CRM mailbox an incoming activity is delivered for (ExtraProperties in Dataverse).

    Built by the incoming cycle from the instance's ``<EmailAddress>`` and ``<UserId>`` /
    ``<QueueId>``; the adapter sets the activity's owner / queue from it.
    """

    mailbox: str = ""
    user_id: str | None = None
    queue_id: str | None = None


@dataclass(frozen=True, slots=True)
class Owners:
    """The CRM users and queues whose outgoing emails an outgoing instance sends.

    Built by the send cycle from ``<UserId>`` / ``<QueueId>``; :meth:`CrmAdapter.list_pending`
    returns only emails these own.
    """

    user_ids: tuple[str, ...] = ()
    queue_ids: tuple[str, ...] = ()
    mailbox: str = ""


@dataclass(frozen=True, slots=True)
class MailboxRecord:
    """One row of the CRM's ``mailboxes`` table, as :meth:`CrmAdapter.list_mailboxes` reads it.

    The codes are Dataverse's: delivery methods 0 none, 1 Outlook, 2 server-side sync or Email
    Router, 3 forward mailbox; approval 0 empty, 1 approved, 2 pending, 3 rejected.
    """

    mailbox_id: str
    address: str
    name: str = ""
    incoming_method: int = 2
    outgoing_method: int = 2
    approval: int = 1
    active: bool = True
    #: the owning user or queue (``_regardingobjectid_value``) and its table
    owner_id: str | None = None
    owner_type: str = "systemuser"
    #: "delete emails after processing" on the record
    delete_after_processing: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """The CRM's answer to "does the receiving owner want this message?" (the tracking filter).

    Returned by :meth:`CrmAdapter.screen`: ``wanted`` is CheckIncomingEmail's ``ShouldDeliver``,
    ``reason_code`` its ``ReasonCode`` (6 AcceptAll, 1 NoCorrelationMatch, 7 InvalidSender, ...)
    and ``reason`` the code's name. An unwanted message is recorded as filtered, not delivered.
    """

    wanted: bool = True
    reason_code: int = 6
    reason: str = "AcceptAll"


#: What :meth:`CrmAdapter.screen` answers for an owner who takes every message.
ACCEPTED = Verdict()


class CrmAdapter(abc.ABC):
    """Base class of CRM adapters: subclass it to route mail to another CRM or API.

    ``router.crm.memory`` is the in-process fake and ``router.crm.dataverse`` the real one. The
    incoming cycle calls ``deliver_many`` (or ``deliver_checked`` after an ambiguous failure);
    the send cycle calls ``list_pending``, then ``mark_sent`` / ``mark_failed`` /
    ``record_attempt`` per email. Every call must be idempotent: after a crash the router
    repeats the last one.
    """

    #: Name used in the alias table and in log lines.
    name: str = "crm"

    @classmethod
    def from_deployment(cls, dep: Deployment) -> CrmAdapter:
        """Build the adapter for one ``<Deployment>`` (``make_crm`` calls it once per process).

        The default calls the class without arguments, which suits an adapter that needs no
        settings; one that reads the Deployment's URL and credentials overrides it. It should
        not call the CRM yet: start-up must not fail because the CRM is briefly away.
        """
        return cls()

    @abc.abstractmethod
    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        """Return True when the CRM would accept ``activity`` (False: it already has it).

        The duplicate check by Message-ID (CheckIncomingEmail); :meth:`deliver` relies on it.
        """

    @abc.abstractmethod
    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        """Create the email activity; a second call with the same Message-ID creates nothing.

        The one primitive of the incoming side: the default ``deliver_many`` and
        ``deliver_checked`` call it per activity.

        Returns the result with ``duplicate=True`` (and the existing id when known) when the CRM
        already holds an email with that Message-ID.
        """

    def deliver_many(
        self, items: Sequence[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | CrmError]:
        """Deliver several activities; one failure fails only its own item.

        The default delivers one by one; adapters with a batch API override it and may skip
        the per-message duplicate check for speed. Errors that are not about one record
        (throttling, outage, credentials) are raised, not returned.
        """
        return self.deliver_checked(items)

    def deliver_checked(
        self, items: Sequence[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | CrmError]:
        """Deliver one by one through :meth:`deliver`, each with the CRM's duplicate check.

        The router uses it for messages that may have reached the CRM already (a delivery that
        was interrupted by a crash or an ambiguous failure), where speed matters less than
        asking first.
        """
        results: list[DeliveryResult | CrmError] = []
        for activity, target in items:
            try:
                results.append(self.deliver(activity, target))
            except CrmError as exc:
                if not _is_per_record(exc):
                    raise
                results.append(exc)
        return results

    @abc.abstractmethod
    def list_pending(self, owners: Owners, limit: int) -> list[OutboundEmail]:
        """Return up to ``limit`` emails in Pending Send for ``owners``, oldest first.

        Called once per send cycle; an email may come back in later cycles until it is marked
        Sent or Failed (the router's ledger keeps it from being sent twice).
        """

    @abc.abstractmethod
    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        """Record that the email left through SMTP with ``message_id`` (idempotent)."""

    @abc.abstractmethod
    def mark_failed(self, email_id: str, reason: str) -> None:
        """Set the email to Failed with ``reason`` (idempotent)."""

    @abc.abstractmethod
    def record_attempt(self, email_id: str, attempts: int) -> None:
        """Store the number of delivery attempts made so far for a pending email.

        Called when a temporarily refused email is scheduled for a retry; the count survives
        a lost state store, so ``<MaximumDeliveryAttempts>`` still ends the retries.
        """

    def list_mailboxes(self) -> list[MailboxRecord]:
        """Every mailbox record the CRM defines (active or not), for ``<LoadMailboxes>``.

        Called every ``<ConfigUpdatePeriod>`` by each runtime and by ``email-router
        mailboxes``; the router decides which records run (:mod:`router.mailboxes`). The
        default - a CRM without mailbox records - has none.
        """
        return []

    def record_mailbox_test(
        self, mailbox_id: str, incoming: bool, reason: str | None, reason_column: str | None
    ) -> None:
        """Write a Test Access result into the mailbox record (``mailboxes test``).

        ``incoming`` says which status (incoming or outgoing email status) it is about;
        ``reason`` is None on success, else why it failed, written into ``reason_column``
        when the organisation has such a column. The default has nowhere to write it.
        """

    def screen(self, items: Sequence[tuple[Activity, DeliveryTarget]]) -> list[Verdict]:
        """Apply each receiving owner's tracking filter: one :class:`Verdict` per item, in order.

        The incoming cycle calls it once per delivery chunk, before delivering; an unwanted
        message is recorded as filtered. An adapter asks the CRM only for owners whose
        filtering method is not "all messages", and in as few requests as it can. The default -
        a CRM without tracking filters - wants everything and asks nothing.
        """
        return [ACCEPTED] * len(items)

    def check_credentials(self) -> str | None:
        """Obtain the credential later calls use, now, and say where it came from.

        ``test-access`` calls it before :meth:`who_am_i` to tell a credential problem from a
        permission problem. None (the default) when the adapter has no separate credential
        step; CrmAuthError / CrmUnavailable when the credential cannot be had.
        """
        return None

    def who_am_i(self) -> str:
        """Make a cheap authenticated call and return the caller's id (``test-access``)."""
        return "memory"

    def close(self) -> None:
        """Release connections; the adapter may not be used afterwards.

        Called when the context that built it closes (end of a command, a configuration
        reload, process exit). The default has nothing to release.
        """


def _is_per_record(exc: CrmError) -> bool:
    return isinstance(exc, CrmRejected)
