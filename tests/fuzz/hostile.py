"""Hostile inputs of a chosen size for the parsers: messages, address headers, XML documents.

Each family is a function ``size -> bytes`` (or ``str`` for address text) whose cost to parse
must grow linearly with ``size``. The bounds tests (``tests/unit/test_parser_bounds.py``), the
fuzz targets' seed corpus (``tests/fuzz/seeds.py``), the integration tests and the benchmark
(``tests/benchmarks/bench_hostile_input.py``) all draw from here, so a family added once is
measured, fuzzed and timed everywhere.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

Family = Callable[[int], bytes]

_HEAD = b"From: a@example.com\r\nMessage-ID: <hostile@example.com>\r\n"


def message(headers: bytes, body: bytes = b"body\r\n", head: bytes = _HEAD) -> bytes:
    """A small message with ``headers`` added and ``body``."""
    return head + headers + b"\r\n" + body


def header(name: bytes, unit: bytes) -> Family:
    """A message whose header ``name`` is ``unit`` repeated to ``size`` bytes."""
    return lambda size: message(name + b": " + unit * max(1, size // len(unit)) + b"\r\n")


def to_without_at(size: int) -> bytes:
    """Issue 10, defect 1: a ``To:`` of ``size`` bytes without an ``@`` (1 MB took > 14 min)."""
    return header(b"To", b"a")(size)


def to_without_at_mail(size: int = 1024 * 1024) -> bytes:
    """A complete message (From, Subject, Date, a fixed Message-ID) with :func:`to_without_at`'s
    ``To:``, for a mailbox: the integration tests put it among good mail."""
    return (
        b"From: Hostile <hostile@example.org>\r\n"
        b"Subject: hostile to header\r\n"
        b"Message-ID: <hostile.1mb.to@example.org>\r\n"
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        b"To: " + b"a" * size + b"\r\n\r\nbody\r\n"
    )


def parts(size: int, extra_params: bytes = b"") -> bytes:
    """A flat multipart of about ``size`` bytes with one tiny attachment per 60-100 bytes."""
    part = b'--B\r\nContent-Type: application/octet-stream; name="f%07d.bin"' + extra_params
    part += b"\r\n\r\nx\r\n"
    count = max(1, size // len(part % 0))
    body = b"".join(part % i for i in range(count)) + b"--B--\r\n"
    return message(b"Content-Type: multipart/mixed; boundary=B\r\n", body)


def parts_count(count: int) -> bytes:
    """A flat multipart of ``count`` tiny attachments (issue 10: 50,000 of them)."""
    part = b"--B\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n"
    body = part * count + b"--B--\r\n"
    return message(b"Content-Type: multipart/mixed; boundary=B\r\n", body)


def nested(size: int) -> bytes:
    """Multiparts nested ``size // 60`` deep."""
    depth = max(1, size // 60)
    body = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    return message(b"Content-Type: multipart/mixed; boundary=b0\r\n", body + b"--x\r\n\r\nhi\r\n")


def lines_under_deep_nesting(size: int, depth: int = 400) -> bytes:
    """Short lines inside ``depth`` nested multiparts: the feed parser checks each line against
    every enclosing boundary (260 KB at depth 400 took 3.6 s)."""
    head = nested(60 * depth)
    return head + b"x\r\n" * max(1, (size - len(head)) // 3)


def forwarded(inner_headers: bytes) -> bytes:
    """A message carrying one message/rfc822 part with ``inner_headers``."""
    inner = b"From: b@example.com\r\n" + inner_headers + b"\r\nbody\r\n"
    body = (
        b"--B\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--B--\r\n"
    )
    return message(b"Content-Type: multipart/mixed; boundary=B\r\n", body)


def dsn_folded(size: int) -> bytes:
    """A delivery report whose status block is one field folded ``size // 4`` times."""
    status = b"Diagnostic-Code: x\n" + b" a\n" * max(1, size // 4)
    body = (
        b"--B\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(status)
        + b"--B--\r\n"
    )
    head = b"From: MAILER-DAEMON@example.com\r\nSubject: Undelivered Mail\r\n"
    ctype = b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n"
    return message(ctype, body, head=head)


#: Message families: name -> size -> raw message.
MESSAGES: dict[str, Family] = {
    "to-without-at": to_without_at,
    "to-angle-brackets": header(b"To", b"<"),
    "to-parentheses": header(b"To", b"("),
    "to-quotes": header(b"To", b'"'),
    "to-at-signs": header(b"To", b"@"),
    "to-a-at": header(b"To", b"a@"),
    "to-many-mailboxes": header(b"To", b"u@example.com, "),
    "from-at-signs": header(b"From", b"@"),
    "cc-colons": header(b"Cc", b":"),
    "subject-long-line": header(b"Subject", b"x"),
    "subject-encoded-words": header(b"Subject", b"=?utf-8?q?a?= "),
    "subject-open-encoded-words": header(b"Subject", b"=?utf-8?q?"),
    "subject-8bit": header(b"Subject", b"\xe9"),
    "content-type-parameters": header(b"Content-Type", b"a=b; "),
    "content-type-rfc2231": header(b"Content-Type", b"name*1=a; "),
    "content-type-quoted-semicolons": header(b"Content-Type", b'x="a;b;c;"; '),
    "references-angle": header(b"References", b"<"),
    "references-open": header(b"References", b"<aaaaaaaa"),
    "date-long": header(b"Date", b"1 "),
    "many-headers": lambda size: message(b"X-A: b\r\n" * max(1, size // 8)),
    "folded-header": lambda size: message(b"To: a@b\r\n" + b" x\r\n" * max(1, size // 4)),
    "body-carriage-returns": lambda size: message(b"", b"\r" * size),
    "html-angle-brackets": lambda size: message(b"Content-Type: text/html\r\n", b"<" * size),
    "nested-multiparts": nested,
    "lines-under-deep-nesting": lines_under_deep_nesting,
    "many-parts": parts,
    "many-parts-long-content-types": lambda size: parts(size, b"; a=b" * 200),
    "forwarded-long-folded-subject": lambda size: forwarded(b"Subject: " + b"x " * (size // 2)),
    "forwarded-8bit-subject": lambda size: forwarded(b"Subject: " + b"\xe9 " * (size // 2)),
    "dsn-folded-field": dsn_folded,
}

#: Address header families: name -> size -> header text.
ADDRESSES: dict[str, Callable[[int], str]] = {
    name: (lambda size, unit=unit: unit * max(1, size // len(unit)))
    for name, unit in {
        "letters": "a",
        "angle-brackets": "<",
        "parentheses": "(",
        "quotes": '"',
        "at-signs": "@",
        "a-at": "a@",
        "backslashes": "\\",
        "commas": "a,",
        "group-colons": "g:",
        "mailboxes": "Name <u@example.com>, ",
        "quoted-names": '"x, y" <u@example.com>, ',
        "comments": "(c) u@example.com (d), ",
    }.items()
}

_XML = b'<?xml version="1.0"?>\n'

#: XML families: name -> size -> document.
XML: dict[str, Family] = {
    "deep-nesting": lambda size: _XML + b"<a>" * (size // 7) + b"</a>" * (size // 7),
    "unclosed-nesting": lambda size: _XML + b"<a>" * (size // 3),
    "many-attributes": lambda size: (
        _XML + b"<a " + b"".join(b'b%d="" ' % i for i in range(size // 9)) + b"/>"
    ),
    "many-siblings": lambda size: _XML + b"<a>" + b"<b/>" * (size // 4) + b"</a>",
    "many-comments": lambda size: _XML + b"<a>" + b"<!--x-->" * (size // 8) + b"</a>",
    "many-character-references": lambda size: _XML + b"<a>" + b"&#65;" * (size // 5) + b"</a>",
    "long-text": lambda size: _XML + b"<a>" + b"x" * size + b"</a>",
    "long-name": lambda size: _XML + b"<" + b"a" * size + b"/>",
    "namespaces": lambda size: (
        _XML + b"<a " + b"".join(b'xmlns:p%d="u%d" ' % (i, i) for i in range(size // 16)) + b"/>"
    ),
    "entity-declarations": lambda size: (
        b"<!DOCTYPE a [" + b"<!ENTITY e 'x'>" * (size // 15) + b"]><a/>"
    ),
}
