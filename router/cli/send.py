"""Output of ``email-router send NAME``: one send cycle in the foreground (kept out of cli.py)."""

from __future__ import annotations

import argparse

from router.context import open_context
from router.outgoing import SendReport, send_cycle


def run(args: argparse.Namespace) -> int:
    """Run one send cycle of instance ``args.name``; exit 1 when the cycle stopped early."""
    ctx = open_context(args.config, state_url=args.state)
    try:
        report = send_cycle(ctx, args.name)
    finally:
        ctx.close()
    print(format_report(report))
    return 0 if report.error is None else 1


def format_report(report: SendReport) -> str:
    """Human-readable summary: counts, then one line per email."""
    if report.busy:
        return f"{report.instance}: skipped ({report.busy})"
    lines = [
        f"{report.instance}: pending {report.pending}, sent {report.sent}, failed "
        f"{report.failed}, retried {report.retried}, skipped {report.skipped} "
        f"in {report.duration:.2f}s" + (f" - stopped: {report.error}" if report.error else "")
    ]
    for o in report.outcomes:
        detail = f" ({o.detail})" if o.detail else ""
        lines.append(f"  {o.email_id}: {o.outcome}{detail}")
    return "\n".join(lines)
