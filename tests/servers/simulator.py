"""Dataverse simulator fixtures: ``email-router crm-sim`` as a subprocess on a free port (HTTPS).

* ``crm_simulator`` (session) - one simulator process for the whole run, with its own CA.
* ``simulator`` (function) - the same process seen through a fresh organisation (a unique
  ``/org/<name>`` of its own, so tests never see each other's data) with faults reset before
  and after the test.

Both yield a :class:`SimulatorServer` (:mod:`router.testing.simulator`, where the process
management lives so that the provider kit shares it): ``.base_url``, ``.authority``,
``.ca_path``, ``.org``, ``.org_url``, ``.deployment(...)``, ``.admin(method, path, json)`` and
shortcuts (``set_faults``, ``emails``, ``request_log``, ``seed_pending``, ``create_pending``).
Use :func:`start_simulator` outside pytest (e2e scripts, benchmarks).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from router.testing.simulator import (
    CLIENT_ID,
    CLIENT_SECRET,
    ODATA,
    TENANT,
    SimulatorServer,
    start_simulator,
)
from tests.servers.common import require, wait_for

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "ODATA", "TENANT", "SimulatorServer", "start_simulator"]


@pytest.fixture(scope="session")
def crm_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorServer]:
    """One simulator process for the test session."""
    try:
        import flask  # noqa: F401
    except ImportError:  # pragma: no cover
        require(False, "flask is not installed")
    with start_simulator(tmp_path_factory.mktemp("crm-sim")) as server:
        yield server


@pytest.fixture
def simulator(crm_simulator: SimulatorServer) -> Iterator[SimulatorServer]:
    """The session's simulator, through a fresh organisation, with faults reset.

    It also waits (bounded) for requests still in flight from an earlier test - e.g. a slow
    request whose client gave up - since the concurrency limit counts them.
    """
    crm_simulator.reset_faults()
    wait_for(lambda: crm_simulator.stats()["in_flight"] == 0, timeout=10, interval=0.1)
    yield crm_simulator.for_org(f"t{uuid.uuid4().hex[:10]}")
    crm_simulator.reset_faults()
