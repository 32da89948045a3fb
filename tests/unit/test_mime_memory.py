"""Memory bounds of parse_message: oversize messages are refused without being parsed, and a large
message under the limit parses within a small multiple of its size (measured with tracemalloc;
run with ``-s`` to see the numbers)."""

from __future__ import annotations

import base64
import os
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import pytest

from router.errors import MessageUnusable
from router.mail.parse import DEFAULT_MAX_SIZE, parse_message

MiB = 1024 * 1024
T = TypeVar("T")


def peak_of(call: Callable[[], T]) -> tuple[T | None, int]:
    """Run ``call`` under tracemalloc; return its result (None if it raised) and the peak bytes."""
    tracemalloc.start()
    try:
        result: T | None = call()
    except MessageUnusable:
        result = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, peak


def message_with_attachment(size: int) -> tuple[bytes, bytes]:
    """A message of about ``size`` bytes carrying one base64 attachment; returns (raw, content)."""
    content = os.urandom(size * 3 // 4 - 4096)
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    head = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\n"
        b"Message-ID: <big@example.com>\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
        b"--BB\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--BB\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=big.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head + encoded + b"--BB--\r\n", content


def test_fifty_megabyte_message_is_refused_without_being_parsed() -> None:
    raw = b"From: a@example.com\r\nSubject: huge\r\n\r\n" + b"x" * (50 * MiB)

    result, peak = peak_of(lambda: parse_message(raw))

    print(f"\n50 MiB refused: tracemalloc peak {peak / MiB:.3f} MiB")
    assert result is None
    assert peak < 2 * len(raw)
    assert peak < MiB  # nothing of the message was copied


def test_size_limit_is_checked_on_the_byte_count() -> None:
    raw, _ = message_with_attachment(64 * 1024)

    with pytest.raises(MessageUnusable):
        parse_message(raw, max_size=len(raw) - 1)
    assert parse_message(raw, max_size=len(raw)).attachments


def test_twenty_megabyte_message_parses_within_a_small_multiple_of_its_size() -> None:
    raw, content = message_with_attachment(20 * MiB)
    assert len(raw) < DEFAULT_MAX_SIZE

    activity, peak = peak_of(lambda: parse_message(raw))

    print(
        f"\n{len(raw) / MiB:.1f} MiB parsed: tracemalloc peak {peak / MiB:.1f} MiB "
        f"({peak / len(raw):.2f}x the message)"
    )
    assert activity is not None
    (attachment,) = activity.attachments
    assert attachment.content == content
    assert peak < 4 * len(raw)


def test_twenty_megabyte_plain_text_body_parses_within_a_small_multiple_of_its_size() -> None:
    line = b"The quick brown fox jumps over the lazy dog & friends <again>.\r\n"
    raw = b"From: a@example.com\r\nSubject: long\r\n\r\n" + line * (20 * MiB // len(line))

    activity, peak = peak_of(lambda: parse_message(raw))

    print(
        f"\n{len(raw) / MiB:.1f} MiB of text parsed: tracemalloc peak {peak / MiB:.1f} MiB "
        f"({peak / len(raw):.2f}x the message)"
    )
    assert activity is not None
    assert activity.body_html.count("&lt;again&gt;") == 20 * MiB // len(line)
    assert peak < 8 * len(raw)
