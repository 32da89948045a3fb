"""Unwrapping forwarded mail (router.mail.forward): attached and inline forms of common clients,
forwards of forwards, carriers holding two originals, and malformed carriers."""

from __future__ import annotations

import base64

import pytest

from router.mail.forward import (
    ATTACHED,
    INLINE,
    MAX_ORIGINALS,
    inline_message_id,
    unwrap,
)
from router.mail.parse import parse_message

ORIGINAL = (
    b"From: Customer <customer@example.org>\r\nTo: Alice <alice@corp.example>\r\n"
    b"Cc: bob@corp.example\r\nSubject: Order 42\r\nMessage-ID: <order-42@example.org>\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain\r\n\r\nPlease ship order 42.\r\n"
)


def carrier(body: str, *, ctype: str = "text/plain", sender: str = "alice@corp.example") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: forward@corp.example\r\nSubject: FW: Order 42\r\n"
        f"Message-ID: <carrier-{abs(hash(body))}@corp.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {ctype}; charset=utf-8\r\n\r\n{body}"
    ).encode()


def attached(*originals: bytes, note: str = "", cte: str = "7bit", sender: str = "") -> bytes:
    """A carrier attaching ``originals`` (its boundary differs from any nested one's)."""
    b = f"b{sum(len(o) for o in originals)}"
    parts = [f"--{b}\r\nContent-Type: text/plain\r\n\r\n{note}\r\n".encode()]
    for raw in originals:
        payload = base64.encodebytes(raw) if cte == "base64" else raw
        parts.append(
            f"--{b}\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n".encode()
            + f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode()
            + payload
            + b"\r\n"
        )
    head = (
        f"From: {sender or 'Alice <alice@corp.example>'}\r\nTo: forward@corp.example\r\n"
        "Subject: FW: Order 42\r\nMessage-ID: <c@corp.example>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
    ).encode()
    return head + b"".join(parts) + f"--{b}--\r\n".encode()


# -- attached -------------------------------------------------------------------------------------
def test_an_attached_original_comes_back_whole_with_the_carriers_sender() -> None:
    result = unwrap(attached(ORIGINAL, note="FYI"))
    assert result.sender == "alice@corp.example"
    assert result.message_id == "<c@corp.example>"
    (original,) = result.originals
    assert original.form == ATTACHED
    activity = parse_message(original.raw)
    assert activity.message_id == "<order-42@example.org>"
    assert activity.subject == "Order 42"
    assert [a.email for a in activity.to] == ["alice@corp.example"]


def test_a_carrier_with_two_originals_gives_both_in_order() -> None:
    second = ORIGINAL.replace(b"order-42", b"order-43").replace(b"Order 42", b"Order 43")
    result = unwrap(attached(ORIGINAL, second))
    ids = [parse_message(o.raw).message_id for o in result.originals]
    assert ids == ["<order-42@example.org>", "<order-43@example.org>"]


def test_a_base64_encoded_attached_message_is_decoded() -> None:
    (original,) = unwrap(attached(ORIGINAL, cte="base64")).originals
    assert parse_message(original.raw).message_id == "<order-42@example.org>"


def test_an_eml_file_attached_as_octet_stream_is_an_original() -> None:
    raw = (
        b"From: alice@corp.example\r\nSubject: FW\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="order.eml"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(ORIGINAL) + b"--b--\r\n"
    )
    (original,) = unwrap(raw).originals
    assert parse_message(original.raw).message_id == "<order-42@example.org>"


def test_a_forward_of_a_forward_is_unwrapped_to_the_innermost_original() -> None:
    # a rule forwarded what another rule forwarded: the middle carrier has no text of its own
    middle = attached(ORIGINAL, sender="Group <group@corp.example>")
    (original,) = unwrap(attached(middle)).originals
    assert parse_message(original.raw).message_id == "<order-42@example.org>"


def test_a_forwarded_message_that_itself_attaches_a_message_is_kept_whole() -> None:
    # the customer's own mail attached an earlier message and said something: that is the original
    customers = attached(ORIGINAL, note="See the attached order", sender="customer@example.org")
    (original,) = unwrap(attached(customers)).originals
    assert parse_message(original.raw).message_id == "<c@corp.example>"


