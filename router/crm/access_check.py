"""``email-router test-access``: can the router reach each Deployment's CRM with its credentials?

Use :func:`run` from the CLI. For each Deployment (or the one named by ``--deployment``) it
gets a token (Dataverse) and makes the cheapest authenticated call, WhoAmI, then prints one
clear line per step with a hint when something fails. The state store is not opened: checking
credentials must work before Redis/SQLite is set up. Exit 0 when every check passed, 1 when one
failed, 2 for configuration errors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from router.config import Deployment, Settings, load_config
from router.crm.base import CrmAdapter
from router.errors import ConfigError, CrmAuthError, CrmError, CrmRejected, CrmUnavailable

HINTS: dict[type[CrmError], str] = {
    CrmAuthError: "fix <ClientId>/<ClientSecret>/<TenantId>/<Authority>, or add the app as an "
    "application user of the organisation",
    CrmUnavailable: "check the network, <CrmServerUrl>/<Authority> and <CaBundle>",
    CrmRejected: "the application user lacks a privilege (security role) or the URL is wrong",
}


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Check the selected Deployments; return the exit code."""
    path = Path(args.config) if args.config else Settings().config
    config = load_config(path)
    deployments = config.deployments
    if args.deployment:
        try:
            deployments = (config.deployment(args.deployment),)
        except KeyError as exc:
            raise ConfigError(f"{path}: {exc.args[0]}") from None
    if not deployments:
        raise ConfigError(f"{path}: no <Deployment> to check")
    results = [check(dep, out) for dep in deployments]
    return 0 if all(results) else 1


def check(dep: Deployment, out: Callable[[str], None] = print) -> bool:
    """Token and WhoAmI for one Deployment; prints what happened."""
    out(f"Deployment {dep.name}: {dep.adapter} at {dep.crm_server_url}")
    crm = _adapter(dep)
    steps: list[tuple[str, Callable[[], str]]] = []
    if hasattr(crm, "tokens"):
        steps.append(("token", lambda: _token(crm)))
    steps.append(("WhoAmI", lambda: f"ok, user id {crm.who_am_i()}"))
    try:
        return all(_step(out, name, action) for name, action in steps)  # stops at a failure
    finally:
        crm.close()


def _token(crm: CrmAdapter) -> str:
    tokens = crm.tokens  # type: ignore[attr-defined]
    tokens.token()
    return f"ok from {tokens.authority} (client {tokens.client_id})"


def _adapter(dep: Deployment) -> CrmAdapter:
    if dep.adapter == "dataverse":
        from router.crm.dataverse import DataverseAdapter, DataverseOptions
        from router.crm.dataverse_http import RetryPolicy

        quick = DataverseOptions(
            connect_timeout=5, read_timeout=30, retry=RetryPolicy(max_attempts=2)
        )
        return DataverseAdapter.from_deployment(dep, quick)
    from router.service import make_crm

    return make_crm(dep)


def _step(out: Callable[[str], None], name: str, action: Callable[[], str]) -> bool:
    try:
        out(f"  {name}: {action()}")
        return True
    except CrmError as exc:
        hint = next((h for kind, h in HINTS.items() if isinstance(exc, kind)), "")
        out(f"  {name}: FAILED - {exc}")
        if hint:
            out(f"    hint: {hint}")
        return False
