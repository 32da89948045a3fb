"""Output of ``email-router quarantine list|show|replay|drop`` (kept out of cli.py)."""

from __future__ import annotations

import argparse
import datetime as dt

from router import quarantine
from router.errors import ConfigError
from router.incoming import format_report
from router.service import Context, open_context


def run(args: argparse.Namespace) -> int:
    ctx = open_context(args.config, state_url=args.state)
    try:
        return int(_ACTIONS[args.action](ctx, args))
    finally:
        ctx.close()


def _list(ctx: Context, args: argparse.Namespace) -> int:
    items = quarantine.list_items(ctx, args.instance)
    print(f"{'INSTANCE':<20} {'KEY':<24} {'SINCE':<20} {'BYTES':>9}  REASON")
    for item in items:
        e = item.entry
        since = dt.datetime.fromtimestamp(e.updated_at).strftime("%Y-%m-%d %H:%M:%S")
        size = str(item.size) if item.size is not None else "-"
        print(f"{e.instance:<20} {e.key:<24} {since:<20} {size:>9}  {e.reason or ''}")
    print(f"{len(items)} quarantined message(s)")
    return 0


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
    return 0


def _replay(ctx: Context, args: argparse.Namespace) -> int:
    if args.all:
        targets = [
            (i.entry.instance, i.entry.key) for i in quarantine.list_items(ctx, args.instance)
        ]
    else:
        targets = [_target(args)]
    failed = 0
    for instance, key in targets:
        report = quarantine.replay(ctx, instance, key)
        print(format_report(report))
        failed += report.quarantined
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