# -- inline ---------------------------------------------------------------------------------------
GMAIL = (
    "FYI\r\n\r\n---------- Forwarded message ---------\r\n"
    "From: Customer <customer@example.org>\r\nDate: Mon, Mar 2, 2026 at 10:00 AM\r\n"
    "Subject: Order 42\r\nTo: Alice <alice@corp.example>\r\nCc: bob@corp.example\r\n\r\n"
    "Please ship order 42.\r\n"
)
THUNDERBIRD = (
    "\r\n\r\n-------- Forwarded Message --------\r\nSubject: \tOrder 42\r\n"
    "Date: \tMon, 2 Mar 2026 10:00:00 +0000\r\nFrom: \tCustomer <customer@example.org>\r\n"
    "To: \talice@corp.example\r\n\r\nPlease ship order 42.\r\n"
)
APPLE = (
    "\r\n\r\nBegin forwarded message:\r\n\r\nFrom: Customer <customer@example.org>\r\n"
    "Subject: Order 42\r\nDate: 2 March 2026 at 10:00:00 GMT\r\n"
    "To: Alice <alice@corp.example>\r\n\r\nPlease ship order 42.\r\n"
)
OUTLOOK = (
    "\r\n-----Original Message-----\r\nFrom: Customer [mailto:customer@example.org]\r\n"
    "Sent: Monday, March 2, 2026 10:00 AM\r\nTo: Alice Smith <alice@corp.example>\r\n"
    "Subject: Order 42\r\n\r\nPlease ship order 42.\r\n"
)
OUTLOOK_HTML = (
    "<html><head><style>p {margin:0}</style></head><body><p>FYI</p>"
    '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri"><b>From:</b> Customer '
    "&lt;customer@example.org&gt;<br><b>Sent:</b> Monday, March 2, 2026 10:00 AM<br>"
    "<b>To:</b> Alice Smith &lt;alice@corp.example&gt;<br><b>Subject:</b> Order 42</font>"
    "<div>&nbsp;</div></div><div><p>Please ship order 42.</p></div></body></html>"
)


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (GMAIL, "text/plain"),
        (THUNDERBIRD, "text/plain"),
        (APPLE, "text/plain"),
        (OUTLOOK, "text/plain"),
        (OUTLOOK_HTML, "text/html"),
    ],
    ids=["gmail", "thunderbird", "apple-mail", "outlook", "outlook-html"],
)
def test_an_inline_forward_of_each_client_is_rebuilt_as_the_original(body: str, ctype: str) -> None:
    result = unwrap(carrier(body, ctype=ctype))
    (original,) = result.originals
    assert original.form == INLINE
    activity = parse_message(original.raw)
    assert activity.sender is not None and activity.sender.email == "customer@example.org"
    assert "alice@corp.example" in [a.email for a in activity.to]
    assert activity.subject == "Order 42"
    assert "Please ship order 42." in activity.body_html
    assert "FYI" not in activity.body_html  # the forwarding user's note is not the original's
    assert activity.message_id.startswith("<fwd-")


def test_the_rfc_date_of_an_inline_forward_is_kept() -> None:
    (original,) = unwrap(carrier(THUNDERBIRD)).originals
    activity = parse_message(original.raw)
    assert activity.received_on is not None and activity.received_on.day == 2


def test_one_inline_original_forwarded_twice_gets_the_same_message_id() -> None:
    first = unwrap(carrier(GMAIL, sender="alice@corp.example")).originals[0]
    again = unwrap(carrier("Once more:\r\n" + GMAIL, sender="alice@corp.example")).originals[0]
    assert parse_message(first.raw).message_id == parse_message(again.raw).message_id
    other = unwrap(carrier(GMAIL.replace("order 42.", "order 43."))).originals[0]
    assert parse_message(other.raw).message_id != parse_message(first.raw).message_id


def test_nested_inline_forwards_take_the_outermost_as_the_original() -> None:
    nested = GMAIL + "\r\n" + THUNDERBIRD.replace("Customer", "Supplier")
    (original,) = unwrap(carrier(nested)).originals
    activity = parse_message(original.raw)
    assert activity.sender is not None and activity.sender.email == "customer@example.org"
    assert "Forwarded Message" in activity.body_html  # the inner forward stays in its body


def test_inline_message_ids_ignore_spacing_but_not_content() -> None:
    headers = {"From": "a@b.example", "Subject": "x"}
    assert inline_message_id(headers, "one  two\n") == inline_message_id(headers, "one two")
    assert inline_message_id(headers, "one") != inline_message_id(headers, "two")


# -- nothing forwarded, malformed -----------------------------------------------------------------
def test_a_plain_message_forwards_nothing() -> None:
    result = unwrap(ORIGINAL)
    assert result.originals == () and result.sender == "customer@example.org"


def test_a_separator_line_without_a_header_block_is_not_a_forward() -> None:
    result = unwrap(carrier("Thanks\r\n" + "_" * 40 + "\r\nAlice, sales\r\n"))
    assert result.originals == ()
    assert "forward-marker-without-headers" in result.defects


def test_an_empty_attached_message_is_a_defect_not_an_original() -> None:
    result = unwrap(attached(b""))
    assert result.originals == () and "empty-attached-message" in result.defects


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff" * 100,
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822"
        b"\r\n\r\n--x",
        b"From: a@b\r\n\r\n" + b"-----Original Message-----\r\nFrom:\r\n" * 5000,
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\nContent-Type: "
        b"multipart/mixed; boundary=a\r\n\r\n" * 500,
    ],
    ids=["empty", "binary", "cut-short", "many-markers", "deep"],
)
def test_malformed_carriers_never_raise(raw: bytes) -> None:
    result = unwrap(raw)
    assert len(result.originals) <= 1


def test_a_carrier_over_the_size_limit_is_not_read() -> None:
    result = unwrap(attached(ORIGINAL), max_size=100)
    assert result.originals == () and result.defects == ("carrier-too-large",)


def test_at_most_max_originals_are_taken() -> None:
    result = unwrap(attached(*([ORIGINAL] * (MAX_ORIGINALS + 5))))
    assert len(result.originals) == MAX_ORIGINALS
