"""``email-router console``: serve the operations console (:mod:`router.console`).

Use :func:`add_parser` (registered in :data:`router.cli.REGISTRARS`) and :func:`run`. It refuses
to start without ``ROUTER_CONSOLE_USER`` and ``ROUTER_CONSOLE_PASSWORD`` (or ``..._FILE``) -
exit 2, the rule Flower follows - opens the configuration and the state store like every other
command (``--config``, ``--state``), checks the audit log can be written, and serves on
127.0.0.1:8090 unless ``--host`` / ``--port`` say otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from router.cli.common import config_file, open_cli_context
from router.console.app import create_app, serve
from router.console.audit import AuditLog, default_path
from router.console.hub import ConsoleHub
from router.console.settings import credentials, load_console_settings, session_key
from router.errors import ConfigError
from router.websurface import DEFAULT_ADDRESS

#: Port of the console unless ``--port`` says otherwise.
DEFAULT_PORT = 8090


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``email-router console`` and its options."""
    p = sub.add_parser(
        "console",
        help="serve the operations web console (instances, quarantine, actions)",
        description="Serve the operations console. Needs ROUTER_CONSOLE_USER and "
        "ROUTER_CONSOLE_PASSWORD (or ROUTER_CONSOLE_PASSWORD_FILE); exit 2 without them.",
    )
    p.add_argument("--config", "-c", metavar="PATH", help="configuration file")
    p.add_argument("--state", metavar="URL", help="state store URL (overrides the config)")
    p.add_argument("--host", default=DEFAULT_ADDRESS, help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: any)")
    p.add_argument(
        "--audit-log",
        type=Path,
        metavar="PATH",
        help="audit log file (default: $ROUTER_CONSOLE_AUDIT_LOG, else console-audit.jsonl "
        "next to a SQLite state store, else in the working directory)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve the console until SIGTERM / Ctrl-C; return the exit code."""
    settings = load_console_settings()
    creds = credentials(settings)  # ConfigError (exit 2) without them, before anything opens
    ctx = open_cli_context(args, read_only=False, loaded=False)  # the hub follows the lists
    url = args.state or ctx.settings.state_url or ctx.config.system.state_store
    audit = AuditLog(args.audit_log or settings.audit_log or default_path(url))
    hub = ConsoleHub(config_file(args.config), ctx.config, ctx.store, ctx.settings, audit)
    try:
        _check_audit(audit)
        print(f"console audit log: {audit.path}", flush=True)
        app = create_app(hub, creds, session_key(settings), secure_cookie=settings.secure_cookie)
        serve(app, args.host, args.port)
    finally:
        hub.close()
    return 0


def _check_audit(audit: AuditLog) -> None:
    try:
        audit.check_writable()
    except OSError as exc:
        raise ConfigError(f"cannot write the audit log {audit.path}: {exc.strerror}") from None
