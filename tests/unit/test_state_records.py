"""Ledger records (the Redis entry encoding) decode to exactly what was written, or say damaged."""

from __future__ import annotations

import pytest

from router.errors import StateCorrupt
from router.models import LedgerEntry, LedgerState
from router.state.records import RS, US, build_record, dumps, loads, parse_record, patch_pairs


def test_record_round_trips_every_field_exactly() -> None:
    fields = {
        "message_id": "<a@x>",
        "activity_id": "act",
        "reason": "why",
        "attempts": 3,
        "extra": {"list": [], "obj": {}, "f": 0.1 + 0.2, "big": 2**60, "none": None},
    }
    record = build_record(patch_pairs(LedgerState.RETRY, 1764316000.123456, fields))
    entry = parse_record("i", "k", record)
    assert entry == LedgerEntry("i", "k", LedgerState.RETRY, 1764316000.123456, **fields)


def test_record_starts_with_the_state_and_omits_empty_fields() -> None:
    record = build_record(patch_pairs(LedgerState.STAGED, 1.5, {"message_id": None}))
    assert record == f's{US}"staged"{RS}u{US}1.5'


def test_record_never_contains_separators_inside_values() -> None:
    record = build_record(
        patch_pairs(LedgerState.STAGED, 1.0, {"reason": f"a{RS}b{US}c", "extra": {RS: US}})
    )
    entry = parse_record("i", "k", record)
    assert entry.reason == f"a{RS}b{US}c" and entry.extra == {RS: US}


@pytest.mark.parametrize(
    "record",
    [
        "",
        "{not json",
        f's{US}"nope"{RS}u{US}1.0',
        f's{US}"staged"',
        f's{US}"staged"{RS}u{US}soon',
        f's{US}"staged"{RS}u{US}1.0{RS}m{US}<unquoted>',
        f's{US}"staged"{RS}u{US}1.0{RS}q{US}1',
        b"\xff\xfe",
    ],
)
def test_damaged_records_raise_state_corrupt_naming_the_entry(record: str | bytes) -> None:
    with pytest.raises(StateCorrupt, match="inst/key"):
        parse_record("inst", "key", record)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(TypeError):
        patch_pairs(LedgerState.DONE, 1.0, {"colour": "red"})


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert dumps({"a": [1, 2], "é": "ü"}) == '{"a":[1,2],"é":"ü"}'


def test_loads_hides_the_content_of_damaged_json() -> None:
    with pytest.raises(StateCorrupt) as info:
        loads("{secret body", "cursor of x")
    assert "secret" not in str(info.value)
