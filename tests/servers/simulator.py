"""Dataverse simulator fixtures: ``email-router crm-sim`` as a subprocess on a free port (HTTPS).

* ``crm_simulator`` (session) - one simulator process for the whole run, with its own CA.
* ``simulator`` (function) - the same process seen through a fresh organisation (a unique
  ``/org/<name>`` of its own, so tests never see each other's data) with faults reset before
  and after the test.

Both yield a :class:`SimulatorServer`: ``.base_url``, ``.authority``, ``.ca_path``, ``.org``,
``.org_url``, ``.deployment(...)`` (a ``router.config.Deployment`` pointing at it),
``.admin(method, path, json)`` and shortcuts (``set_faults``, ``emails``, ``request_log``,
``seed_pending``, ``create_pending`` - the Dataverse way, ``POST emails`` + SendEmail).
Use :func:`start_simulator` outside pytest (e2e scripts, benchmarks).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from router.config import Deployment, Secret
from tests.servers.common import free_port, port_open, require, wait_for

TENANT = "simulator-tenant"
CLIENT_ID, CLIENT_SECRET = "email-router-tests", "test-secret"
ODATA = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


@dataclass(frozen=True)
class SimulatorServer:
    """A running simulator, seen through one organisation (``org``)."""

    port: int
    ca_path: Path
    org: str = "default"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{TENANT}"

    @property
    def org_url(self) -> str:
        """The organisation's ``CrmServerUrl``."""
        return self.base_url if self.org == "default" else f"{self.base_url}/org/{self.org}"

    @property
    def api_url(self) -> str:
        return f"{self.org_url}/api/data/v9.2/"

    def for_org(self, org: str) -> SimulatorServer:
        return replace(self, org=org)

    def deployment(self, name: str = "sim", **overrides: Any) -> Deployment:
        fields: dict[str, Any] = {
            "name": name,
            "adapter": "dataverse",
            "crm_server_url": self.org_url,
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": Secret(value=CLIENT_SECRET),
            "authority": self.authority,
            "ca_bundle": str(self.ca_path),
        }
        fields.update(overrides)
        return Deployment(**fields)

    # -- admin API ---------------------------------------------------------------------------

    def admin(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        response = requests.request(
            method,
            f"{self.base_url}/_admin/{path.lstrip('/')}",
            json=json,
            params=params,
            verify=str(self.ca_path),
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("POST", "faults", changes)
        return result

    def reset_faults(self) -> None:
        self.set_faults(**_DEFAULT_FAULTS)

    def emails(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.admin("GET", "emails", org=self.org, limit=100000)
        return rows

    def request_log(self, since: int = 0) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.admin("GET", "requests", since=since, org=self.org)
        return rows

    def last_request_id(self) -> int:
        rows = self.request_log()
        return int(rows[-1]["id"]) if rows else 0

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "stats")
        return result

    def seed_pending(self, count: int = 1, **spec: Any) -> list[str]:
        """Put ``count`` emails straight into Pending Send (spec: owner_id, queue_id, to, ...)."""
        ids: list[str] = self.admin("POST", "seed", {"org": self.org, "count": count, **spec})[
            "ids"
        ]
        return ids

    def create_pending(
        self, subject: str, to: str, sender_user: str, body: str = "<p>Hello</p>"
    ) -> str:
        """Create an outbound email the Dataverse way: POST emails, then SendEmail(IssueSend)."""
        session = requests.Session()  # verify per call: REQUESTS_CA_BUNDLE beats session.verify
        ca = str(self.ca_path)
        headers = {**ODATA, "Authorization": f"Bearer {self.token()}"}
        entity = {
            "subject": subject,
            "description": body,
            "directioncode": True,
            "ownerid@odata.bind": f"/systemusers({sender_user})",
            "email_activity_parties": [
                {
                    "participationtypemask": 1,
                    "partyid_systemuser@odata.bind": f"/systemusers({sender_user})",
                },
                {"participationtypemask": 2, "addressused": to},
            ],
        }
        created = session.post(
            f"{self.api_url}emails", json=entity, headers=headers, timeout=30, verify=ca
        )
        created.raise_for_status()
        email_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
        sent = session.post(
            f"{self.api_url}emails({email_id})/Microsoft.Dynamics.CRM.SendEmail",
            json={"IssueSend": True, "TrackingToken": ""},
            headers=headers,
            timeout=30,
            verify=ca,
        )
        sent.raise_for_status()
        return email_id

    def token(self) -> str:
        response = requests.post(
            f"{self.authority}/oauth2/v2.0/token",
            verify=str(self.ca_path),
            timeout=30,
            data={
                "client_id": "sim-admin",
                "client_secret": "x",
                "grant_type": "client_credentials",
                "scope": f"{self.org_url}/.default",
            },
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


_DEFAULT_FAULTS = {
    "latency_ms": 0,
    "latency_max_ms": 0,
    "rate_429": 0,
    "rate_503": 0,
    "retry_after_min": 1,
    "retry_after_max": 1,
    "max_concurrent": 0,
    "token_lifetime": 3599,
    "reject_message_ids": [],
    "token_error": False,
    "reject_tokens": False,
}


@contextmanager
def start_simulator(workdir: Path, *extra: str) -> Iterator[SimulatorServer]:
    """Run ``python -m router.crm.simulator`` on a free port until the block ends."""
    port, ca_path = free_port(), workdir / "crm-sim-ca.pem"
    log = (workdir / "crm-sim.log").open("wb")
    args = [
        sys.executable,
        "-m",
        "router.crm.simulator",
        "--port",
        str(port),
        "--ca-out",
        str(ca_path),
        "--tenant",
        TENANT,
        "--exit-with-parent",
        *extra,
    ]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_for(lambda: port_open(port) and ca_path.exists(), timeout=20):
            raise RuntimeError(f"crm-sim did not start: {(workdir / 'crm-sim.log').read_text()}")
        yield SimulatorServer(port, ca_path, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


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
