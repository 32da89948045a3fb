"""The graph outgoing provider passes the provider kit against the Graph simulator process.

What the simulator's sendMail accepted (its admin "sent" log, per sending mailbox) is the
ground truth the kit reads back. Graph takes or refuses a message as a whole, so the kit's
"one recipient refused for now" test does not apply (``refuse_for_now`` says so).
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

import pytest

from router.config import ProviderConfiguration
from router.models import Direction
from router.testing import OutgoingProviderContract, SentMailBackend
from router.testing.graphsim import GraphSimulator


class GraphSendLog:
    """One fresh mailbox of the simulator and what Graph sent from it."""

    def __init__(self, sim: GraphSimulator, mailbox: str) -> None:
        self.sim, self.mailbox = sim, mailbox

    def config(self, **overrides: Any) -> ProviderConfiguration:
        fields: dict[str, Any] = {
            "direction": Direction.OUTGOING,
            "email_address": self.mailbox,
            "parameters": {"timeout": "10", "retry_backoff": "0"},
        }
        return self.sim.provider_config(self.mailbox, name="graph-kit-out", **fields, **overrides)

    def sent(self) -> list[tuple[tuple[str, ...], bytes]]:
        return [
            (_recipients(entry), entry["mime"].encode("utf-8"))
            for entry in self.sim.sent(self.mailbox)
        ]

    def refuse_for_now(self, address: str) -> bool:
        return False  # Graph has no per-recipient answer: the whole message is taken or not


def _recipients(entry: dict[str, Any]) -> tuple[str, ...]:
    fields = [entry.get(name, "") for name in ("to", "cc", "bcc")]
    return tuple(addr for _, addr in getaddresses(fields) if addr)


class TestGraphOutgoingProvider(OutgoingProviderContract):
    @pytest.fixture
    def sent_mail(self, graphsim: GraphSimulator, graph_mailbox: str) -> SentMailBackend:
        # The kit's emails come From sender@example.com: let this mailbox send as it.
        graphsim.set_faults(enforce_send_as=False)
        return GraphSendLog(graphsim, graph_mailbox)
