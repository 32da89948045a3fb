"""router.mail.parse.parse_message on hand-made messages: fields, bodies, attachments, ids,
refusals."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from router.errors import MessageUnusable, QuarantineError
from router.mail.parse import DEFAULT_MAX_SIZE, SYNTHETIC_ID_DOMAIN, parse_message
from router.models import Address, Classification


def msg(*headers: str, body: str = "Hello", eol: str = "\r\n") -> bytes:
    return (eol.join(headers) + eol + eol + body).encode("utf-8")


SIMPLE = msg(
    "From: Alice Example <alice@example.com>",
    "To: Bob <bob@example.com>, carol@example.com",
    "Cc: =?utf-8?q?Dan=C3=A9?= <dan@example.com>",
    "Subject: Quarterly numbers",
    "Date: Tue, 15 Jul 2025 10:00:00 +0200",
    "Message-ID: <abc123@example.com>",
    "In-Reply-To: <prev@example.com>",
    "References: <root@example.com> <prev@example.com>",
    body="Line 1 <b>not bold</b>\r\nLine 2",
)


def test_plain_message_gives_every_field() -> None:
    activity = parse_message(SIMPLE)

    assert activity.subject == "Quarterly numbers"
    assert activity.sender == Address("alice@example.com", "Alice Example")
    assert activity.to == (Address("bob@example.com", "Bob"), Address("carol@example.com"))
    assert activity.cc == (Address("dan@example.com", "Dané"),)
    assert activity.message_id == "<abc123@example.com>"
    assert activity.in_reply_to == "<prev@example.com>"
    assert activity.references == ("<root@example.com>", "<prev@example.com>")
    assert activity.received_on == datetime(2025, 7, 15, 8, 0, tzinfo=UTC)
    assert activity.classification is Classification.NORMAL
    assert activity.bounce is None


def test_plain_text_body_is_escaped_and_kept_preformatted() -> None:
    body = parse_message(SIMPLE).body_html

    assert body.startswith('<pre style="white-space: pre-wrap">')
    assert "&lt;b&gt;not bold&lt;/b&gt;" in body
    assert "Line 1 &lt;b&gt;not bold&lt;/b&gt;\nLine 2" in body  # CRLF normalised


def test_html_alternative_is_preferred_over_plain_text() -> None:
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/alternative; boundary=XX",
        body="--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        "--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>rich</p>\r\n--XX--\r\n",
    )

    activity = parse_message(raw)

    assert activity.body_html.strip() == "<p>rich</p>"
    assert activity.attachments == ()


def test_calendar_alternative_is_kept_as_an_attachment() -> None:
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/alternative; boundary=XX",
        body="--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        "--XX\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\n"
        "--XX--\r\n",
    )

    activity = parse_message(raw)

    assert "plain" in activity.body_html
    assert [(a.filename, a.mimetype) for a in activity.attachments] == [
        ("attachment-1.ics", "text/calendar")
    ]


def test_inline_image_keeps_its_content_id_and_is_marked_inline() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/related; boundary=RR",
        body="--RR\r\nContent-Type: text/html\r\n\r\n<img src=cid:logo@x>\r\n"
        "--RR\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(png).decode()
        + "\r\n--RR--\r\n",
    )

    activity = parse_message(raw)

    (image,) = activity.attachments
    assert image.content == png
    assert image.content_id == "logo@x"
    assert image.inline is True
    assert image.filename == "attachment-1.png"
    assert "cid:logo@x" in activity.body_html


def test_attachment_without_a_name_gets_a_generated_one() -> None:
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/mixed; boundary=MM",
        body="--MM\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--MM\r\nContent-Type: application/octet-stream\r\n"
        "Content-Disposition: attachment\r\n\r\nDATA\r\n--MM--\r\n",
    )

    (attachment,) = parse_message(raw).attachments

    assert attachment.filename == "attachment-1.bin"
    assert attachment.inline is False


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ("attachment; filename*=UTF-8''%E6%97%A5%E6%9C%AC.pdf", "日本.pdf"),
        ("attachment; filename*0*=iso-8859-1''Gr%FC; filename*1=sse.txt", "Grüsse.txt"),
        ('attachment; filename="=?UTF-8?B?0KHQv9C40YHQvtC6LmRvYw==?="', "Список.doc"),
        ("attachment; filename==?koi8-r?B?89DJ08/LLmRvYw==?=", "Список.doc"),
        ('attachment; filename="..\\\\..\\\\evil.exe"', "evil.exe"),
    ],
)
def test_rfc2231_and_rfc2047_filenames_are_decoded(disposition: str, expected: str) -> None:
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/mixed; boundary=MM",
        body="--MM\r\nContent-Type: text/plain\r\n\r\nx\r\n"
        f"--MM\r\nContent-Type: application/octet-stream\r\nContent-Disposition: {disposition}"
        "\r\n\r\nDATA\r\n--MM--\r\n",
    )

    (attachment,) = parse_message(raw).attachments

    assert attachment.filename == expected


def test_filename_falls_back_to_the_content_type_name() -> None:
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/mixed; boundary=MM",
        body="--MM\r\nContent-Type: text/plain\r\n\r\nx\r\n"
        '--MM\r\nContent-Type: application/pdf; name="report.pdf"\r\n\r\nDATA\r\n--MM--\r\n',
    )

    assert parse_message(raw).attachments[0].filename == "report.pdf"


def test_nested_message_becomes_an_eml_attachment_named_after_its_subject() -> None:
    inner = "From: x@example.com\r\nSubject: Original: plan/b\r\n\r\ninner body\r\n"
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/mixed; boundary=MM",
        body="--MM\r\nContent-Type: text/plain\r\n\r\nforwarding\r\n"
        f"--MM\r\nContent-Type: message/rfc822\r\n\r\n{inner}--MM--\r\n",
    )

    activity = parse_message(raw)

    (nested,) = activity.attachments
    assert nested.filename == "Original_ plan_b.eml"
    assert nested.mimetype == "message/rfc822"
    assert b"inner body" in nested.content
    assert "inner body" not in activity.body_html


def test_base64_encoded_nested_message_is_decoded_before_it_is_attached() -> None:
    inner = b"From: x@example.com\r\nSubject: Inner one.\r\n\r\ninner body\r\n"
    raw = msg(
        "From: a@example.com",
        "Content-Type: multipart/mixed; boundary=MM",
        body="--MM\r\nContent-Type: text/plain\r\n\r\nforwarding\r\n"
        "--MM\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(inner).decode()
        + "--MM--\r\n",
    )

    (nested,) = parse_message(raw).attachments

    assert nested.content == inner
    assert nested.filename == "Inner one.eml"


def test_raw_8bit_subject_is_read_as_utf8_then_windows_1252() -> None:
    utf8 = b"From: a@example.com\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nx"
    cp1252 = b"From: a@example.com\r\nSubject: Gr\xfc\xdfe \x80\r\n\r\nx"

    assert parse_message(utf8).subject == "Grüße"
    assert parse_message(cp1252).subject == "Grüße €"


def test_encoded_words_split_inside_a_multibyte_character_are_joined() -> None:
    word = "日本語".encode()
    first, second = base64.b64encode(word[:4]).decode(), base64.b64encode(word[4:]).decode()
    raw = msg("From: a@example.com", f"Subject: =?utf-8?b?{first}?=\r\n =?utf-8?b?{second}?=")

    assert parse_message(raw).subject == "日本語"


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("ks_c_5601-1987", "사진 첨부"),
        ("x-mac-cyrillic", "Привет"),
        ("gb2312", "代开发票"),
        ("iso-8859-8-i", "שלום"),
        ("windows-1251", "Скидки"),
        ("koi8-r", "Список"),
    ],
)
def test_declared_charsets_and_their_aliases_decode_bodies(charset: str, text: str) -> None:
    codec = {"ks_c_5601-1987": "cp949", "x-mac-cyrillic": "mac_cyrillic"}.get(charset, charset)
    codec = "iso-8859-8" if codec == "iso-8859-8-i" else codec
    raw = (
        b"From: a@example.com\r\nContent-Type: text/plain; charset="
        + charset.encode()
        + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + text.encode(codec)
    )

    activity = parse_message(raw)

    assert text in activity.body_html
    assert not any(d.startswith("charset-fallback") for d in activity.defects)


def test_unknown_charset_falls_back_to_utf8_then_windows_1252() -> None:
    utf8 = b"From: a@x\r\nContent-Type: text/plain; charset=x-bogus\r\n\r\nna\xc3\xafve"
    latin = b"From: a@x\r\nContent-Type: text/plain; charset=x-bogus\r\n\r\nna\xefve"

    assert "naïve" in parse_message(utf8).body_html
    activity = parse_message(latin)
    assert "naïve" in activity.body_html
    assert "charset-fallback:x-bogus" in activity.defects


def test_missing_message_id_is_synthesised_the_same_on_every_poll() -> None:
    raw = msg("From: a@example.com", "Subject: no id")

    first, second = parse_message(raw).message_id, parse_message(raw).message_id

    assert first == second
    assert first.startswith("<") and first.endswith(f"@{SYNTHETIC_ID_DOMAIN}>")
    assert parse_message(raw + b"!").message_id != first
    assert "message-id-synthesised" in parse_message(raw).defects


def test_unparseable_message_id_is_replaced_but_a_bare_one_is_bracketed() -> None:
    garbage = msg("From: a@example.com", "Message-ID: this is not an id")
    bare = msg("From: a@example.com", "Message-ID: 1234@host.example")

    assert parse_message(garbage).message_id.endswith(f"@{SYNTHETIC_ID_DOMAIN}>")
    assert parse_message(bare).message_id == "<1234@host.example>"


def test_received_date_falls_back_to_received_on_and_is_timezone_aware() -> None:
    fallback = datetime(2025, 1, 2, 3, 4, 5)
    no_date = msg("From: a@example.com")
    bad_date = msg("From: a@example.com", "Date: yesterday-ish")
    no_zone = msg("From: a@example.com", "Date: Tue, 15 Jul 2025 10:00:00 -0000")

    assert parse_message(no_date).received_on is None
    assert parse_message(no_date, received_on=fallback).received_on == fallback.replace(tzinfo=UTC)
    activity = parse_message(bad_date, received_on=fallback.replace(tzinfo=UTC))
    assert activity.received_on == fallback.replace(tzinfo=UTC)
    assert "bad-date" in activity.defects
    parsed = parse_message(no_zone).received_on
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Importance: High", "high"),
        ("Importance: low", "low"),
        ("X-Priority: 1 (Highest)", "high"),
        ("X-Priority: 5", "low"),
        ("X-Priority: 3 (Normal)", "normal"),
        ("Priority: urgent", "high"),
        ("Priority: non-urgent", "low"),
        ("X-MSMail-Priority: High", "high"),
        ("X-Other: 1", "normal"),
    ],
)
def test_importance_comes_from_any_of_the_priority_headers(header: str, expected: str) -> None:
    assert parse_message(msg("From: a@example.com", header)).importance == expected


def test_sender_falls_back_to_sender_then_return_path() -> None:
    via_sender = msg("Sender: list@example.com", "Subject: s")
    via_return_path = msg("Return-Path: <bounce@example.com>", "Subject: s")
    null_return_path = msg("Return-Path: <>", "Subject: s")

    assert parse_message(via_sender).sender == Address("list@example.com")
    assert parse_message(via_return_path).sender == Address("bounce@example.com")
    assert parse_message(null_return_path).sender is None


def test_malformed_address_lists_still_give_the_addresses() -> None:
    raw = msg(
        "From: a@example.com",
        'To: "Unclosed <x@example.com>, , undisclosed-recipients:;, <y@example.com>',
        "Cc: @@@",
    )

    activity = parse_message(raw)

    assert "y@example.com" in [a.email for a in activity.to]
    assert activity.cc == () or all(a.email for a in activity.cc)


def test_one_broken_stretch_of_an_address_list_does_not_lose_the_others() -> None:
    raw = msg("From: a@example.com", 'To: Good <good@example.com>, "broken <bad@example.com>')

    emails = [a.email for a in parse_message(raw).to]

    assert emails[0] == "good@example.com"
    assert "bad@example.com" in emails


def test_group_names_and_bare_words_are_not_taken_for_addresses() -> None:
    raw = msg(
        "From: MAILER-DAEMON",
        "Return-Path: <bounces@example.com>",
        "To: <Undisclosed-Recipient:@mailman.example.com;>",
        "Cc: undisclosed-recipients:;",
    )

    activity = parse_message(raw)

    assert activity.sender == Address("bounces@example.com")
    assert activity.to == ()
    assert activity.cc == ()


def test_folded_header_indentation_becomes_one_space() -> None:
    raw = msg("From: a@example.com", "Subject: Die Hasen und\r\n    die Frösche")

    assert parse_message(raw).subject == "Die Hasen und die Frösche"


def test_message_over_the_size_limit_is_refused_before_parsing() -> None:
    raw = msg("From: a@example.com", body="x" * 2000)

    with pytest.raises(MessageUnusable) as caught:
        parse_message(raw, max_size=1000)

    assert isinstance(caught.value, QuarantineError)
    assert "x" * 10 not in str(caught.value)  # no content in the reason
    assert DEFAULT_MAX_SIZE == 25 * 1024 * 1024


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n  ", b"\r\n\r\n"])
def test_empty_message_is_unusable(raw: bytes) -> None:
    with pytest.raises(MessageUnusable):
        parse_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"just some words without any header",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
        b'Content-Type: multipart/mixed; boundary="unterminated\r\n\r\n--x',
        b"From: \xff\xfe\x00\x01\r\nSubject: =?bogus?Q?=ZZ?= =?utf-8?B?!!!?=\r\n\r\n\x00\x01",
        b"Content-Transfer-Encoding: base64\r\nContent-Type: text/plain\r\n\r\n%%%not base64",
        b'Content-Type: text/plain; charset="\r\nContent-Disposition: attachment; filename*=\r\n',
        b"From: a@x\r\nContent-Type: message/rfc822\r\n\r\n",
        b"\x00" * 64,
    ],
)
def test_hostile_input_gives_an_activity_or_unusable_never_another_error(raw: bytes) -> None:
    try:
        activity = parse_message(raw)
    except MessageUnusable:
        return
    assert activity.message_id.startswith("<")


def test_defects_name_problems_without_message_content() -> None:
    raw = msg(
        "From: a@example.com",
        "Subject: secret-subject",
        "Content-Type: multipart/mixed; boundary=MM",
        body="--MM\r\nContent-Type: text/plain\r\n\r\nsecret-body\r\n",  # no closing boundary
    )

    activity = parse_message(raw)

    assert activity.defects
    assert not any("secret" in d for d in activity.defects)
    assert "secret" not in repr(activity)


@pytest.mark.parametrize("depth", [100, 3000])
def test_absurdly_deep_nesting_keeps_the_headers_and_the_raw_message(depth: int) -> None:
    head = b"From: a@example.com\r\nSubject: deep\r\nContent-Type: multipart/mixed; boundary=b0\r\n"
    body = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    raw = head + b"\r\n" + body + b"--b%d\r\n\r\nleaf\r\n" % depth

    activity = parse_message(raw)

    assert activity.subject == "deep"
    assert activity.sender == Address("a@example.com")
    if "mime-structure-unreadable" in activity.defects:  # the stdlib parser gave up
        assert activity.attachments[0].content == raw
    else:
        assert "nesting-too-deep" in activity.defects
