"""Encoding of stored values shared by the persistent backends: compact JSON and ledger records.

A Redis ledger entry is stored as a **record**: ``name<US>json`` pairs joined by ``<RS>`` (the
ASCII unit and record separators, which compact JSON never contains unescaped)::

    s<US>"staged"<RS>u<US>1764316000.25<RS>m<US>"<id@host>"<RS>x"uid"<US>[1,2]

``s`` state (always first), ``u`` updated_at, ``m`` message_id, ``a`` activity_id, ``r`` reason,
``n`` attempts, and ``x<json name>`` one key of ``extra``. Absent pairs are None/0/empty. Every
value stays the exact JSON text Python wrote, so a Lua script can check the state and merge a
patch (set, replace or drop pairs) with string operations alone: Redis's cjson would round floats
to 14 digits and turn ``[]`` into ``{}`` if the script decoded and re-encoded the entry.

A value that does not decode raises :class:`~router.errors.StateCorrupt` naming the entry, never
its content.
"""

from __future__ import annotations

import json
from typing import Any

from router.errors import StateCorrupt
from router.models import LedgerEntry, LedgerState

US, RS = "\x1f", "\x1e"
ENTRY_FIELDS = frozenset({"message_id", "activity_id", "reason", "attempts", "extra"})
_SHORT = {"message_id": "m", "activity_id": "a", "reason": "r"}
_LONG = {v: k for k, v in _SHORT.items()}


def dumps(value: Any) -> str:
    """Compact JSON (no spaces, UTF-8 kept) for everything the stores write."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes, what: str) -> Any:
    """Decode JSON or raise StateCorrupt mentioning ``what`` (never the text itself)."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise StateCorrupt(f"{what}: stored value is not valid JSON") from None


def check_fields(fields: dict[str, Any]) -> None:
    """TypeError for a ledger field name no entry has (a typo must not be stored silently)."""
    unknown = set(fields) - ENTRY_FIELDS
    if unknown:
        raise TypeError(f"unknown ledger fields: {sorted(unknown)}")


def patch_pairs(state: LedgerState, now: float, fields: dict[str, Any]) -> list[str]:
    """The flat ``[name, json, ...]`` list that sets state, updated_at and ``fields``.

    An empty value means "drop this pair" (a field set to None); ``extra`` is merged key by key.
    """
    check_fields(fields)
    pairs = ["s", dumps(state.value), "u", repr(float(now))]
    for name, value in fields.items():
        if name == "extra":
            for key, item in (value or {}).items():
                pairs += ["x" + dumps(str(key)), dumps(item)]
        elif name == "attempts":
            pairs += ["n", str(int(value)) if value else ""]
        else:
            pairs += [_SHORT[name], "" if value is None else dumps(value)]
    return pairs


def build_record(pairs: list[str]) -> str:
    """Join a patch list into a new record (used when the entry is created)."""
    it = iter(pairs)
    return RS.join(f"{name}{US}{value}" for name, value in zip(it, it, strict=True) if value)


def parse_record(instance: str, key: str, record: str | bytes) -> LedgerEntry:
    """Decode a stored record; raises StateCorrupt if any part of it is damaged."""
    try:
        text = record.decode() if isinstance(record, bytes) else record
        values = dict(pair.split(US, 1) for pair in text.split(RS))
        state = LedgerState(json.loads(values.pop("s")))
        updated_at = float(values.pop("u"))
        return LedgerEntry(instance, key, state, updated_at, **_fields(values))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise StateCorrupt(f"ledger entry {instance}/{key}: stored value is damaged") from None


def _fields(values: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {"extra": {}}
    for name, text in values.items():
        if name in _LONG:
            fields[_LONG[name]] = json.loads(text)
        elif name == "n":
            fields["attempts"] = int(text)
        elif name.startswith("x"):
            fields["extra"][json.loads(name[1:])] = json.loads(text)
        else:
            raise ValueError(name)
    return fields
