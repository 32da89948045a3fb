"""``email-router validate``: check the configuration file and show the instances it defines.

Exit 0 with a table of the instances, then one ``LoadMailboxes: <Deployment> -> profile P,
direction D`` line per ``<LoadMailboxes>`` (the CRM is not asked: its mailboxes are listed by
``email-router mailboxes load``); exit 2 with every problem on stderr, one per line, as
``FILE:LINE: <Element>: what is wrong`` (the CLI prints the ConfigError's problems). Warnings
about a valid file (``FILE:LINE: <Element>: warning: ...``) go to stderr and keep exit 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router.cli.common import config_file
from router.config import Configuration, ProviderConfiguration, load_settings
from router.configcheck import load_config
from router.errors import ConfigError

COLUMNS = ("NAME", "CLASS", "DIRECTION", "SERVER", "POLL(s)", "ENABLED", "DEPLOYMENT")


def run(args: argparse.Namespace) -> int:
    """Validate the file named by the arguments (positional, --config, $ROUTER_CONFIG)."""
    path = config_file(str(config_path(args.path, args.config)))
    warnings: list[str] = []
    config = load_config(path, warnings=warnings)
    for line in [*warnings, *state_warnings(path, config)]:
        print(line, file=sys.stderr)
    print(instance_table(config))
    for line in load_lines(config):
        print(line)
    count, deps = len(config.providers), len(config.deployments)
    print(f"\n{path}: OK, {count} instance(s), {deps} deployment(s)")
    return 0


def load_lines(config: Configuration) -> list[str]:
    """One line per ``<LoadMailboxes>``: its instances come from the CRM when a runtime runs,
    so the file alone cannot list them (``email-router mailboxes load`` does, from the CRM)."""
    return [
        f"LoadMailboxes: {dep.name} -> profile {load.profile}, direction {load.direction}"
        for dep in config.deployments
        for load in dep.load_mailboxes
    ]


def state_warnings(path: Path, config: Configuration) -> list[str]:
    """A warning when ``<StateStore>`` is a relative ``sqlite:///`` path: it would be resolved
    against whatever directory each command runs in, so two commands could see two stores."""
    url = config.system.state_store
    if not url.startswith("sqlite:///"):
        return []
    database = url.removeprefix("sqlite:///").partition("?")[0]
    if not database or database == ":memory:" or Path(database).is_absolute():
        return []
    lines = path.read_text(errors="replace").splitlines()
    line = next((n for n, text in enumerate(lines, 1) if "<StateStore" in text), 0)
    if not line:  # the default, not this file's choice (ROUTER_STATE_URL usually sets it)
        return []
    return [
        f"{path}:{line}: <StateStore>: warning: {database!r} is relative to the working "
        "directory of each command: use an absolute path, e.g. "
        f"sqlite:///{Path(database).resolve()}"
    ]


def config_path(positional: str | None, option: str | None) -> Path:
    """The file to check: the positional path, else --config, else ROUTER_CONFIG/router.xml."""
    if positional and option and Path(positional) != Path(option):
        raise ConfigError(
            "usage", [f"give the file once: {positional!r} and --config {option!r} differ"]
        )
    chosen = positional or option
    return Path(chosen) if chosen else load_settings().config


def instance_table(config: Configuration) -> str:
    """A plain-text table, one row per ProviderConfiguration, columns aligned."""
    rows = [COLUMNS, *(_row(p) for p in config.providers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(p: ProviderConfiguration) -> tuple[str, ...]:
    server = p.email_server or "-"
    if p.email_port:
        server = f"{server}:{p.email_port}"
    return (
        p.name,
        p.provider_class,
        p.direction.value,
        server,
        f"{p.polling_seconds:g}",
        "yes" if p.enabled else "no",
        p.deployment or "-",
    )
