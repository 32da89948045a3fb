"""Charsets and encoded filenames of real messages from the corpus come out as the right
Unicode (ISO-2022-JP, KOI8-R, GB2312, windows-1251, windows-1252, and the odd aliases)."""

from __future__ import annotations

import pytest

from router.mail.parse import parse_message
from router.mail.text import decode_bytes, iso2022jp_to_sjis
from router.models import Activity, Address
from tests.servers.common import require
from tests.support.corpus import CORPUS


def corpus(name: str) -> Activity:
    path = CORPUS / name
    require(path.is_file(), f"corpus file missing: {path}")
    return parse_message(path.read_bytes())


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        # ISO-2022-JP encoded words
        ("mimekit/messages/japanese.eml", "日本語メールテスト (testing Japanese emails)"),
        ("mikel-mail/multi_charset/japanese_iso_2022.eml", "まみむめも"),
        # ISO-2022-JP with NEC extension characters (No.), which only cp932 knows
        ("php-mime-mail-parser/issue116.eml", "ЖД№41 от 28.09.2016"),
        (
            "sisimai-set-of-emails/bounce-iso-2022-jp/lhost-office365-04.eml",
            "Undeliverable: ニャーン",
        ),
        # KOI8-R encoded words
        (
            "django-mailbox/message_with_koi8r_filename_attachments.eml",
            "Предложения от НИУ ВШЭ на 2016 год",
        ),
        # GB2312 (decoded as its superset GB18030)
        ("spamscope-mail-parser/mail_test_12.eml", "代开各地增值税发票"),
        # windows-1251 encoded words
        ("rspamd/bad_message.eml", "Скидки до 36 процентов на насосы!"),
        # windows-1252 encoded words
        ("zbateson-mail-mime-parser/m0010.eml", "Die Hasen und die Frösche (Microsoft Outlook 00)"),
        # raw 8-bit UTF-8 subject (RFC 6532) and raw 8-bit without any declaration
        ("mikel-mail/rfc6532/utf8_headers.eml", "Säying Hello"),
        ("zbateson-mail-mime-parser/m0001.eml", "Die Hasen und die Frösche (Microsoft Outlook 00)"),
        # iso-8859-2 encoded word
        ("bounceparser-perl/polish-autoreply.eml", "[Automatyczna odpowiedź] test"),
        # iso-8859-8-i
        ("php-mime-mail-parser/issue149.eml", "מענה 'אני לא נמצא': Invoice 02722027"),
        # UTF-7 encoded word
        ("zbateson-mail-mime-parser/m0006.eml", "Die Hasen und die Frösche (Microsoft Outlook 00)"),
    ],
)
def test_subjects_come_out_as_the_right_unicode(name: str, subject: str) -> None:
    assert corpus(name).subject == subject


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("mimekit/tnef/tnef-ukr-koi8r.eml", "шостий"),  # KOI8-R (Ukrainian) body
        (
            "php-mime-mail-parser/failure.eml",
            "次の受信者またはグループへの配信に失敗しました",
        ),  # gb2312
        ("spamscope-mail-parser/mail_test_12.eml", "我公司可代开各类增值税发票"),  # GB2312
        ("zbateson-mail-mime-parser/m0010.eml", "Die Hasen klagten einst über ihre mißliche Lage"),
        ("mimekit/messages/japanese.eml", "日本語"),
    ],
)
def test_bodies_come_out_as_the_right_unicode(name: str, fragment: str) -> None:
    activity = corpus(name)

    assert fragment in activity.body_html
    assert "\ufffd" not in activity.body_html


def test_display_names_in_windows_1252_and_koi8r_are_decoded() -> None:
    assert corpus("zbateson-mail-mime-parser/m0010.eml").to == (
        Address("mueller@example.com", "Heinz Müller"),
    )
    koi8 = corpus("django-mailbox/message_with_koi8r_filename_attachments.eml")
    assert koi8.sender == Address("osavostenok@hse.ru", "Савостенок Ольга Святославовна")


@pytest.mark.parametrize(
    ("name", "filenames"),
    [
        (
            "apache-mime4j/mimetools-testmsgs/attachment-filename-encoding-UTF8.eml",
            ["attachment.äöü"],
        ),
        ("apache-mime4j/testmsgs/russian-headers.eml", ["Список.doc"]),
        ("apache-james-project/misc/messageWithNonASCIIFilenameAttachment.eml", ["ديناصور.odt"]),
        (
            "mikel-mail/multi_charset/japanese_attachment_long_name.eml",
            ["かきくけこかきくけこかきくけこかきくけこかきくけこ.txt"],
        ),
        ("zbateson-mail-mime-parser/m3004.eml", ["HasenundFrösche.txt"]),
        ("php-mime-mail-parser/m0018.eml", ["사진.JPG", "ATT00001.txt"]),
        ("enmime/mail/mime-bad-8bit-filename.eml", ["管理.doc"]),
        (
            "django-mailbox/message_with_koi8r_filename_attachments.eml",
            [
                "Пакет предложений HSE Career Fair 8 апреля 2016.pdf",
                "Ведомости.pdf",
                "Пакет предложений 2016.pptx",
            ],
        ),
    ],
)
def test_rfc2231_rfc2047_and_8bit_filenames_are_decoded(name: str, filenames: list[str]) -> None:
    assert [a.filename for a in corpus(name).attachments] == filenames


def test_x_mac_cyrillic_is_a_known_charset() -> None:
    activity = corpus("php-mime-mail-parser/issue230.eml")

    assert "ACADEMIC" in activity.body_html
    assert not any(d.startswith("charset-fallback") for d in activity.defects)


def test_iso2022jp_conversion_to_shift_jis_keeps_every_jis_x_0208_character() -> None:
    text = "まみむめも 日本語テスト ソ表能 ｶﾀｶﾅ"
    data = text.encode("iso2022_jp_ext")

    assert iso2022jp_to_sjis(data) is not None
    assert decode_bytes(data, "iso-2022-jp") == (text, False)
    nec = b"\x1b$B-b-!\x1b(B"  # No. and circled 1: NEC row 13, refused by Python's codecs
    assert decode_bytes(nec, "ISO-2022-JP") == ("№①", False)
