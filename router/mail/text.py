"""Text decoding for incoming mail: charsets, RFC 2047 encoded words, raw header values.

Everything here is total: any input gives a ``str`` back, never an exception. Real-world mail
declares charsets Python does not know (``x-mac-cyrillic``), names subsets when the sender used a
superset (``gb2312`` for GBK text, ``ks_c_5601-1987`` for CP949), or declares nothing at all and
sends raw 8-bit bytes. The rules, in order:

1. the declared charset, through :data:`CHARSET_ALIASES` (superset first);
2. UTF-8, strictly (most undeclared 8-bit text today is UTF-8);
3. windows-1252 with replacement characters (the classic Western default; it maps 251 of the
   256 byte values, so almost nothing is lost).

Used by :mod:`router.mail.parse`, :mod:`router.mail.parts` and :mod:`router.mail.classify`.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Iterable
from email.message import Message
from itertools import islice

#: Declared charset name (lower case) -> Python codec. Supersets win: a message labelled with the
#: subset very often carries characters only the superset has.
CHARSET_ALIASES: dict[str, str] = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601-1989": "cp949",
    "euc-kr": "cp949",
    "x-mac-cyrillic": "mac_cyrillic",
    "x-mac-ce": "mac_latin2",
    "x-mac-roman": "mac_roman",
    "x-mac-greek": "mac_greek",
    "x-mac-turkish": "mac_turkish",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "x-sjis": "cp932",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-8-e": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
}

#: Codecs that decode bytes to text but are not character sets; a label naming one is ignored.
_NOT_CHARSETS = frozenset(
    {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined", "unicode_internal"}
)

#: Header fields of one message or part read at most; the parser asks for some thirty names,
#: each a pass over the fields. Real mail has a few dozen (a long Received chain, a few hundred).
MAX_HEADER_FIELDS = 2000
#: Characters of one header value read at most. No header of real mail comes near (a To: with
#: 2,000 recipients is about 100 KB); every reader of header text is linear up to this.
MAX_HEADER_VALUE = 256 * 1024
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_FOLD = re.compile(r"\r\n|\r|\n")
_FOLD_INDENT = re.compile(r"(?:\r\n|\r|\n)[ \t]+")
_SURROGATE = re.compile("[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def codec_for(charset: str | None) -> str | None:
    """The Python codec for a declared charset label, or None when it names nothing usable."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").split("*", 1)[0].lower()
    label = CHARSET_ALIASES.get(label, label)
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    return None if name in _NOT_CHARSETS else name


def decode_bytes(data: bytes, charset: str | None) -> tuple[str, bool]:
    """Decode ``data`` as text; the flag says a fallback or replacement characters were needed."""
    codec = codec_for(charset)
    if codec is not None:
        try:
            return data.decode(codec), False
        except (UnicodeDecodeError, LookupError, ValueError):
            pass
        if codec.startswith("iso2022_jp"):
            converted = iso2022jp_to_sjis(data)
            if converted is not None:
                return converted.decode("cp932", errors="replace"), False
    if codec != "utf-8":
        try:
            return data.decode("utf-8"), codec is not None or bool(charset)
        except UnicodeDecodeError:
            pass
    if codec in (None, "utf-8", "ascii", "cp1252"):
        return data.decode("cp1252", errors="replace"), True
    try:
        return data.decode(codec, errors="replace"), True
    except (LookupError, ValueError):
        return data.decode("cp1252", errors="replace"), True


def iso2022jp_to_sjis(data: bytes) -> bytes | None:
    """Re-encode ISO-2022-JP as Shift_JIS, so that the Windows code page (cp932) can decode it.

    Japanese Windows mailers write NEC and IBM extension characters (circled digits, No.) in
    ISO-2022-JP, which Python's strict ISO-2022-JP codecs refuse; cp932 knows them. Returns None
    when ``data`` uses escape sequences other than ASCII, JIS-Roman, JIS X 0208 and katakana.
    """
    out = bytearray()
    mode = "ascii"
    i = 0
    while i < len(data):
        if data[i] == 0x1B:
            mode = _ISO2022JP_ESCAPES.get(data[i + 1 : i + 3], "")
            if not mode:
                return None
            i += 3
        elif mode == "jis" and data[i] > 0x20 and i + 1 < len(data):
            out += _jis_to_sjis(data[i], data[i + 1])
            i += 2
        else:
            out.append(data[i] | 0x80 if mode == "kana" and 0x20 < data[i] < 0x60 else data[i])
            i += 1
    return bytes(out)


