"""The Dataverse simulator (``python -m router.crm.simulator``) as a subprocess, for tests.

Use :func:`start_simulator` to run one on a free port (HTTPS, its own CA) for the length of a
``with`` block; the :class:`SimulatorServer` it yields points a ``Deployment`` at it
(``.deployment()``), seeds pending outbound emails (``.seed_pending``, or ``.create_pending``
the Dataverse way) and reads back activities and requests (``.emails()``, ``.request_log()``)
through the simulator's ``/_admin`` API. The provider kit runs against it with
``pytest --provider-kit-crm=simulator``; the repository's own fixtures use it too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests

from router.config import Deployment, Secret
from router.testing.servers import https_test_server

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

    def add_rows(self, table: str, rows: list[dict[str, Any]]) -> list[str]:
        """Add rows to a directory table (``mailboxes``, ``queues``, ``systemusers``, ...)."""
        ids: list[str] = self.admin("POST", f"tables/{table}", {"org": self.org, "rows": rows})[
            "ids"
        ]
        return ids

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of a directory table of this organisation."""
        found: list[dict[str, Any]] = self.admin("GET", f"tables/{table}", org=self.org)
        return found

    def change_row(self, table: str, record_id: str, **columns: Any) -> None:
        """Change columns of one row, as an administrator would in the CRM."""
        self.admin("PATCH", f"tables/{table}/{record_id}", {"org": self.org, **columns})

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
    args = ["--tenant", TENANT, *extra]
    with https_test_server("crm-sim", "router.crm.simulator", workdir, args) as (proc, port, ca):
        yield SimulatorServer(port, ca, proc=proc)
