"""``email-router validate``: check the configuration file and show the instances it defines.

Exit 0 with a table of the instances; exit 2 with every problem on stderr, one per line, as
``FILE:LINE: <Element>: what is wrong`` (the CLI prints the ConfigError's problems).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from router.config import Configuration, ProviderConfiguration, load_config, load_settings
from router.errors import ConfigError

COLUMNS = ("NAME", "CLASS", "DIRECTION", "SERVER", "POLL(s)", "ENABLED", "DEPLOYMENT")


def run(args: argparse.Namespace) -> int:
    """Validate the file named by the arguments (positional, --config, $ROUTER_CONFIG)."""
    path = config_path(args.path, args.config)
    config = load_config(path)
    print(instance_table(config))
    count, deps = len(config.providers), len(config.deployments)
    print(f"\n{path}: OK, {count} instance(s), {deps} deployment(s)")
    return 0


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