_ISO2022JP_ESCAPES = {b"(B": "ascii", b"(J": "ascii", b"$@": "jis", b"$B": "jis", b"(I": "kana"}


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    s1 = (j1 + 1) // 2 + 0x70
    s1 += 0x40 if s1 >= 0xA0 else 0
    # odd rows map to the lower half of the trail byte (skipping 0x7F), even rows to the upper
    s2 = (j2 + 0x1F + (1 if j2 >= 0x60 else 0)) if j1 % 2 else j2 + 0x7E
    return bytes((s1 & 0xFF, s2 & 0xFF))


def fix_surrogates(text: str) -> str:
    """Turn the parser's surrogate-escaped raw 8-bit bytes back into real characters."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    raw = text.encode("utf-8", errors="surrogateescape")
    return decode_bytes(raw, None)[0]


def unfold(value: str) -> str:
    """Header value without its folding line breaks.

    A fold and the indentation after it become one space: mailers indent continuation lines
    by as many spaces as they like, and nobody means them as text.
    """
    return _FOLD.sub("", _FOLD_INDENT.sub(" ", value))


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    data = payload.encode("utf-8", errors="replace")
    try:
        if encoding in "bB":
            data = data.strip().rstrip(b"=")
            return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        return binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return None


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words anywhere in ``value`` (also where the RFC forbids them).

    Whitespace between two encoded words is dropped, as the RFC says. Adjacent words in the same
    charset are joined as bytes before decoding, because some mailers split a multi-byte
    character across two words.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[bytes] = []
    charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap, pos = value[pos : match.start()], match.end()
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:  # undecodable: keep the word as written
            out += [_flush(pending, charset), gap, match.group(0)]
            pending = []
            continue
        if gap and not (gap.isspace() and pending):
            out += [_flush(pending, charset), gap]
            pending = []
        elif pending and match.group(1).lower() != (charset or "").lower():
            out.append(_flush(pending, charset))
            pending = []
        pending.append(data)
        charset = match.group(1)
    out += [_flush(pending, charset), value[pos:]]
    return "".join(out)


def _flush(pending: list[bytes], charset: str | None) -> str:
    if not pending:
        return ""
    return decode_bytes(b"".join(pending), charset)[0]


def raw_headers(msg: Message, name: str) -> list[str]:
    """Every raw value of header ``name`` among the first :data:`MAX_HEADER_FIELDS` fields (its
    first :data:`MAX_HEADER_VALUE` characters), unfolded, 8-bit bytes decoded; never raises."""
    wanted = name.lower()
    try:
        items: Iterable[tuple[str, object]] = islice(msg.raw_items(), MAX_HEADER_FIELDS)
        return [_readable(str(value)) for key, value in items if key.lower() == wanted]
    except Exception:  # a damaged header list is no reason to lose the message
        return []


def _readable(value: str) -> str:
    # the cut comes first: callers ask for the same header many times per message
    return fix_surrogates(unfold(value[:MAX_HEADER_VALUE]))


def raw_header(msg: Message, name: str) -> str | None:
    """The first raw value of header ``name`` (see :func:`raw_headers`), or None."""
    values = raw_headers(msg, name)
    return values[0] if values else None


def header_text(msg: Message, name: str) -> str:
    """Human-readable text of header ``name``: unfolded, encoded words decoded, control
    characters (tabs of folded lines, stray escapes) as spaces, trimmed."""
    value = raw_header(msg, name)
    if value is None:
        return ""
    return _CONTROL.sub(" ", decode_words(value)).strip()
