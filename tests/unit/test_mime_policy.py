"""What the bounded stdlib policies (router.mail.policy) change in parsing, besides the cost.

Header values reach the stdlib unparsed (no header objects), cut to 8 KB and 16 parameters;
multiparts deeper than MAX_NESTING are read as text; a nested message is written back with its
header lines as received.
"""

from __future__ import annotations

import time

from router.mail.parse import parse_message
from router.mail.policy import MAX_NESTING, MAX_PARAMS
from tests.fuzz import hostile


def two_parts(boundary: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    """Text and a PDF in a multipart whose Content-Type has ``before`` and ``after`` around
    its boundary parameter."""
    head = b"Content-Type: multipart/mixed; " + before + b"boundary=" + boundary + after
    head += b"\r\n"
    delimiter = b"--" + boundary.strip(b'"')
    body = (
        delimiter + b"\r\nContent-Type: text/plain\r\n\r\nhello body\r\n"
        + delimiter + b'\r\nContent-Type: application/pdf; name="x.pdf"\r\n\r\nPDF\r\n'
        + delimiter + b"--\r\n"
    )  # fmt: skip
    return hostile.message(head, body)


def test_an_unquoted_boundary_with_an_equals_sign_still_splits_the_parts() -> None:
    # Outlook Express wrote these; policy.default's header parser lost the boundary
    activity = parse_message(two_parts(b"----=_NextPart_000_0093_01C81419.EB75E850"))

    assert "hello body" in activity.body_html
    assert [a.filename for a in activity.attachments] == ["x.pdf"]
    assert "multipart-without-parts" not in activity.defects


def test_a_boundary_with_raw_8bit_bytes_still_splits_the_parts() -> None:
    activity = parse_message(two_parts('"b\xe9b"'.encode()))

    assert [a.filename for a in activity.attachments] == ["x.pdf"]


def test_a_boundary_among_the_first_parameters_is_found_after_a_megabyte_of_others() -> None:
    raw = two_parts(b"XYZ", b"a=b; " * (MAX_PARAMS - 2), b"; c=d" * 200_000)

    started = time.process_time()
    activity = parse_message(raw)

    assert time.process_time() - started < 1.0
    assert [a.filename for a in activity.attachments] == ["x.pdf"]


def test_a_seven_thousand_character_boundary_still_splits_the_parts() -> None:
    activity = parse_message(two_parts(b"b" * 7000))

    assert [a.filename for a in activity.attachments] == ["x.pdf"]


def test_a_forwarded_message_is_attached_with_its_header_lines_as_received() -> None:
    inner = (
        b"From: b@example.com\r\n"
        b"Subject: a subject folded\r\n   by its sender,    with odd   spacing\r\n"
        b"X-Long: " + b"word " * 40 + b"\r\n"
        b"\r\nbody\r\n"
    )
    raw = hostile.message(
        b"Content-Type: multipart/mixed; boundary=B\r\n",
        b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--B--\r\n",
    )

    (attachment,) = parse_message(raw).attachments

    # the line break before the closing delimiter belongs to the delimiter (RFC 2046)
    assert attachment.content.replace(b"\n", b"\r\n") == inner.removesuffix(b"\r\n")


def test_multiparts_nested_deeper_than_the_limit_are_not_read() -> None:
    depth = MAX_NESTING + 5
    raw = hostile.nested(60 * depth)

    activity = parse_message(raw)

    assert "nesting-too-deep" in activity.defects
    assert activity.attachments == ()
