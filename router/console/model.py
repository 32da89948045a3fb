"""What the console's pages show, read from the state store and the configuration.

Use :func:`instance_rows` for the instances table (the rows of ``email-router status``,
:func:`router.status.collect_status`, plus the state an operator acts on: paused and why,
and the lag), :func:`instance_activity` for one instance's recent messages and its messages per
minute, and :func:`masked_settings` for its configuration with every secret replaced by ``***``.
Nothing here writes to the store.

An instance is *paused* when an operator holds its lease (:func:`router.ledger.take_pause_lease`)
or when the pause a Celery worker recorded after a "stop" error is not lifted yet (the rule of
:mod:`router.runtime.pause`); ``email-router run`` keeps such a pause in its own memory, so the
console shows it as the instance's last error.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

from pydantic import BaseModel

from router import metrics
from router.config import Configuration, Deployment, ProviderConfiguration, Secret, mask_url
from router.errors import RouterError
from router.ledger import OutboundLedger, is_pause_holder
from router.ledger.outgoing import claimant
from router.models import Direction, LedgerEntry, LedgerState
from router.runtime.pause import STOP_PAUSE, Pause
from router.state.base import InstanceStats, StateStore
from router.status import InstanceStatus, collect_status

#: Ledger states that count as "handled" in the chart, and those that count as a problem.
HANDLED = frozenset(
    {LedgerState.DELIVERED, LedgerState.DONE, LedgerState.SKIPPED, LedgerState.SENT}
)
PROBLEM = frozenset({LedgerState.QUARANTINED, LedgerState.FAILED})
#: Parameter names whose values are shown as ``***``.
SECRET_NAME = re.compile(r"secret|password|passwd|token|key|credential", re.IGNORECASE)
STATES = ("ok", "error", "paused", "disabled", "not configured")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the instances table."""

    status: InstanceStatus
    #: one of :data:`STATES`
    state: str
    #: why it is paused or failing (None when ok)
    why: str | None
    #: seconds since the oldest message waiting for the CRM was staged (incoming only)
    lag: float | None


def instance_rows(config: Configuration, store: StateStore, config_since: float) -> list[Row]:
    """Every instance (configured ones first), with its state; ``config_since``: the mtime of
    the configuration in use (what lifts a recorded pause)."""
    now = time.time()
    return [_row(store, s, config_since, now) for s in collect_status(config, store)]


def _row(store: StateStore, status: InstanceStatus, config_since: float, now: float) -> Row:
    state, why = _state(status, config_since, now)
    lag = None
    if status.direction == Direction.INCOMING.value and status.problem is None:
        try:
            lag = metrics.update_lag(store, status.name, now)
        except RouterError:
            lag = None
    return Row(status, state, why, lag)


def _state(s: InstanceStatus, config_since: float, now: float) -> tuple[str, str | None]:
    if s.problem:
        return "error", s.problem
    if not s.configured:
        return "not configured", "the store holds state of an instance the file no longer has"
    if s.lease_holder and is_pause_holder(s.lease_holder):
        return "paused", "paused by an operator (console)"
    stats = InstanceStats(s.processed, s.last_poll, s.last_success, s.last_error, s.last_error_at)
    stop = Pause.recorded(stats)
    if stop is not None and not stop.lifted(
        config_since=config_since, succeeded_at=s.last_success, now=now, longest=STOP_PAUSE
    ):
        return "paused", f"after an error that needs a fix: {stop.reason}"
    if not s.enabled:
        return "disabled", "<Enabled>false</Enabled>"
    if s.last_error_at and (s.last_success is None or s.last_error_at > s.last_success):
        return "error", s.last_error
    return "ok", None


def filter_rows(
    rows: Iterable[Row], direction: str = "", state: str = "", name: str = ""
) -> list[Row]:
    """The rows matching every filter given (an empty filter matches everything)."""
    needle = name.strip().lower()
    return [
        r
        for r in rows
        if (not direction or r.status.direction.lower() == direction.lower())
        and (not state or r.state == state)
        and (not needle or needle in r.status.name.lower())
    ]


