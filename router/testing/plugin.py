"""The pytest plugin of the provider kit (entry point ``pytest11``: ``email_router``).

Installed with ``email-router``, it registers the kit's marks (so ``--strict-markers`` runs
accept them), the ``--provider-kit-crm`` option (``memory``, the default, or ``simulator``: the
Dataverse simulator, started once per session) and the ``provider_kit_rig`` fixture the
contracts of :mod:`router.testing` build their rigs with.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import ProviderConfiguration
from router.testing.crmview import CrmView, SimulatorCrmView
from router.testing.rig import KitRig, RigFactory
from router.testing.simulator import SimulatorServer, start_simulator

#: The marks of the kit, registered for every pytest run in an environment with the router.
MARKS = {
    "provider_kit": "a contract test of the email-router provider kit (router.testing)",
    "provider_kit_kill": "a kit test that SIGKILLs a child process at every step of a cycle",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--provider-kit-crm=memory|simulator``: the CRM the kit's cycles deliver to."""
    parser.getgroup("email-router provider kit").addoption(
        "--provider-kit-crm",
        choices=("memory", "simulator"),
        default="memory",
        help="CRM of the provider kit: the in-memory CRM (default) or the Dataverse simulator",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the kit's marks."""
    for name, text in MARKS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(scope="session")
def provider_kit_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorServer]:
    """One Dataverse simulator for the session (``--provider-kit-crm=simulator``)."""
    with start_simulator(tmp_path_factory.mktemp("kit-crm-sim")) as server:
        yield server


@pytest.fixture
def provider_kit_rig(request: pytest.FixtureRequest, tmp_path: Path) -> RigFactory:
    """Build the test's :class:`~router.testing.rig.KitRig` for a provider configuration."""
    view: CrmView | None = None
    if request.config.getoption("--provider-kit-crm") == "simulator":
        server: SimulatorServer = request.getfixturevalue("provider_kit_simulator")
        view = SimulatorCrmView(server.for_org(f"kit{uuid.uuid4().hex[:10]}"))

    def rig(cfg: ProviderConfiguration) -> KitRig:
        return KitRig(cfg, tmp_path / "rig", view)

    return rig
