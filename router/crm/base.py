"""The CRM adapter protocol: what the router needs from Dynamics 365 / Dataverse.

Use :class:`CrmAdapter` as the base of every adapter. The incoming side delivers activities built
from mail (idempotent by Message-ID, like the CRM's own CheckIncomingEmail); the outgoing side lists
the emails waiting to be sent for the owners an instance serves and marks them Sent or Failed.

Adapters raise only router errors: :class:`~router.errors.CrmUnavailable` (retry, with
``retry_after`` when the CRM asked for a delay), :class:`~router.errors.CrmRejected` (this
record is refused for good: quarantine / fail it) and :class:`~router.errors.CrmAuthError` (stop
the instance).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from router.errors import CrmError
from router.models import Activity, DeliveryResult, OutboundEmail


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Which CRM mailbox an incoming activity is delivered for (ExtraProperties in Dataverse)."""

    mailbox: str = ""
    user_id: str | None = None
    queue_id: str | None = None


@dataclass(frozen=True, slots=True)
class Owners:
    """The CRM users and queues whose outgoing emails an outgoing instance sends."""

    user_ids: tuple[str, ...] = ()
    queue_ids: tuple[str, ...] = ()
    mailbox: str = ""


class CrmAdapter(abc.ABC):
    """Base class of CRM adapters; ``router.crm.memory`` is the in-process fake."""

    #: Name used in the alias table and in log lines.
    name: str = "crm"

    @abc.abstractmethod
    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        """Return True when the CRM would accept ``activity`` (False: it already has it)."""

    @abc.abstractmethod
    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        """Create the email activity; a second call with the same Message-ID creates nothing.

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
        """Return up to ``limit`` emails in Pending Send for ``owners``, oldest first."""

    @abc.abstractmethod
    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        """Record that the email left through SMTP with ``message_id`` (idempotent)."""

    @abc.abstractmethod
    def mark_failed(self, email_id: str, reason: str) -> None:
        """Set the email to Failed with ``reason`` (idempotent)."""

    @abc.abstractmethod
    def record_attempt(self, email_id: str, attempts: int) -> None:
        """Store the number of delivery attempts made so far for a pending email."""

    def who_am_i(self) -> str:
        """Make a cheap authenticated call and return the caller's id (``test-access``)."""
        return "memory"

    def close(self) -> None:
        """Release connections; the adapter may not be used afterwards."""


def _is_per_record(exc: CrmError) -> bool:
    from router.errors import CrmRejected

    return isinstance(exc, CrmRejected)
