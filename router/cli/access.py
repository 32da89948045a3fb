"""``email-router test-access``: can the router reach each CRM and mailbox with its credentials?

Use :func:`run` from the CLI. For each Deployment (or the one named by ``--deployment``) it
gets a token (Dataverse) and makes the cheapest authenticated call, WhoAmI; for each enabled
provider instance (or the one named by ``--instance``) it connects and logs in, then runs the
provider's own steps (:meth:`~router.providers.base.Provider.access_steps`: e.g. Graph's token,
mailbox, folders and send permission). It prints one clear line per step with a
hint when something fails. The state store is not opened: checking credentials must work before
Redis/SQLite is set up. Exit 0 when every check passed, 1 when one failed, 2 for configuration
errors. :func:`check` and :func:`check_instance` check one Deployment or instance (``mailboxes
test`` calls them too; the console runs this command).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from router.config import Configuration, Deployment, ProviderConfiguration, Settings
from router.configcheck import load_config
from router.crm.base import CrmAdapter
from router.crm.dataverse import DataverseAdapter, DataverseOptions
from router.crm.dataverse_http import RetryPolicy
from router.crm.factory import make_crm
from router.errors import (
    AuthError,
    ConfigError,
    CrmAuthError,
    CrmError,
    CrmRejected,
    CrmUnavailable,
    RetryableError,
    RouterError,
)
from router.providers.base import AccessStep, Provider
from router.providers.registry import resolve

HINTS: dict[type[CrmError], str] = {
    CrmAuthError: "fix <ClientId>/<ClientSecret>/<TenantId>/<Authority>, or add the app as an "
    "application user of the organisation",
    CrmUnavailable: "check the network, <CrmServerUrl>/<Authority> and <CaBundle>",
    CrmRejected: "the application user lacks a privilege (security role) or the URL is wrong",
}


#: What to fix when a mail server or Graph refuses (by the router error's kind).
PROVIDER_HINTS: dict[type[RouterError], str] = {
    AuthError: "fix <EmailUser>/<EmailPassword> (for Graph and XOAUTH2: tenant_id, "
    "client_id, the client secret and the app's permissions) or the ca_bundle",
    RetryableError: "check <EmailServer>/<EmailPort>, the network, and try again",
}


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Check the selected Deployments and instances; return the exit code."""
    path = Path(args.config) if args.config else Settings().config
    config = load_config(path)
    deployments, instances = _selected(config, args, path)
    if not deployments and not instances:
        raise ConfigError(f"{path}: no <Deployment> to check")
    results = [check(dep, out) for dep in deployments]
    results += [check_instance(cfg, out) for cfg in instances]
    return 0 if all(results) else 1


def _selected(
    config: Configuration, args: argparse.Namespace, path: Path
) -> tuple[tuple[Deployment, ...], tuple[ProviderConfiguration, ...]]:
    """``--instance`` alone, ``--deployment`` alone, or every Deployment and enabled instance."""
    try:
        if args.instance:
            return (), (config.provider(args.instance),)
        if args.deployment:
            return (config.deployment(args.deployment),), ()
    except KeyError as exc:
        raise ConfigError(f"{path}: {exc.args[0]}") from None
    return config.deployments, tuple(p for p in config.providers if p.enabled)


def check(dep: Deployment, out: Callable[[str], None] = print) -> bool:
    """Token and WhoAmI for one Deployment; prints what happened."""
    out(f"Deployment {dep.name}: {dep.adapter} at {dep.crm_server_url}")
    crm = _adapter(dep)
    steps: list[tuple[str, Callable[[], str | None]]] = [
        ("token", crm.check_credentials),
        ("WhoAmI", lambda: f"ok, user id {crm.who_am_i()}"),
    ]
    try:
        return all(_step(out, name, action) for name, action in steps)  # stops at a failure
    finally:
        crm.close()


def adapter_for(dep: Deployment) -> CrmAdapter:
    """The adapter a command someone waits on uses: short timeouts, few retries."""
    return _adapter(dep)


def _adapter(dep: Deployment) -> CrmAdapter:
    if dep.adapter == "dataverse":  # fail fast: a person is waiting for the answer
        quick = DataverseOptions(
            connect_timeout=5, read_timeout=30, retry=RetryPolicy(max_attempts=2)
        )
        return DataverseAdapter.from_deployment(dep, quick)
    return make_crm(dep)


def _step(out: Callable[[str], None], name: str, action: Callable[[], str | None]) -> bool:
    """Run one check and print its line (none for a step the adapter does not have)."""
    try:
        done = action()
        if done is not None:
            out(f"  {name}: {done}")
        return True
    except CrmError as exc:
        hint = next((h for kind, h in HINTS.items() if isinstance(exc, kind)), "")
        out(f"  {name}: FAILED - {exc}")
        if hint:
            out(f"    hint: {hint}")
        return False


# -- provider instances ---------------------------------------------------------------------------
def check_instance(cfg: ProviderConfiguration, out: Callable[[str], None] = print) -> bool:
    """Connect and log in (and the provider's own steps) for one instance; prints the lines."""
    mailbox = cfg.email_user or cfg.email_address or "-"
    out(f"Instance {cfg.name}: {cfg.provider_class} {cfg.direction.value}, mailbox {mailbox}")
    try:
        provider = resolve(cfg.provider_class, cfg.direction)(cfg)
    except ConfigError as exc:
        out(f"  configuration: FAILED - {exc}")
        return False
    steps = [AccessStep("connect", lambda: _opened(provider)), *provider.access_steps()]
    try:
        return all(_provider_step(out, step) for step in steps)  # stops at a failure
    finally:
        provider.close()


def _opened(provider: Provider) -> str:
    provider.open()
    return "ok, connected and logged in"


def _provider_step(out: Callable[[str], None], step: AccessStep) -> bool:
    try:
        out(f"  {step.name}: {step.run()}")
        return True
    except RouterError as exc:
        out(f"  {step.name}: FAILED - {exc}")
        hint = next((h for kind, h in PROVIDER_HINTS.items() if isinstance(exc, kind)), "")
        if hint:
            out(f"    hint: {hint}")
        return False
