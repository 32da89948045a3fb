"""Composition of outgoing CRM emails (router.mail.compose): headers, parts, encodings."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from router.mail.addresses import AddressRefused
from router.mail.compose import (
    MAX_SUBJECT,
    compose_message,
    html_to_text,
    message_id_for,
    subject_with_token,
)
from router.models import Address, Attachment, OutboundEmail

SENDER = Address("queue@example.com", "Kundenservice Müller & Söhne")


def _email(**changes: object) -> OutboundEmail:
    base: dict[str, object] = {
        "email_id": "{0F8FAD5B-D9CB-469F-A165-70867728950E}",
        "subject": "Ihre Anfrage \u2013 Größe XL",
        "body_html": "<p>Sehr geehrte Frau Ødegård,</p><p>danke!</p>",
        "sender": SENDER,
        "to": (Address("kari@example.no", "Kari Ødegård"),),
        "cc": (Address("team@example.com", "Team, Vertrieb"),),
        "bcc": (Address("archive@example.com"),),
        "tracking_token": "CRM:0004711",
    }
    base.update(changes)
    return OutboundEmail(**base)  # type: ignore[arg-type]


def _parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_bcc_recipients_are_in_the_envelope_but_never_in_a_header() -> None:
    composed = compose_message(_email())
    msg = _parse(composed.raw)
    assert composed.recipients == ("kari@example.no", "team@example.com", "archive@example.com")
    assert "Bcc" not in msg and b"archive@" not in composed.raw


def test_non_ascii_names_and_subject_are_encoded_and_decode_back() -> None:
    composed = compose_message(_email())
    msg = _parse(composed.raw)
    assert composed.raw.isascii() and not composed.smtputf8
    assert msg["From"].addresses[0].display_name == "Kundenservice Müller & Söhne"
    assert str(msg["To"]) == "Kari Ødegård <kari@example.no>"
    assert str(msg["Cc"]) == '"Team, Vertrieb" <team@example.com>'
    assert msg["Subject"] == "Ihre Anfrage \u2013 Größe XL CRM:0004711"


def test_tracking_token_is_not_added_twice() -> None:
    assert subject_with_token("Re: Offer CRM:0004711", "CRM:0004711") == "Re: Offer CRM:0004711"
    assert subject_with_token("", "CRM:1") == "CRM:1"
    assert subject_with_token("  Offer\r\n  now ", None) == "Offer now"


def test_body_is_html_with_a_plain_text_alternative() -> None:
    msg = _parse(compose_message(_email()).raw)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == (
        "Sehr geehrte Frau Ødegård,\n\ndanke!"
    )
    assert "<p>danke!</p>" in msg.get_body(("html",)).get_content()


def test_attachment_names_use_rfc_2231_and_round_trip() -> None:
    pdf = Attachment("Angebot für Zoë (final).pdf", "application/pdf", b"%PDF-1.7\x00\xff")
    composed = compose_message(_email(attachments=(pdf,)))
    msg = _parse(composed.raw)
    assert msg.get_content_type() == "multipart/mixed"
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "Angebot für Zoë (final).pdf"
    assert part.get_content() == b"%PDF-1.7\x00\xff"
    assert b"filename*=utf-8''Angebot%20f%C3%BCr%20Zo%C3%AB" in composed.raw


def test_inline_image_makes_the_html_part_related() -> None:
    logo = Attachment("logo.png", "image/png", b"\x89PNG", content_id="logo@x", inline=True)
    msg = _parse(compose_message(_email(attachments=(logo,))).raw)
    related = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    image = [p for p in related[0].iter_parts() if p.get_content_type() == "image/png"]
    assert image[0]["Content-ID"] == "<logo@x>"
    assert list(msg.iter_attachments()) == []


def test_message_id_is_deterministic_per_crm_email_and_uses_the_sender_domain() -> None:
    first = compose_message(_email()).message_id
    again = compose_message(_email(subject="changed")).message_id
    other = compose_message(_email(email_id="other")).message_id
    assert first == again != other
    assert first.startswith("<er.") and first.endswith("@example.com>")
    assert len(f"Message-ID: {first}") <= 78  # never folded
    assert _parse(compose_message(_email()).raw)["Message-ID"] == first


def test_message_id_already_held_by_the_crm_is_kept() -> None:
    email = _email(message_id="abc@crm.example.com")
    assert message_id_for(email, "queue@example.com") == "<abc@crm.example.com>"


def test_reply_headers_thread_the_email() -> None:
    msg = _parse(compose_message(_email(in_reply_to="<p2@x>", references=("<p1@x>", "p2@x"))).raw)
    assert msg["In-Reply-To"] == "<p2@x>"
    assert msg["References"] == "<p1@x> <p2@x>"


def test_date_header_is_the_given_time() -> None:
    now = datetime(2026, 11, 28, 8, 30, tzinfo=UTC)
    msg = _parse(compose_message(_email(), now=now).raw)
    assert msg["Date"].datetime == now


def test_international_domain_is_sent_as_punycode() -> None:
    email = _email(to=(Address("info@bücher.example", "Bücher"),))
    composed = compose_message(email)
    assert str(_parse(composed.raw)["To"]) == "Bücher <info@xn--bcher-kva.example>"
    assert not composed.smtputf8


def test_non_ascii_local_part_needs_smtputf8() -> None:
    composed = compose_message(_email(to=(Address("jürgen@example.com", "Jürgen"),)))
    assert composed.smtputf8
    assert "jürgen@example.com".encode() in composed.raw


def test_high_importance_is_flagged() -> None:
    msg = _parse(compose_message(_email(importance="high")).raw)
    assert msg["Importance"] == "high" and msg["X-Priority"] == "1"


def test_html_rendering_keeps_structure_links_and_drops_scripts() -> None:
    html = (
        "<html><head><style>p{}</style><title>t</title></head><body>"
        "<h1>Hi &amp; welcome</h1><ul><li>one</li><li>two</li></ul>"
        "<p>See <a href='https://example.com/x'>this</a>.<br>Bye</p>"
        "<script>alert(1)</script></body></html>"
    )
    text = html_to_text(html)
    assert text == ("Hi & welcome\n\n* one\n\n* two\n\nSee this <https://example.com/x>.\nBye\n")


def test_empty_body_still_gives_both_alternatives() -> None:
    msg = _parse(compose_message(_email(body_html="")).raw)
    assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None


def test_lines_starting_with_dots_and_long_lines_are_safe() -> None:
    html = "<pre>\n.\n" + "x" * 2000 + "</pre>"
    raw = compose_message(_email(body_html=html)).raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert "x" * 2000 in _parse(raw).get_body(("html",)).get_content()


def test_long_headers_are_folded_and_read_back_unchanged() -> None:
    to = tuple(Address(f"person{i}@example.com", f"Pérson Nümber {i}") for i in range(40))
    subject = "Sehr lange Betreffzeile mit Ümlauten " * 6
    composed = compose_message(_email(to=to, subject=subject, tracking_token=None))
    msg = _parse(composed.raw)
    head = composed.raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert [a.addr_spec for a in msg["To"].addresses] == [a.email for a in to]
    assert [a.display_name for a in msg["To"].addresses] == [a.name for a in to]
    assert msg["Subject"] == " ".join(subject.split())


def test_long_non_ascii_file_name_uses_rfc_2231_continuations() -> None:
    name = "Jahresübersicht " * 12 + "ÄÖÜ.xlsx"
    file = Attachment(name, "application/vnd.ms-excel", b"data")
    composed = compose_message(_email(attachments=(file,)))
    (part,) = list(_parse(composed.raw).iter_attachments())
    assert part.get_filename() == " ".join(name.split())
    assert b"filename*1*=" in composed.raw


def test_ascii_file_name_with_quotes_is_escaped() -> None:
    file = Attachment('the "final" \\ version.txt', "text/plain", b"hello")
    (part,) = list(_parse(compose_message(_email(attachments=(file,))).raw).iter_attachments())
    assert part.get_filename() == 'the "final" \\ version.txt'
    assert part.get_content_type() == "text/plain"


# -- hostile CRM data (issue 10) -------------------------------------------------------------------
def _head(raw: bytes) -> list[bytes]:
    return raw.partition(b"\r\n\r\n")[0].split(b"\r\n")


def test_the_envelope_and_the_headers_come_from_the_same_parsed_addresses() -> None:
    email = _email(to=(Address('"Jürgen, \\"JM\\"" <jm@bücher.example>'),), cc=(), bcc=())
    composed = compose_message(email)
    assert composed.recipients == ("jm@xn--bcher-kva.example",)
    assert composed.email is not None
    assert composed.email.to == (Address("jm@xn--bcher-kva.example", 'Jürgen, "JM"'),)
    (to,) = _parse(composed.raw)["To"].addresses
    assert (to.display_name, to.addr_spec) == ('Jürgen, "JM"', "jm@xn--bcher-kva.example")


def test_a_crlf_in_a_recipient_refuses_the_email_instead_of_writing_a_header() -> None:
    email = _email(to=(Address('"Name\r\nBcc: evil@x.example" <victim@example.net>'),))
    with pytest.raises(AddressRefused, match=r"^To address 1 .* U\+000D"):
        compose_message(email)


@pytest.mark.parametrize("local", ["kari", "kåri"], ids=["ascii", "smtputf8"])
def test_crlf_in_an_attachments_type_name_and_content_id_never_reaches_a_header(
    local: str,
) -> None:
    file = Attachment(
        "a\r\nX-Injected: name.pdf",
        "application/pdf\r\nX-Injected: type",
        b"data",
        content_id="cid\r\nX-Injected: cid",
        inline=True,
    )
    composed = compose_message(_email(to=(Address(f"{local}@example.no"),), attachments=(file,)))
    assert b"\r\nX-Injected" not in composed.raw
    (part,) = [p for p in _parse(composed.raw).walk() if p.get("Content-ID")]
    assert part.get_content_type() == "application/octet-stream"
    assert part["Content-ID"] == "<cidX-Injected:cid>"
    assert part.get_filename() == "a X-Injected: name.pdf"


@pytest.mark.parametrize(
    ("given", "sent"),
    [("text/PLAIN; charset=utf-8", "text/plain"), ("image/png", "image/png"), ("x", None),
     ("text/pl ain", None), ("multipart/mixed", None), ("text/\u00e9", None), ("", None)],
)  # fmt: skip
def test_an_attachments_mime_type_is_two_tokens_or_octet_stream(given: str, sent: str) -> None:
    file = Attachment("f.bin", given, b"data")
    (part,) = list(_parse(compose_message(_email(attachments=(file,))).raw).iter_attachments())
    assert part.get_content_type() == (sent or "application/octet-stream")


@pytest.mark.parametrize("local", ["kari", "kåri"], ids=["ascii", "smtputf8"])
def test_nul_bytes_are_dropped_from_subject_body_and_tracking_token(local: str) -> None:
    email = _email(
        to=(Address(f"{local}@example.no"),),
        subject="Hallo\x00Welt",
        body_html="<p>a\x00b</p>",
        tracking_token="CRM:\x001",
    )
    composed = compose_message(email)
    assert b"\x00" not in composed.raw
    msg = _parse(composed.raw)
    assert msg["Subject"] == "HalloWelt CRM:1"
    assert "<p>ab</p>" in msg.get_body(("html",)).get_content()


@pytest.mark.parametrize("local", ["kari", "kåri"], ids=["ascii", "smtputf8"])
def test_a_100_kb_subject_without_spaces_is_cut_and_folded_into_short_lines(local: str) -> None:
    email = _email(to=(Address(f"{local}@example.no"),), subject="x" * 100_000)
    composed = compose_message(email)
    assert max(len(line) for line in _head(composed.raw)) <= 78
    assert _parse(composed.raw)["Subject"] == "x" * MAX_SUBJECT + " CRM:0004711"


@pytest.mark.parametrize("local", ["kari", "kåri"], ids=["ascii", "smtputf8"])
def test_long_names_and_message_ids_never_make_a_header_line_over_998_octets(local: str) -> None:
    long_name = "\U0001f600" * 400
    email = _email(
        to=(Address(f"{local}@example.no", long_name), Address("x" * 64 + "@" + "y" * 60 + ".no")),
        message_id="m" * 10_000 + "@x",
        in_reply_to="<a\r\nX-Injected: 1@x>",
        references=("r" * 10_000,),
    )
    composed = compose_message(email)
    assert max(len(line) for line in _head(composed.raw)) <= 998
    assert b"\r\nX-Injected" not in composed.raw
    assert composed.message_id.startswith("<er.")  # the CRM's junk id replaced by our own
