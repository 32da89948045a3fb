"""``email-router mailboxes load|test``: the mailboxes the CRM defines, as the router runs them.

Use :func:`register` from the CLI's registrar list.

* ``load`` reads each ``<LoadMailboxes>`` Deployment's mailbox records and prints one line per
  record and direction: the instance it runs as (and through which profile, for which owner), or
  why it is skipped - inactive, not approved, another delivery method, no credentials.
* ``test`` is Test Access for every running mailbox (or those named): it runs
  ``test-access --instance``'s check of the instance (connect, log in, the provider's own
  steps), prints a progress line per mailbox, and writes the result into
  the mailbox record (incoming / outgoing email status 1 success, 2 failure, and the reason in
  ``FailureReasonColumn=`` when the organisation has such a column). A mailbox skipped for
  lack of credentials is written as a failure with that reason.

Both take ``--json``. Exit codes: 0 done (every test passed), 1 the CRM could not be read or a
test failed, 2 bad configuration or an unknown mailbox named.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.cli.access import adapter_for, check_instance
from router.config import Configuration, Settings
from router.configcheck import load_config
from router.crm.base import CrmAdapter, MailboxRecord
from router.errors import ConfigError, CrmError
from router.mailboxes import Planned, loads_mailboxes, plan
from router.models import Direction

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: Logins tried at once by ``test`` (each is a connection to the mail server).
TEST_THREADS = 8
NO_CREDENTIALS = "no credentials"

Out = Callable[[str], None]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mailboxes load`` and ``mailboxes test``."""
    p = sub.add_parser(
        "mailboxes",
        help="the mailboxes the CRM defines (<LoadMailboxes>): what runs, Test Access",
        description="List (load) or test (test) the mailboxes loaded from the CRM.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    load = verbs.add_parser("load", help="what would run: one line per mailbox and direction")
    test = verbs.add_parser("test", help="log in to every mailbox; write the result to the CRM")
    test.add_argument(
        "mailboxes", nargs="*", metavar="MAILBOX", help="address or instance name (default: all)"
    )
    for parser, func in ((load, cmd_load), (test, cmd_test)):
        parser.add_argument("--config", "-c", metavar="PATH", help="configuration file")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)


@dataclass
class Loaded:
    """The plan, and the adapters it was read with (for writing results back)."""

    items: list[Planned]
    crms: dict[str, CrmAdapter]

    def close(self) -> None:
        for crm in self.crms.values():
            crm.close()


def read_plan(config: Configuration) -> Loaded:
    """Read every loading Deployment's records; CrmError when one cannot be read."""
    crms: dict[str, CrmAdapter] = {}
    records: dict[str, list[MailboxRecord]] = {}
    try:
        for dep in config.deployments:
            if dep.load_mailboxes:
                crms[dep.name] = adapter_for(dep)
                records[dep.name] = crms[dep.name].list_mailboxes()
    except BaseException:
        Loaded([], crms).close()
        raise
    return Loaded(plan(config, records), crms)


def cmd_load(args: argparse.Namespace, out: Out = print) -> int:
    """``email-router mailboxes load``."""
    config = _config(args)
    try:
        loaded = read_plan(config)
    except CrmError as exc:
        out(f"cannot read the CRM's mailboxes: {exc}")
        return EXIT_FAILED
    loaded.close()
    if args.json:
        out(json.dumps([p.as_dict() for p in loaded.items], indent=2))
        return EXIT_OK
    for item in loaded.items:
        out(_line(item))
    runs = sum(p.instance is not None for p in loaded.items)
    out(f"{runs} instance(s) from {len({p.record.mailbox_id for p in loaded.items})} mailbox "
        f"record(s); {len(loaded.items) - runs} skipped")  # fmt: skip
    return EXIT_OK


def _line(item: Planned) -> str:
    head = f"{'RUN ' if item.instance else 'SKIP'} {item.name:<40} {item.direction.value:<8}"
    if item.instance is None:
        return f"{head} {item.skipped}"
    owner = f"{item.record.owner_type} {item.record.owner_id}"
    return f"{head} profile {item.profile}, deployment {item.deployment}, owner {owner}"


def cmd_test(args: argparse.Namespace, out: Out = print) -> int:
    """``email-router mailboxes test [MAILBOX...]``."""
    config = _config(args)
    try:
        loaded = read_plan(config)
    except CrmError as exc:
        out(f"cannot read the CRM's mailboxes: {exc}")
        return EXIT_FAILED
    try:
        chosen = _chosen(loaded.items, args.mailboxes)
        results = list(_test_all(chosen, loaded, None if args.json else out))
    finally:
        loaded.close()
    if args.json:
        out(json.dumps(results, indent=2))
    ok = sum(bool(r["ok"]) for r in results)
    if not args.json:
        out(f"{ok} of {len(results)} mailbox test(s) passed")
    return EXIT_OK if ok == len(results) and all(r["written"] for r in results) else EXIT_FAILED


def _chosen(items: list[Planned], wanted: list[str]) -> list[Planned]:
    testable = [p for p in items if p.instance or (p.skipped or "").startswith(NO_CREDENTIALS)]
    if not wanted:
        return testable
    keys = {w.strip().lower() for w in wanted}
    chosen = [p for p in testable if p.name in keys or p.record.address.lower() in keys]
    missing = keys - {p.name for p in chosen} - {p.record.address.lower() for p in chosen}
    if missing:
        raise ConfigError(f"no running mailbox {', '.join(sorted(missing))} (see mailboxes load)")
    return chosen


def _test_all(items: list[Planned], loaded: Loaded, out: Out | None) -> Iterable[dict[str, Any]]:
    with ThreadPoolExecutor(TEST_THREADS) as pool:
        results = pool.map(login_problem, items)
        for n, (item, reason) in enumerate(zip(items, results, strict=True), 1):
            written = _write_back(loaded.crms[item.deployment], item, reason)
            if out is not None:
                state = "ok" if reason is None else f"FAILED - {reason}"
                note = "" if written is True else f" (not written to the CRM: {written})"
                out(f"[{n}/{len(items)}] {item.name}: {state}{note}")
            yield {**item.as_dict(), "ok": reason is None, "reason": reason,
                   "written": written is True}  # fmt: skip


def login_problem(item: Planned) -> str | None:
    """``test-access --instance``'s check of the instance; None when it passed, else why not."""
    if item.instance is None:
        return item.skipped
    lines: list[str] = []
    if check_instance(item.instance, lines.append):
        return None
    failed = [line.split("FAILED - ", 1)[1] for line in lines if "FAILED - " in line]
    return "; ".join(failed) or "failed"


def _write_back(crm: CrmAdapter, item: Planned, reason: str | None) -> bool | str:
    try:
        crm.record_mailbox_test(
            item.record.mailbox_id, item.direction is Direction.INCOMING, reason, item.reason_column
        )
    except CrmError as exc:
        return str(exc)
    return True


def _config(args: argparse.Namespace) -> Configuration:
    path = Path(args.config) if args.config else Settings().config
    config = load_config(path)
    if not loads_mailboxes(config):
        raise ConfigError(f"{path}: no <Deployment> has <LoadMailboxes>: nothing to load")
    return config
