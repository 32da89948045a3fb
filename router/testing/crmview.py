"""The CRM a kit test runs against, as the test sees it: seed emails, read what arrived.

:class:`MemoryCrmView` (the default) is the kit's file-backed in-memory CRM
(:class:`~router.testing.crm.KitCrm`); :class:`SimulatorCrmView` is an organisation of the
Dataverse simulator (``pytest --provider-kit-crm=simulator``), reached through the router's
real Dataverse adapter. Both survive the child processes a kill test SIGKILLs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from router.config import Deployment
from router.models import OutboundEmail
from router.testing.crm import KitCrm
from router.testing.simulator import SimulatorServer

#: The name of the Deployment the kit gives every instance under test.
KIT_DEPLOYMENT = "kit"
#: The simulator's status code of a sent email, and the path of an incoming delivery.
SIM_SENT, SIM_DELIVER = 3, "DeliverIncomingEmail"


class CrmView(Protocol):
    """What the kit's tests need of a CRM."""

    def deployment(self) -> Deployment:
        """The ``<Deployment>`` the instance under test uses."""
        ...

    def adapter(self, after: Callable[[str], None] | None) -> KitCrm | None:
        """The adapter to use in a cycle, or None for the one the Deployment builds."""
        ...

    def seed(self, email: OutboundEmail) -> str:
        """Put ``email`` in Pending Send; returns its id in this CRM."""
        ...

    def activity_subjects(self) -> list[str]:
        """The subjects of the incoming activities, sorted."""
        ...

    def deliver_calls(self) -> int:
        """How many times the router asked the CRM to create an activity (repeats counted)."""
        ...

    def sent_ids(self) -> set[str]:
        """The ids of the outbound emails marked Sent."""
        ...


class MemoryCrmView:
    """The kit's in-memory CRM, kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def deployment(self) -> Deployment:
        return Deployment(name=KIT_DEPLOYMENT, adapter="memory", crm_server_url="memory://")

    def adapter(self, after: Callable[[str], None] | None) -> KitCrm | None:
        crm = KitCrm(self.path, after)
        crm.fault = after
        return crm

    def seed(self, email: OutboundEmail) -> str:
        KitCrm(self.path).add_outbound(email)
        return email.email_id

    def activity_subjects(self) -> list[str]:
        return sorted(a.subject for _, a, _ in KitCrm(self.path).activities.values())

    def deliver_calls(self) -> int:
        return len(KitCrm(self.path).deliver_calls)

    def sent_ids(self) -> set[str]:
        return KitCrm(self.path).sent_ids()


class SimulatorCrmView:
    """One organisation of a running Dataverse simulator."""

    def __init__(self, server: SimulatorServer) -> None:
        self.server = server

    def deployment(self) -> Deployment:
        return self.server.deployment(KIT_DEPLOYMENT)

    def adapter(self, after: Callable[[str], None] | None) -> KitCrm | None:
        return None

    def seed(self, email: OutboundEmail) -> str:
        to = [a.email for a in email.to]
        ids = self.server.seed_pending(1, subject=email.subject, to=to, sender=email.sender.email)
        return ids[0]

    def activity_subjects(self) -> list[str]:
        rows = self.server.emails()
        return sorted(str(r["subject"]) for r in rows if not r.get("directioncode"))

    def deliver_calls(self) -> int:
        return sum(SIM_DELIVER in str(r.get("path", "")) for r in self.server.request_log())

    def sent_ids(self) -> set[str]:
        rows = self.server.emails()
        return {str(r["activityid"]) for r in rows if r.get("statuscode") == SIM_SENT}
