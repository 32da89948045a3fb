"""The ``email-router`` command.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets ``func``
to ``cmd_<name>(args) -> int`` (the exit code). Exit codes: 0 success, 1 the operation failed,
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from router.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _version() -> str:
    try:
        return version("email-router")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=None,
        help="configuration file (default: $ROUTER_CONFIG, else ./router.xml)",
    )


# Each entry registers one subcommand; helpers append to this list.
REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="email-router",
        description="Move mail between POP3/IMAP/SMTP servers and Dynamics 365 / Dataverse.",
    )
    parser.add_argument("--version", action="version", version=f"email-router {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
