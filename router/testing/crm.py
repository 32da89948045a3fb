"""The kit's CRM: the in-memory CRM, kept in a file so that it survives a killed child process.

Use :class:`KitCrm` through :class:`~router.testing.rig.KitRig`; a test reads it back with
``rig.crm()``. Like Dataverse it creates at most one activity per Message-ID; unlike it, it
also records every ``deliver`` call, so a test can tell "the router asked once" from "the CRM
caught the repeat".
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

from router.crm.base import DeliveryTarget
from router.crm.memory import SENT, MemoryCrm
from router.models import Activity, DeliveryResult, OutboundEmail


class KitCrm(MemoryCrm):
    """A :class:`~router.crm.memory.MemoryCrm` saved to ``path`` after every change."""

    def __init__(self, path: Path, after: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.path = path
        self.after = after
        #: The Message-ID of every ``deliver`` call, repeats included.
        self.deliver_calls: list[str] = []
        if path.exists():
            self.activities, self.outbound, self.deliver_calls = pickle.loads(path.read_bytes())

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        self.deliver_calls.append(activity.message_id or "")
        result = super().deliver(activity, target)
        self._saved("deliver")
        return result

    def add_outbound(self, email: OutboundEmail, owner: str = "") -> None:
        super().add_outbound(email, owner)
        self._saved("add_outbound")

    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        super().mark_sent(email_id, message_id, tracking_token)
        self._saved("mark_sent")

    def mark_failed(self, email_id: str, reason: str) -> None:
        super().mark_failed(email_id, reason)
        self._saved("mark_failed")

    def record_attempt(self, email_id: str, attempts: int) -> None:
        super().record_attempt(email_id, attempts)
        self._saved("record_attempt")

    def sent_ids(self) -> set[str]:
        """The ids of the outbound emails marked Sent."""
        return {i for i, stored in self.outbound.items() if stored.status == SENT}

    def _saved(self, what: str) -> None:
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps((self.activities, self.outbound, self.deliver_calls)))
        os.replace(tmp, self.path)
        if self.after is not None:
            self.after(what)