# -- one instance ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Activity:
    """One instance's ledger as the page shows it: the newest entries and per-minute counts."""

    recent: list[LedgerEntry]
    #: (handled, problem) messages per minute, oldest minute first; the last is the current one
    per_minute: list[tuple[int, int]]


def instance_activity(
    store: StateStore, cfg: ProviderConfiguration, *, minutes: int = 180, recent: int = 20
) -> Activity:
    """The newest ``recent`` ledger entries and the counts of the last ``minutes`` minutes."""
    entries = _entries(store, cfg)
    newest = sorted(entries, key=lambda e: e.updated_at, reverse=True)[:recent]
    return Activity(newest, per_minute(entries, time.time(), minutes))


def _entries(store: StateStore, cfg: ProviderConfiguration) -> list[LedgerEntry]:
    if cfg.direction is Direction.OUTGOING:
        return [e for e in OutboundLedger(store).entries() if claimant(e) == cfg.name]
    return store.list_entries(cfg.name)


def per_minute(entries: Iterable[LedgerEntry], now: float, minutes: int) -> list[tuple[int, int]]:
    """Entries handled / set aside in each of the last ``minutes`` minutes (by last update)."""
    end = int(now // 60)
    counts = [[0, 0] for _ in range(minutes)]
    for entry in entries:
        slot = minutes - 1 - (end - int(entry.updated_at // 60))
        if 0 <= slot < minutes:
            if entry.state in HANDLED:
                counts[slot][0] += 1
            elif entry.state in PROBLEM:
                counts[slot][1] += 1
    return [(a, b) for a, b in counts]


# -- configuration, masked ------------------------------------------------------------------------
def masked_settings(cfg: ProviderConfiguration) -> list[tuple[str, str]]:
    """The instance's elements as (name, value) pairs; secrets and URL passwords as ``***``."""
    pairs: list[tuple[str, str]] = []
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if name not in ("name", "parameters") and value is not None and value != ():
            pairs.append((_element(name), _shown(value)))
    for param in cfg.parameters.items:
        shown = "***" if SECRET_NAME.search(param.name) else mask_url(param.value)
        pairs.append((f"Parameter {param.name}", shown))
    return pairs


def masked_deployment(dep: Deployment) -> list[tuple[str, str]]:
    """The Deployment's elements as (name, value) pairs, its client secret as ``***``."""
    pairs = []
    for name in type(dep).model_fields:
        value = getattr(dep, name)
        if value is not None and value != () and name != "name":
            pairs.append((_element(name), _shown(value)))
    return pairs


def _shown(value: object) -> str:
    if isinstance(value, Secret):
        source = f"Env={value.env}" if value.env else f"File={value.file}" if value.file else ""
        return f"*** ({source})" if source else "***"
    if isinstance(value, BaseModel):  # a nested element: its fields, secrets masked at any depth
        return json.dumps(_masked(value.model_dump(mode="json", exclude_none=True)))
    if isinstance(value, tuple):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, Direction):
        return value.value
    return mask_url(str(value))


def _masked(data: object) -> object:
    """A dumped model with the value of every secret-looking key replaced by ``***``."""
    if isinstance(data, dict):
        return {
            k: "***" if SECRET_NAME.search(str(k)) and v is not None else _masked(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_masked(v) for v in data]
    return mask_url(data) if isinstance(data, str) else data


def _element(name: str) -> str:
    """``email_server`` -> ``EmailServer`` (the XML element of a field)."""
    return "".join(part.capitalize() for part in name.split("_"))


# -- a quarantined message's headers --------------------------------------------------------------
#: Longest header value and most header fields shown.
MAX_HEADER, MAX_HEADERS = 1000, 200


def header_fields(raw: bytes | None) -> list[tuple[str, str]]:
    """The message's header fields, decoded and clipped; never a line of its body.

    ``quarantine show`` and the console's message page both show these.
    """
    if raw is None:
        return []
    message = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return [(name, _decoded(value)[:MAX_HEADER]) for name, value in message.items()[:MAX_HEADERS]]


def _decoded(value: str) -> str:
    try:
        return " ".join(str(make_header(decode_header(value))).split())
    except (LookupError, ValueError, UnicodeError):  # an unknown charset: the raw text
        return " ".join(str(value).split())
