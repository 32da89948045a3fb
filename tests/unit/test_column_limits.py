"""Dataverse's column limits: the rules of router.mail.limits and everyone who applies them."""

from __future__ import annotations

import pytest

from router.crm.base import DeliveryTarget
from router.crm.dataverse_payloads import check_incoming_path, deliver_params
from router.crm.memory import MemoryCrm
from router.crm.simulator.odata import (
    ACTIONS,
    CODE_TOO_LONG,
    ODataError,
    check_entity,
    check_params,
)
from router.mail.limits import (
    COLUMN_LIMITS,
    MARKER,
    MESSAGE_ID_MAX,
    clip,
    fit_addresses,
    fit_message_id,
)
from router.mail.parse import parse_message
from router.models import Activity, Address

TARGET = DeliveryTarget(mailbox="inbox@example.com")


def long_id(length: int = 1000, domain: str = "mail.example.org") -> str:
    local = ("part-" * length)[: length - len(domain) - 3]
    return f"<{local}@{domain}>"


def raw_message(message_id: str, subject: str = "hello", to: str = "a@example.com") -> bytes:
    return (
        f"From: s@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\n\r\nbody\r\n"
    ).encode()


def test_a_message_id_that_fits_is_kept_as_it_is() -> None:
    mid = long_id(MESSAGE_ID_MAX)
    assert len(mid) == MESSAGE_ID_MAX
    assert fit_message_id(mid) == mid


def test_a_long_message_id_is_shortened_to_the_column_in_angle_bracket_form() -> None:
    mid = long_id(1000)
    short = fit_message_id(mid)
    assert len(short) <= MESSAGE_ID_MAX
    assert short.startswith("<part-part-") and short.endswith("@mail.example.org>")
    assert short.count("@") == 1


def test_the_same_long_message_id_always_gives_the_same_value() -> None:
    assert fit_message_id(long_id(1000)) == fit_message_id(long_id(1000))


def test_long_ids_that_differ_only_after_the_prefix_stay_different() -> None:
    first = long_id(1000)
    second = first.replace("@mail", "X@mail")
    assert first != second
    assert fit_message_id(first) != fit_message_id(second)


def test_a_shortened_id_is_stable_under_a_second_shortening() -> None:
    short = fit_message_id(long_id(5000))
    assert fit_message_id(short) == short


def test_an_id_with_a_huge_domain_or_no_at_sign_still_fits() -> None:
    for mid in (f"<a@{'d' * 900}.example>", f"<{'x' * 900}>"):
        short = fit_message_id(mid)
        assert len(short) <= MESSAGE_ID_MAX and short[0] == "<" and short[-1] == ">"
        assert "@" in short


def test_the_parser_gives_the_shortened_id_for_the_ledger_and_the_crm() -> None:
    mid = long_id(1000)
    activity = parse_message(raw_message(mid))
    assert activity.message_id == fit_message_id(mid)
    assert "message-id-synthesised" not in activity.defects


def test_two_copies_with_different_headers_get_the_same_shortened_id() -> None:
    mid = long_id(1000)
    copy = b"Received: from relay.example.net\r\n" + raw_message(mid)
    assert parse_message(raw_message(mid)).message_id == parse_message(copy).message_id


def test_a_long_in_reply_to_follows_the_same_rule() -> None:
    mid = long_id(900)
    raw = raw_message("<r@example.org>").replace(
        b"\r\n\r\n", f"\r\nIn-Reply-To: {mid}\r\n\r\n".encode(), 1
    )
    assert parse_message(raw).in_reply_to == fit_message_id(mid)


def test_clip_cuts_with_the_marker_to_exactly_the_limit() -> None:
    assert clip("short", 800) == "short"
    cut = clip("x" * 1000, 800)
    assert len(cut) == 800 and cut.endswith(MARKER) and cut.startswith("xxx")


