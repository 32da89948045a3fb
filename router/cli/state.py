"""``email-router state show|reset``: look at or forget what the state store holds per instance.

Use :func:`snapshot` for the data of one instance (lease, cursor, provider state, counters, ledger
counts) and :func:`reset` to forget an instance's cursor and provider state. ``reset`` takes the
instance's lease first, so it refuses while a worker is polling that mailbox, and the new fencing
token stops a stalled poller from writing its old cursor back afterwards.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from router.cli.common import open_cli_context
from router.config import is_internal_name
from router.context import Context
from router.errors import ConfigError, StateError, StateUnavailable
from router.ledger import take_operator_lease
from router.state.base import StateStore

#: Longest cursor / provider state shown by the text output (``--json`` prints everything).
SHOW_CHARS = 300


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    store_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Declare ``show`` and ``reset``; ``store_args`` adds --config/--state."""
    p = sub.add_parser("show", help="print what the store holds for instances (read-only)")
    p.add_argument("name", nargs="?", help="instance name (ProviderConfiguration Name)")
    p.add_argument("--all", action="store_true", help="every instance instead of NAME")
    p.add_argument(
        "--internal",
        action="store_true",
        help="with --all: also the router's own entries (_outbound, NAME#deliver)",
    )
    p.add_argument("--json", action="store_true", help="print JSON, nothing truncated")
    store_args(p)
    p.set_defaults(func=run, action="show")
    p = sub.add_parser("reset", help="forget an instance's cursor: the next poll starts over")
    p.add_argument("name", help="instance name (ProviderConfiguration Name)")
    p.add_argument("--yes", action="store_true", help="confirm the reset")
    store_args(p)
    p.set_defaults(func=run, action="reset")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``state show`` / ``state reset`` (``args`` as their parsers declare)."""
    ctx = open_cli_context(args, read_only=args.action == "show")
    try:
        if args.action == "show":
            return show(ctx, _names(ctx, args), as_json=args.json)
        if not args.yes:
            raise ConfigError(
                f"state reset forgets the cursor of {args.name}: the next poll reads the whole "
                "mailbox again (the ledger still prevents duplicates); add --yes to confirm"
            )
        return reset(ctx.store, args.name)
    finally:
        ctx.close()


def _names(ctx: Context, args: argparse.Namespace) -> list[str]:
    configured = [p.name for p in ctx.config.providers]
    if args.all:
        stored = [n for n in ctx.store.instances() if n not in configured]
        return configured + [n for n in stored if args.internal or not is_internal_name(n)]
    if not args.name:
        raise ConfigError("state show needs an instance NAME or --all")
    if args.name not in configured and args.name not in ctx.store.instances():
        raise ConfigError(f"state show: no instance named {args.name!r} in the configuration")
    return [args.name]


def snapshot(store: StateStore, name: str) -> dict[str, Any]:
    """Everything the store holds about ``name`` (a damaged value shows as an error string)."""
    lease = store.get_lease(name)
    stats = store.get_stats(name)
    return {
        "instance": name,
        "lease": None
        if lease is None
        else {"holder": lease.holder, "token": lease.token, "expires_at": lease.expires_at},
        "cursor": _safe(store.get_cursor, name),
        "provider_state": _safe(store.get_provider_state, name),
        "counters": {
            "processed": stats.processed,
            "last_poll": stats.last_poll,
            "last_success": stats.last_success,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
        },
        "ledger": {state.value: n for state, n in sorted(store.count_entries(name).items())},
    }


def _safe(read: Any, name: str) -> Any:
    try:
        return read(name)
    except StateUnavailable:
        raise
    except StateError as exc:
        return f"<damaged: {exc}>"


def show(ctx: Context, names: list[str], *, as_json: bool = False) -> int:
    """Print the snapshots of ``names`` (text blocks, or JSON); exit code 0."""
    snaps = [snapshot(ctx.store, name) for name in names]
    if as_json:
        print(json.dumps(snaps, indent=2, sort_keys=True))
    else:
        print("\n\n".join(format_snapshot(s) for s in snaps) or "no instances")
    return 0


def format_snapshot(snap: dict[str, Any]) -> str:
    """The text block ``state show`` prints for one instance."""
    c = snap["counters"]
    ledger = " ".join(f"{s}={n}" for s, n in snap["ledger"].items()) or "empty"
    rows = [
        ("lease", _lease_text(snap["lease"])),
        ("cursor", _json_text(snap["cursor"])),
        ("provider state", _json_text(snap["provider_state"])),
        ("processed", str(c["processed"])),
        ("last poll", _when(c["last_poll"])),
        ("last success", _when(c["last_success"])),
        (
            "last error",
            f"{c['last_error']} ({_when(c['last_error_at'])})" if c["last_error"] else "-",
        ),
        ("ledger", ledger),
    ]
    return f"{snap['instance']}\n" + "\n".join(f"  {k + ':':<16}{v}" for k, v in rows)


def _lease_text(lease: dict[str, Any] | None) -> str:
    if lease is None:
        return "free"
    left = lease["expires_at"] - time.time()
    return f"held by {lease['holder']} (token {lease['token']}, {max(left, 0):.1f} s left)"


def _json_text(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if len(text) <= SHOW_CHARS:
        return text
    return f"{text[:SHOW_CHARS]}... ({len(text)} chars; --json shows all)"


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def reset(store: StateStore, name: str) -> int:
    """Forget cursor and provider state of ``name`` under its lease; 1 while someone polls it."""
    lease = take_operator_lease(store, name, "state-reset")
    if lease is None:
        holder = store.get_lease(name)
        who = holder.holder if holder else "another worker"
        print(f"{name} is being worked on by {who}; stop it or try again later")
        return 1
    try:
        store.reset_instance(name)
    finally:
        store.release_lease(lease)
    print(f"{name}: cursor and provider state forgotten; the next poll starts over")
    return 0
