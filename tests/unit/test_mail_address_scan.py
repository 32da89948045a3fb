"""The address scanner of incoming headers (router.mail.address_scan): what it reads, and its
bounds."""

from __future__ import annotations

from email.utils import getaddresses

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.mail.address_scan import (
    MAX_ADDRESS,
    MAX_ADDRESSES,
    MAX_LIST_TEXT,
    first_addr,
    mailboxes,
    split_list,
)
from router.models import Address
from tests.fuzz import hostile
from tests.fuzz.timing import MAX_GROWTH, bounded_cpu, growth

MB = 1024 * 1024
PROPERTY = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bob <bob@example.com>, carol@example.com",
         [("bob@example.com", "Bob"), ("carol@example.com", "")]),
        ('"Doe, Jane" <jane@example.com>', [("jane@example.com", "Doe, Jane")]),
        ("jane@example.com (Jane Doe)", [("jane@example.com", "Jane Doe")]),
        ("=?utf-8?q?Dan=C3=A9?= <dan@example.com>", [("dan@example.com", "Dané")]),
        ("Team: a@example.com, b@example.com;", [("a@example.com", ""), ("b@example.com", "")]),
        ("undisclosed-recipients:;", []),
        ("<@relay.example:user@example.com>", [("user@example.com", "")]),
        ("a@example.com, a@example.com", [("a@example.com", "")]),
        ("MAILER-DAEMON", []),
        ("a b c x@y.example", [("x@y.example", "")]),  # picked out of what does not parse
        ('"unterminated x@y.example', [("x@y.example", "")]),
        ("x@y.example; z@w.example", [("x@y.example", ""), ("z@w.example", "")]),
    ],
)  # fmt: skip
def test_usual_and_odd_address_headers_give_their_mailboxes(
    header: str, expected: list[tuple[str, str]]
) -> None:
    assert mailboxes([header]) == tuple(Address(email, name) for email, name in expected)


def test_several_values_of_one_header_are_read_as_one_list() -> None:
    found = mailboxes(["a@example.com", "Bee <b@example.com>"])

    assert found == (Address("a@example.com"), Address("b@example.com", "Bee"))


def test_commas_inside_quotes_comments_and_angle_brackets_do_not_split() -> None:
    assert split_list('"a, b" <x@y>, (c, d) z@y, <@r1,@r2:w@y>') == [
        '"a, b" <x@y>',
        " (c, d) z@y",
        " <@r1,@r2:w@y>",
    ]


def test_a_header_longer_than_the_limit_is_cut_and_the_defect_named() -> None:
    defects: list[str] = []
    header = "u@example.com, " * (MAX_LIST_TEXT // 15 + 10) + "last@example.com"

    found = mailboxes([header], defects)

    assert defects == ["address-header-truncated"]
    assert found == (Address("u@example.com"),)


def test_no_more_than_the_maximum_of_mailboxes_is_kept() -> None:
    header = ", ".join(f"u{n}@example.com" for n in range(MAX_ADDRESSES + 100))

    assert len(mailboxes([header])) == MAX_ADDRESSES


def test_a_token_longer_than_any_address_is_not_taken_for_one() -> None:
    long_token = "a" * 200 + "@" + "b" * 200

    assert mailboxes([long_token]) == ()
    assert mailboxes(["@" * 10_000]) == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Mail Delivery System <MAILER-DAEMON@mx.example>", "MAILER-DAEMON@mx.example"),
        ("MAILER-DAEMON", "MAILER-DAEMON"),
        ("<>", None),
        ("", None),
        ("((((((((((((((((((((((((((((((((((((((((", None),
    ],
)
def test_first_addr_gives_the_address_part_with_or_without_a_domain(
    value: str, expected: str | None
) -> None:
    assert first_addr(value) == expected


@pytest.mark.parametrize("family", list(hostile.ADDRESSES))
def test_a_one_megabyte_hostile_address_header_is_read_in_a_fraction_of_a_second(
    family: str,
) -> None:
    text = hostile.ADDRESSES[family](MB)

    seconds = bounded_cpu(lambda t: mailboxes([t]), text, deadline=10, repeat=1)

    assert seconds < 0.3, f"{family}: {seconds:.2f} CPU seconds"


@pytest.mark.parametrize("family", list(hostile.ADDRESSES))
def test_a_hostile_address_header_eight_times_longer_costs_linear_time(family: str) -> None:
    ratio = growth(lambda t: mailboxes([t]), hostile.ADDRESSES[family], 4 * 1024)

    assert ratio < MAX_GROWTH, f"{family}: 8x the text took {ratio:.1f}x the time"


# -- properties -----------------------------------------------------------------------------------

ATOMS = [*"a@<>()\"',;:\\[]=?. \t\r\n\x00é", "=?utf-8?q?", "?=", "u@example.com"]
hostile_text = st.lists(st.sampled_from(ATOMS), max_size=40).map("".join)


@PROPERTY
@given(st.lists(hostile_text, max_size=3))
# found by tests/fuzz/fuzz_addresses.py: an "address" ending in "@" (no domain) came out
@example(['"Joe Bl@x.example>,\r\n\t=?u?\x1f@ <sc" <*b@x.example@ <sc" <*b@x.example>,'])
def test_no_text_makes_the_scanner_raise_or_return_something_but_mailboxes(
    values: list[str],
) -> None:
    found = mailboxes(values)

    assert len(found) <= MAX_ADDRESSES
    for address in found:
        local, at, domain = address.email.rpartition("@")
        assert local and at and domain and len(address.email) <= MAX_ADDRESS
        assert not any(ch.isspace() for ch in address.email)


names = st.text(alphabet=st.sampled_from("AbcÉ ,.'-"), max_size=12)
atoms = st.text(alphabet=st.sampled_from("abcxyz019.+-_"), min_size=1, max_size=10).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
)
specs = st.builds(lambda local, domain: f"{local}@{domain}.example", atoms, atoms)
entries = st.one_of(
    specs,
    st.builds(lambda name, spec: f'"{name}" <{spec}>', names, specs),
    st.builds(lambda spec, name: f"{spec} ({name})", specs, names.filter(lambda s: "(" not in s)),
)


@PROPERTY
@given(st.lists(entries, min_size=1, max_size=8))
def test_ordinary_lists_read_as_the_stdlib_reads_them(items: list[str]) -> None:
    header = ", ".join(items)
    expected = {
        Address(addr, " ".join(name.split()).strip("\"' ")) for name, addr in getaddresses([header])
    }

    assert set(mailboxes([header])) == {
        Address(a.email, "" if a.name == a.email else a.name) for a in expected
    }


@settings(PROPERTY, max_examples=12)
@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=6).map("".join))
def test_any_unit_repeated_in_an_address_header_costs_linear_time(unit: str) -> None:
    ratio = growth(lambda t: mailboxes([t]), lambda size: unit * (size // len(unit) + 1), 4096)

    assert ratio < MAX_GROWTH, f"{unit!r} x 8 took {ratio:.1f}x the time"
