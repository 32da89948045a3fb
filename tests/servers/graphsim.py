"""Graph simulator fixtures: ``email-router graph-sim`` as a subprocess on a free port (HTTPS).

* ``graph_simulator`` (session) - one simulator process for the whole run, with its own CA.
* ``graphsim`` (function) - the same process with faults reset before and after the test.
* ``graph_mailbox`` (function) - a fresh mailbox address of its own (``<uuid>@sim.example``),
  so tests never see each other's mail, request log entries or delta tokens.

Both server fixtures yield a :class:`GraphSimulator` (:mod:`router.testing.graphsim`, where the
process management lives): ``.base_url`` (ending ``/v1.0``), ``.authority``, ``.ca_path``,
``.provider_config(mailbox)``, ``.admin(method, path, json)`` and shortcuts
(``add_messages``, ``folder``, ``sent``, ``request_log``, ``set_faults``, ``expire_delta``).
:func:`sending_context` builds the context of a Graph outgoing instance over both simulators.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from router.config import Configuration, SystemConfiguration
from router.context import Context
from router.models import Direction
from router.state.memory import MemoryStore
from router.testing.graphsim import GraphSimulator, start_graph_simulator
from router.testing.simulator import SimulatorServer
from tests.servers.common import require, wait_for

__all__ = ["GraphSimulator", "sending_context", "start_graph_simulator"]


@pytest.fixture(scope="session")
def graph_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphSimulator]:
    """One Graph simulator process for the test session."""
    try:
        import cheroot  # noqa: F401
        import flask  # noqa: F401
    except ImportError:  # pragma: no cover
        require(False, "flask/cheroot are not installed")
    with start_graph_simulator(tmp_path_factory.mktemp("graph-sim")) as server:
        yield server


@pytest.fixture
def graphsim(graph_simulator: GraphSimulator) -> Iterator[GraphSimulator]:
    """The session's simulator with faults reset (and no request of an earlier test in flight)."""
    graph_simulator.reset_faults()
    wait_for(lambda: graph_simulator.stats()["in_flight"] == 0, timeout=10, interval=0.1)
    yield graph_simulator
    graph_simulator.reset_faults()


@pytest.fixture
def graph_mailbox() -> str:
    """A mailbox address no other test uses."""
    return f"u{uuid.uuid4().hex[:12]}@sim.example"


def sending_context(
    simulator: SimulatorServer, graphsim: GraphSimulator, mailbox: str, owner_id: str
) -> Context:
    """A context with one Graph outgoing instance ``graph-out`` sending from ``mailbox`` the
    pending emails of ``owner_id`` in the Dataverse simulator (memory state store)."""
    cfg = graphsim.provider_config(
        mailbox,
        name="graph-out",
        direction=Direction.OUTGOING,
        deployment="sim",
        user_ids=(owner_id,),
        parameters={"timeout": "30"},
    )
    config = Configuration(
        system=SystemConfiguration(), deployments=(simulator.deployment("sim"),), providers=(cfg,)
    )
    return Context(config, MemoryStore())
