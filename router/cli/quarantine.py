"""``email-router quarantine list|show|replay|drop``: the subcommands and their output.

Each action is a real subcommand with its own ``--help`` and options (:func:`add_subcommands`);
``list`` and ``show`` only read, so they never create a state store.

``list`` also names the outbound emails set aside as ambiguous (a sender without a commit point
was cut short while handing them over): they are under the instance that claimed them, with
the reason "may or may not have been sent", and are never sent again by the router.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable

from router import quarantine
from router.cli.common import open_cli_context
from router.console.model import header_fields
from router.context import Context
from router.errors import ConfigError
from router.ledger import OUTBOUND, OutboundLedger
from router.ledger.outgoing import claimant
from router.models import LedgerEntry, LedgerState
from router.report import format_report


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    store_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Declare ``list``, ``show``, ``replay`` and ``drop``; ``store_args`` adds --config/--state."""
    p = sub.add_parser("list", help="list the quarantined messages (read-only)")
    p.add_argument("instance", nargs="?", help="only this instance")
    _done(p, store_args, "list")
    p = sub.add_parser("show", help="show one message's headers and reason (read-only)")
    _target_args(p)
    _done(p, store_args, "show")
    p = sub.add_parser("replay", help="process messages again once the cause is fixed")
    p.add_argument("instance", nargs="?", help="instance name (with --all: only this instance)")
    p.add_argument("key", nargs="?", help="ledger key of the message (see `quarantine list`)")
    p.add_argument("--all", action="store_true", help="every quarantined message, one by one")
    _done(p, store_args, "replay")
    p = sub.add_parser("drop", help="forget one message for good")
    _target_args(p)
    p.add_argument("--yes", action="store_true", help="confirm: the message cannot come back")
    _done(p, store_args, "drop")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance", help="instance name (ProviderConfiguration Name)")
    p.add_argument("key", help="ledger key of the message (see `quarantine list`)")


def _done(
    p: argparse.ArgumentParser, store_args: Callable[[argparse.ArgumentParser], None], action: str
) -> None:
    store_args(p)
    p.set_defaults(func=run, action=action)


def run(args: argparse.Namespace) -> int:
    """``email-router quarantine list|show|replay|drop``; return the exit code."""
    ctx = open_cli_context(args, read_only=args.action in ("list", "show"))
    try:
        return int(_ACTIONS[args.action](ctx, args))
    finally:
        ctx.close()


def _list(ctx: Context, args: argparse.Namespace) -> int:
    inbound = [i for i in quarantine.list_items(ctx, args.instance) if i.entry.instance != OUTBOUND]
    outbound = _ambiguous_emails(ctx, args.instance)
    print(f"{'INSTANCE':<20} {'KEY':<24} {'SINCE':<20} {'BYTES':>9}  REASON")
    for item in inbound:
        size = str(item.size) if item.size is not None else "-"
        _line(item.entry.instance, item.entry, size)
    for entry in outbound:
        _line(claimant(entry) or OUTBOUND, entry, "-")
    print(f"{len(inbound)} quarantined message(s)")
    if outbound:
        print(f"{len(outbound)} outbound email(s) that may or may not have been sent")
    return 0


def _ambiguous_emails(ctx: Context, instance: str | None) -> list[LedgerEntry]:
    """Outbound emails set aside as ambiguous (of the instance that claimed them, if named)."""
    entries = OutboundLedger(ctx.store).entries(LedgerState.QUARANTINED)
    return [e for e in entries if instance is None or claimant(e) == instance]


def _line(instance: str, e: LedgerEntry, size: str) -> None:
    since = dt.datetime.fromtimestamp(e.updated_at).strftime("%Y-%m-%d %H:%M:%S")
    print(f"{instance:<20} {e.key:<24} {since:<20} {size:>9}  {e.reason or ''}")


def _show(ctx: Context, args: argparse.Namespace) -> int:
    item = quarantine.get_item(ctx, *_target(args))
    e = item.entry
    for label, value in (
        ("instance", e.instance),
        ("key", e.key),
        ("reason", e.reason),
        ("message-id", e.message_id),
        ("bytes kept", item.size),
    ):
        print(f"{label:>11}: {value if value is not None else '-'}")
    raw = ctx.store.get_raw(e.instance, e.key) if item.has_raw else None
    if raw is not None:  # the headers only: the body stays in the store
        print("\nheaders:")
        for name, value in header_fields(raw):
            print(f"  {name}: {value}")
    return 0


def _replay(ctx: Context, args: argparse.Namespace) -> int:
    if args.all:
        items = quarantine.list_items(ctx, args.instance)
        targets = [(i.entry.instance, i.entry.key) for i in items if i.entry.instance != OUTBOUND]
    else:
        targets = [_target(args)]
    if any(instance == OUTBOUND for instance, _ in targets):
        raise ConfigError(
            "an outbound email that may or may not have been sent is never sent again by the"
            " router: check with its recipients, then resend it from the CRM if needed"
        )
    failed = 0
    for n, (instance, key) in enumerate(targets, 1):
        report = quarantine.replay(ctx, instance, key)
        prefix = f"[{n}/{len(targets)}] {instance}/{key}: " if args.all else ""
        print(prefix + format_report(report), flush=True)
        failed += report.quarantined
    if args.all:
        print(
            f"replayed {len(targets)} message(s): {len(targets) - failed} out of quarantine, "
            f"{failed} still quarantined"
        )
    return 0 if failed == 0 else 1


def _drop(ctx: Context, args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError("quarantine drop forgets the message for good; add --yes to confirm")
    instance, key = _target(args)
    quarantine.drop(ctx, instance, key)
    print(f"dropped {instance}/{key}")
    return 0


def _target(args: argparse.Namespace) -> tuple[str, str]:
    if not args.instance or not args.key:
        raise ConfigError(
            f"quarantine {args.action} needs INSTANCE and KEY (see `quarantine list`)"
        )
    return args.instance, args.key


_ACTIONS = {"list": _list, "show": _show, "replay": _replay, "drop": _drop}
