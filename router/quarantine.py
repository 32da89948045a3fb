"""Quarantine tooling: list, show, replay and drop messages the router set aside.

A message is quarantined when it could not become an activity (unparseable, too large, refused by
the CRM, or classified under a ``quarantine`` policy). Its ledger entry keeps the reason and,
when the bytes were downloaded, the raw message. :func:`replay` moves it back to STAGED and runs
the CRM step for it again, with the same exactly-once guarantee as a first delivery: the ledger's
compare-and-set and the CRM's Message-ID check. A message refused by the size guard, or whose
fetch failed MaxMessageAttempts times, was never downloaded; replay fetches it from the mail
server first (raise MaxMessageSize, or fix the provider, before replaying).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.context import Context
from router.delivery import deliver_staged
from router.errors import ConfigError, MessageUnusable, RouterError
from router.ledger import InboundLedger
from router.models import LedgerEntry, LedgerState, MessageRef
from router.providers.base import IncomingProvider
from router.report import CycleReport


@dataclass(frozen=True, slots=True)
class QuarantinedItem:
    """A quarantined message: where it is, why, and whether its bytes are kept."""

    entry: LedgerEntry
    has_raw: bool
    size: int | None


def list_items(ctx: Context, instance: str | None = None) -> list[QuarantinedItem]:
    """Every quarantined message (of one instance, or of all known instances)."""
    names = [instance] if instance else ctx.store.instances()
    items: list[QuarantinedItem] = []
    for name in names:
        for entry in InboundLedger(ctx.store, name).entries(LedgerState.QUARANTINED):
            items.append(_item(ctx, entry))
    return items


def get_item(ctx: Context, instance: str, key: str) -> QuarantinedItem:
    """One quarantined message; ConfigError when there is none under that key."""
    entry = ctx.store.get_entry(instance, key)
    if entry is None or entry.state is not LedgerState.QUARANTINED:
        raise ConfigError(f"no quarantined message {key!r} in instance {instance!r}")
    return _item(ctx, entry)


def _item(ctx: Context, entry: LedgerEntry) -> QuarantinedItem:
    raw = ctx.store.get_raw(entry.instance, entry.key)
    return QuarantinedItem(entry, raw is not None, len(raw) if raw is not None else None)


def replay(ctx: Context, instance: str, key: str) -> CycleReport:
    """Run a quarantined message through the CRM step again."""
    item = get_item(ctx, instance, key)
    if not item.has_raw:
        _refetch(ctx, instance, key)
    if InboundLedger(ctx.store, instance).replay(key) is None:
        raise ConfigError(f"{instance}/{key} changed state while replaying; list it again")
    return deliver_staged(ctx, instance, [key])


def _refetch(ctx: Context, instance: str, key: str) -> None:
    """Download a message the size guard refused, and keep its bytes with the entry."""
    cfg = ctx.instance(instance)
    provider = ctx.provider(cfg)
    if not isinstance(provider, IncomingProvider):
        raise ConfigError(f"{instance} is not an incoming instance")
    try:
        with provider:
            raw = provider.fetch(MessageRef(key)).raw
    except RouterError:
        raise
    except Exception as exc:  # the provider's own bug (what quarantined it): no traceback
        raise MessageUnusable(
            f"{instance}/{key}: fetching it failed again ({type(exc).__name__}: {exc}); "
            "it stays quarantined: fix the provider, then replay it"
        ) from None
    if not InboundLedger(ctx.store, instance).attach_raw(key, raw):
        raise RouterError(f"{instance}/{key} was staged by someone else meanwhile")


def drop(ctx: Context, instance: str, key: str) -> None:
    """Give up on a quarantined message: its bytes go, the entry stays DONE (never re-fetched)."""
    get_item(ctx, instance, key)
    InboundLedger(ctx.store, instance).drop(key)
