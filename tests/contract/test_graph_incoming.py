"""The graph incoming provider passes the provider kit against the Graph simulator.

The simulator runs as its own process (``email-router graph-sim``, HTTPS with its own CA);
each test reads a mailbox of its own, so no test sees another's mail or delta state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from router.config import ProviderConfiguration
from router.testing import IncomingProviderContract, MailboxBackend
from router.testing.graphsim import GraphSimulator


class GraphMailbox:
    """The inbox of one simulated Exchange Online mailbox, read through Graph."""

    def __init__(self, sim: GraphSimulator, address: str) -> None:
        self.sim, self.address = sim, address

    def config(self, **overrides: Any) -> ProviderConfiguration:
        return self.sim.provider_config(self.address, name="graph-contract", **overrides)

    def put(self, raws: Sequence[bytes]) -> None:
        self.sim.add_messages(self.address, list(raws))

    def count(self) -> int:
        return len(self.sim.folder(self.address, "inbox"))


class TestGraphIncomingProvider(IncomingProviderContract):
    @pytest.fixture
    def mailbox(self, graphsim: GraphSimulator, graph_mailbox: str) -> MailboxBackend:
        return GraphMailbox(graphsim, graph_mailbox)