def test_an_address_list_is_cut_after_a_whole_address() -> None:
    addresses = [f"user{i:03d}@example.com" for i in range(60)]
    cut = fit_addresses(addresses, 500)
    assert len(cut) <= 500 and cut.endswith(";" + MARKER)
    kept = cut.removesuffix(";" + MARKER).split(";")
    assert kept == addresses[: len(kept)] and len(kept) > 10


def test_a_short_address_list_is_joined_whole() -> None:
    assert fit_addresses(["a@x.org", "b@y.org"], 500) == "a@x.org;b@y.org"


def test_a_single_address_longer_than_the_column_is_cut_with_the_marker() -> None:
    cut = fit_addresses(["x" * 300 + "@example.com"], 250)
    assert len(cut) == 250 and cut.endswith(MARKER)


def test_the_payload_builder_fits_every_limited_column() -> None:
    to = tuple(Address(f"user{i:03d}@example.com") for i in range(60))
    activity = Activity(
        message_id=long_id(1000),
        subject="s" * 2000,
        body_html="<p>x</p>",
        sender=Address(("f" * 300) + "@example.org"),
        to=to,
    )
    params = deliver_params(activity, TARGET, inline=True)
    assert params["MessageId"] == fit_message_id(activity.message_id)
    assert len(params["Subject"]) == COLUMN_LIMITS["subject"] and params["Subject"][-1] == MARKER
    assert len(params["From"]) == COLUMN_LIMITS["sender"]
    assert len(params["To"]) <= COLUMN_LIMITS["torecipients"] and params["To"].endswith(MARKER)
    check_params("DeliverIncomingEmail", params, ACTIONS)  # the simulator accepts it


def test_the_crm_check_sees_every_recipient_but_the_stored_message_id() -> None:
    # CheckIncomingEmail matches users and queues against all recipients: nothing is cut there
    to = tuple(Address(f"user{i:03d}@example.com") for i in range(60))
    activity = Activity(message_id=long_id(1000), subject="s", body_html="", sender=None, to=to)
    path = check_incoming_path(activity)
    assert "user059%40example.com" in path or "user059@example.com" in path
    assert "part-part" in path and path.count("part-") < 100  # the shortened Message-ID


@pytest.mark.parametrize(
    ("name", "column", "size"),
    [
        ("MessageId", "messageid", 320),
        ("Subject", "subject", 800),
        ("From", "sender", 250),
        ("To", "torecipients", 500),
    ],
)
def test_the_simulator_refuses_a_parameter_longer_than_its_column(
    name: str, column: str, size: int
) -> None:
    params = deliver_params(
        Activity(message_id="<a@b>", subject="s", body_html="", sender=Address("s@x.org")),
        TARGET,
        inline=True,
    )
    params[name] = "y" * (size + 1)
    with pytest.raises(ODataError) as caught:
        check_params("DeliverIncomingEmail", params, ACTIONS)
    assert caught.value.status == 400 and caught.value.code == CODE_TOO_LONG
    assert f"'{column}'" in caught.value.message and f"'{size}'" in caught.value.message
    params[name] = "y" * size
    check_params("DeliverIncomingEmail", params, ACTIONS)


def test_the_simulator_refuses_a_long_column_in_an_email_entity() -> None:
    with pytest.raises(ODataError) as caught:
        check_entity("email", {"trackingtoken": "T" * 51})
    assert caught.value.code == CODE_TOO_LONG and "'trackingtoken'" in caught.value.message


def test_the_memory_crm_keeps_what_dataverse_would_keep() -> None:
    crm = MemoryCrm()
    activity = Activity(message_id=long_id(1000), subject="s" * 900, body_html="", sender=None)
    first = crm.deliver(activity, TARGET)
    (stored_id,) = crm.activities
    assert stored_id == fit_message_id(activity.message_id)
    _, stored, _ = crm.activities[stored_id]
    assert len(stored.subject) == 800 and stored.subject.endswith(MARKER)
    again = crm.deliver(activity, TARGET)
    assert again.duplicate and again.activity_id == first.activity_id
    assert not crm.check_incoming(activity, TARGET)
