"""The Graph simulator (``python -m router.graph.simulator``) as a subprocess, for tests.

Use :func:`start_graph_simulator` to run one on a free port (HTTPS, its own CA) for the length
of a ``with`` block; the :class:`GraphSimulator` it yields gives the URLs a graph instance
needs (``.base_url`` ending ``/v1.0``, ``.authority``, ``.ca_path``), builds a ready
``ProviderConfiguration`` (``.provider_config``) and wraps the ``/admin`` API: add messages,
list folders and what was sent, faults, the request log.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from router.config import Parameter, Parameters, ProviderConfiguration, Secret
from router.models import Direction
from router.testing.servers import https_test_server

TENANT, CLIENT_ID, CLIENT_SECRET = "graph-sim-tenant", "graph-sim-client", "graph-sim-secret"

DEFAULT_FAULTS: dict[str, Any] = {
    "rate_429": 0.0,
    "rate_503": 0.0,
    "retry_after": 1.0,
    "max_concurrent": 4,
    "latency_ms": 0.0,
    "op_latency_ms": 0.0,
    "token_lifetime": 3599,
    "enforce_send_as": True,
}


@dataclass(frozen=True)
class GraphSimulator:
    """A running Graph simulator (see the module docstring)."""

    port: int
    ca_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, compare=False)

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``<EmailServer>`` of a graph instance."""
        return f"{self.origin}/v1.0"

    @property
    def authority(self) -> str:
        return f"{self.origin}/{TENANT}"

    def provider_config(
        self, mailbox: str, name: str = "graph-in", **fields: Any
    ) -> ProviderConfiguration:
        """A graph instance of ``mailbox`` against this simulator (``fields`` override)."""
        params = {
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "authority": self.authority,
            "ca_bundle": str(self.ca_path),
            **fields.pop("parameters", {}),
        }
        values: dict[str, Any] = {
            "name": name,
            "provider_class": "graph",
            "direction": Direction.INCOMING,
            "email_server": self.base_url,
            "email_user": mailbox,
            "email_password": Secret(value=CLIENT_SECRET),
            "parameters": Parameters(
                items=tuple(Parameter(name=k, value=str(v)) for k, v in params.items())
            ),
        }
        values.update(fields)
        return ProviderConfiguration(**values)

    # -- admin API ---------------------------------------------------------------------------

    def admin(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        response = requests.request(
            method,
            f"{self.origin}/admin/{path.lstrip('/')}",
            json=json,
            params=params,
            verify=str(self.ca_path),
            timeout=60,
        )
        response.raise_for_status()
        return response.json()

    def add_messages(self, mailbox: str, raws: Sequence[bytes], folder: str = "inbox") -> list[str]:
        """Put raw MIME messages into a folder (created when missing); their Graph ids."""
        ids: list[str] = []
        for start in range(0, len(raws), 500):
            chunk = [base64.b64encode(r).decode("ascii") for r in raws[start : start + 500]]
            ids += self.admin("POST", f"mailboxes/{mailbox}/folders/{folder}/messages",
                              {"mime": chunk})["ids"]  # fmt: skip
        return ids

    def folder(self, mailbox: str, folder: str = "inbox") -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.admin(
            "GET", f"mailboxes/{mailbox}/folders/{folder}/messages"
        )
        return rows

    def sent(self, sender: str | None = None) -> list[dict[str, Any]]:
        params = {"sender": sender} if sender else {}
        rows: list[dict[str, Any]] = self.admin("GET", "sent", **params)
        return rows

    def request_log(self, mailbox: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since}
        if mailbox:
            params["mailbox"] = mailbox
        rows: list[dict[str, Any]] = self.admin("GET", "requests", **params)
        return rows

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("POST", "faults", changes)
        return result

    def reset_faults(self) -> None:
        self.set_faults(**DEFAULT_FAULTS)
        self.admin("POST", "faults/reset")

    def expire_delta(self, mailbox: str | None = None) -> int:
        return int(self.admin("POST", "expire-delta", {"mailbox": mailbox})["expired"])

    def revoke_tokens(self) -> int:
        return int(self.admin("POST", "revoke-tokens")["revoked"])

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "stats")
        return result


@contextmanager
def start_graph_simulator(workdir: Path, *extra: str) -> Iterator[GraphSimulator]:
    """Run ``python -m router.graph.simulator`` on a free port until the block ends."""
    args = ["--tenant", TENANT, "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
    module = "router.graph.simulator"
    with https_test_server("graph-sim", module, workdir, [*args, *extra]) as (proc, port, ca):
        yield GraphSimulator(port, ca, proc=proc)
