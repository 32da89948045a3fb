"""The Redis key schema: one prefix, escaped instance names, no two names sharing a key."""

from __future__ import annotations

import pytest

from router.state.keys import (
    OUTBOUND,
    Keys,
    delivery_lease,
    email_id_of,
    escape,
    outbound_key,
    seen_index,
    sent_index,
    unescape,
)


def test_keys_follow_the_documented_schema() -> None:
    keys = Keys()
    assert keys.lease("sales") == "er:lease:sales"
    assert keys.token("sales") == "er:token:sales"
    assert keys.cursor("sales") == "er:cursor:sales"
    assert keys.pstate("sales") == "er:pstate:sales"
    assert keys.stats("sales") == "er:stats:sales"
    assert keys.ledger("sales") == "er:ledger:sales"
    assert keys.seq("sales") == "er:seq:sales"
    assert keys.order("sales", "staged") == "er:order:sales:staged"
    assert keys.order_prefix("a:b") + "done" == keys.order("a:b", "done")
    assert keys.raw("sales", "7:42") == "er:raw:sales:7:42"
    assert keys.msgid("<a:b@x>") == "er:msgid:<a:b@x>"
    assert keys.instances() == "er:instances"


def test_prefix_is_configurable() -> None:
    assert Keys("prod:router").cursor("x") == "prod:router:cursor:x"


def test_empty_prefix_is_refused() -> None:
    with pytest.raises(ValueError):
        Keys("")


def test_colons_in_instance_names_cannot_collide() -> None:
    keys = Keys()
    # without escaping both would be er:raw:a:b:c
    assert keys.raw("a:b", "c") != keys.raw("a", "b:c")
    assert keys.ledger("a:b") != keys.ledger("a%3Ab")


@pytest.mark.parametrize("name", ["plain", "a:b", "100%", "%3A", "::%%::", "ünï:cødé"])
def test_escape_round_trips_and_removes_colons(name: str) -> None:
    assert ":" not in escape(name)
    assert unescape(escape(name)) == name


def test_raw_prefix_plus_ledger_key_is_the_raw_key() -> None:
    keys = Keys()
    assert keys.raw_prefix("a:b") + "9:1" == keys.raw("a:b", "9:1")


def test_scan_pattern_escapes_glob_characters_of_the_prefix() -> None:
    assert Keys("er").pattern() == "er:*"
    assert Keys("t[1]*?").pattern() == "t\\[1\\]\\*\\?:*"


def test_names_inside_the_store_keep_the_format_stored_data_has() -> None:
    # Entries, index keys and leases written by earlier versions must still be found.
    assert OUTBOUND == "_outbound"
    assert outbound_key("e1") == "out:e1" and email_id_of("out:e1") == "e1"
    assert seen_index("imap:a", "<m@x>") == "in:imap:a:<m@x>"
    assert sent_index("<m@x>") == "out:<m@x>"
    assert delivery_lease("sales") == "sales#deliver"
