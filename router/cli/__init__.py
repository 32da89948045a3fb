"""The ``email-router`` command.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets ``func``
to ``cmd_<name>(args) -> int`` (the exit code). Exit codes: 0 success, 1 the operation failed,
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from router.cli.console import add_parser as _add_console
from router.cli.graphsim import register as _add_graph_sim
from router.cli.mailboxes import register as _add_mailboxes
from router.cli.watch import register as _add_watch
from router.errors import ConfigError, RouterError, StateUnavailable, action_of

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

#: What an operator reads after an error, by what the router does about it (errors.action_of).
_NEXT_STEP = {
    "retry": "temporary: nothing was lost, the next cycle retries",
    "stop": "the instance stops until its configuration or credentials are fixed",
    "quarantine": "the message was set aside; see `email-router quarantine list`",
    "crash": "unexpected",
}


#: What to check when the state store does not answer.
_STORE_HINT = "check that it runs and that --state, ROUTER_STATE_URL or <StateStore> names it"


def _version() -> str:
    try:
        return version("dataverse-email-router")
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


def _add_state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", metavar="URL", help="state store URL (overrides the config)")


def _store_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--state``: what every command that reads the state store takes."""
    _add_config_arg(parser)
    _add_state_arg(parser)


# Each entry registers one subcommand; helpers append to this list.
REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (each ``_add_<name>`` in :data:`REGISTRARS`)."""
    parser = argparse.ArgumentParser(
        prog="email-router",
        description="Move mail between IMAP/POP3/SMTP or Microsoft Graph and Dynamics 365.",
    )
    parser.add_argument("--version", action="version", version=f"email-router {_version()}")
    parser.set_defaults(func=None)  # no subcommand: print the help
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``email-router`` entry point: run the subcommand, map errors to exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = args.func
    if func is None:  # no subcommand (or a group without its action): print that help
        getattr(args, "help_of", parser).print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return _run(func, args)
    except BrokenPipeError:  # the reader went away (`status --json | head -1`): stop quietly
        _silence_stdout()
        return EXIT_FAILED


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run the subcommand; print what went wrong and what to do as one line, no traceback."""
    try:
        _setup_logging()
        if "config" in vars(args) and not getattr(args, "path", None):
            from router.cli.common import config_file

            config_file(args.config)  # a missing file names --config and ROUTER_CONFIG
        code = int(func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside main, not at interpreter exit
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except StateUnavailable as exc:
        hint = "" if "--state" in str(exc) else f" ({_STORE_HINT})"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except RouterError as exc:
        print(f"error: {exc} ({_NEXT_STEP[action_of(exc)]})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (a test's capture): nothing to flush
        pass


def _setup_logging() -> None:
    # Redacting handler for every command; `run` and the worker reconfigure with <LogLevel>.
    from router.config import load_settings
    from router.logsetup import ensure_logging

    settings = load_settings()
    ensure_logging(settings.log_level, settings.log_format)


# -- poll ---------------------------------------------------------------------------------------
def _add_poll(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("poll", help="run one poll cycle of an incoming instance in the foreground")
    p.add_argument("name", help="ProviderConfiguration Name of an incoming instance")
    _add_config_arg(p)
    _add_state_arg(p)
    p.add_argument(
        "--no-deliver",
        action="store_true",
        help="only stage messages; leave CRM delivery to a worker",
    )
    p.set_defaults(func=cmd_poll)


def cmd_poll(args: argparse.Namespace) -> int:
    """Run ``email-router poll`` with the parsed ``args``; return the exit code."""
    from router.context import open_context
    from router.incoming import poll_instance
    from router.report import format_report

    ctx = open_context(args.config, state_url=args.state)
    try:
        report = poll_instance(ctx, args.name, deliver=not args.no_deliver)
    finally:
        ctx.close()
    print(format_report(report))
    return EXIT_OK if report.error is None else EXIT_FAILED


REGISTRARS.append(_add_poll)


# -- send ---------------------------------------------------------------------------------------
def _add_send(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("send", help="run one send cycle of an outgoing instance in the foreground")
    p.add_argument("name", help="ProviderConfiguration Name of an outgoing instance")
    _add_config_arg(p)
    _add_state_arg(p)
    p.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    """Run ``email-router send`` with the parsed ``args``; return the exit code."""
    from router.cli.send import run

    return run(args)


REGISTRARS.append(_add_send)


# -- quarantine ---------------------------------------------------------------------------------
def _add_quarantine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from router.cli.quarantine import add_subcommands

    p = sub.add_parser(
        "quarantine",
        help="list, show, replay or drop quarantined messages",
        description="Messages set aside after an error: list them, show one (headers and "
        "reason), replay them once the cause is fixed, or drop one for good.",
    )
    p.set_defaults(func=None, help_of=p)
    add_subcommands(p.add_subparsers(dest="action", metavar="ACTION"), _store_args)


REGISTRARS.append(_add_quarantine)


# -- validate -----------------------------------------------------------------------------------
def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check the configuration file and list its instances",
        description="Check the configuration file: exit 0 and list the instances, or exit 2 "
        "and print every problem as FILE:LINE: <Element>: what is wrong.",
    )
    _add_config_arg(p)
    p.add_argument("path", nargs="?", metavar="PATH", help="configuration file (same as --config)")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Run ``email-router validate`` with the parsed ``args``; return the exit code."""
    from router.cli.validate import run

    return run(args)


REGISTRARS.append(_add_validate)


# -- run / status ---------------------------------------------------------------------------------
def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run every instance in this process (SQLite state, no Redis)")
    _add_config_arg(p)
    _add_state_arg(p)
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: $ROUTER_METRICS_PORT)",
    )
    p.add_argument(
        "--metrics-addr",
        metavar="ADDR",
        help="address for the metrics server (default: $ROUTER_METRICS_ADDR, else 127.0.0.1); "
        "scrapers send $ROUTER_METRICS_TOKEN (or the text of $ROUTER_METRICS_TOKEN_FILE) as a "
        "bearer token",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for running cycles (default 30)",
    )
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run ``email-router run`` with the parsed ``args``; return the exit code."""
    from router.runtime.standalone import main as run_main

    return run_main(
        args.config,
        args.state,
        duration=args.duration,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        shutdown_grace=args.shutdown_grace,
    )


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show every instance: last poll, backlog, errors, lease")
    _add_config_arg(p)
    _add_state_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Run ``email-router status`` with the parsed ``args``; return the exit code."""
    from router.cli.status import main as status_main

    return status_main(args.config, args.state, as_json=args.json)


REGISTRARS += [_add_run, _add_status]


# -- state --------------------------------------------------------------------------------------
def _add_state(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from router.cli.state import add_subcommands

    p = sub.add_parser(
        "state",
        help="show or reset the stored state (cursor, lease, ledger)",
        description="Look at what the state store holds per instance, or forget a cursor.",
    )
    p.set_defaults(func=None, help_of=p)
    add_subcommands(p.add_subparsers(dest="action", metavar="ACTION"), _store_args)


REGISTRARS.append(_add_state)


# -- crm-sim / test-access (Dataverse simulator, credentials check) -------------------------


def _add_crm_sim(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from router.crm.simulator.__main__ import add_arguments

    p = sub.add_parser(
        "crm-sim",
        help="run the Dataverse Web API simulator (HTTPS, for tests and demos)",
        description="Serve a Dataverse Web API subset, the token endpoint and the OIDC document "
        "MSAL needs, over HTTPS with a generated CA; admin page at /_admin/.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_crm_sim)


def cmd_crm_sim(args: argparse.Namespace) -> int:
    """Run ``email-router crm-sim`` with the parsed ``args``; return the exit code."""
    from router.crm.simulator.__main__ import run

    return run(args)


REGISTRARS.append(_add_crm_sim)
REGISTRARS.append(_add_graph_sim)
REGISTRARS.append(_add_watch)
REGISTRARS.append(_add_mailboxes)


def _add_test_access(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test-access",
        help="check the credentials of each Deployment (token + WhoAmI) and mailbox instance",
        description="Get a token and call WhoAmI for each Deployment (or --deployment NAME), "
        "and log in to the mailbox of each enabled instance (or --instance NAME); "
        "exit 0 when all work, 1 when one fails, 2 for configuration errors.",
    )
    _add_config_arg(p)
    p.add_argument("--deployment", "-d", metavar="NAME", help="check only this Deployment")
    p.add_argument("--instance", "-i", metavar="NAME", help="check only this instance")
    p.set_defaults(func=cmd_test_access)


def cmd_test_access(args: argparse.Namespace) -> int:
    """Run ``email-router test-access`` with the parsed ``args``; return the exit code."""
    from router.cli.access import run

    return run(args)


REGISTRARS.append(_add_test_access)

REGISTRARS.append(_add_console)
