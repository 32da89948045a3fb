"""The one parser of the email addresses a CRM hands over: bounded cost, strict result.

Use :func:`parse_address` wherever address text from outside (Dataverse's
``activityparty.addressused``, a test CRM, a file) is about to become an SMTP envelope recipient
or a header. It accepts ``local@domain``, ``<local@domain>`` and ``Name <local@domain>`` (the
name plain or in double quotes) and returns an :class:`~router.models.Address` whose ``email`` is
safe on an ``RCPT TO`` line - its domain already IDNA-encoded - and whose ``name`` is safe to
encode into a header; anything else raises :class:`AddressRefused` saying why. The outgoing
cycle parses every party of an email once (:func:`clean_parties`), and the SMTP envelope and the
To/Cc headers are both written from that result, so they cannot say different things.

Refused: control characters (CR, LF, NUL, the rest of C0/C1, line and paragraph separators),
two addresses in one, an empty local part or domain, a domain that is not a valid (IDNA) host
name such as ``müller..de``, quoted local parts and address literals, addresses over 254 octets.

Bounds: text over :data:`MAX_TEXT` characters is refused before anything else looks at it, and
the rest is a few passes over at most that many characters - no regular expression, so no
backtracking - plus the IDNA codec on labels of at most 63 characters.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace

from router.errors import QuarantineError
from router.models import Address, OutboundEmail

#: Longest address text looked at (one header line's worth); longer text is refused unread.
MAX_TEXT = 998
#: Longest addr-spec in octets (RFC 5321 4.5.3.1.3: a path is at most 256 octets with <>).
MAX_ADDRESS = 254
MAX_LOCAL, MAX_DOMAIN, MAX_LABEL = 64, 253, 63
#: Display names are cut to this many characters: enough for any real name, and short enough
#: that the header line holding it stays far below 998 octets once encoded.
MAX_NAME = 150
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
#: ASCII characters of a dot-atom local part (RFC 5322 3.2.3 atext, and the dots).
_ATEXT = _LDH | frozenset("!#$%&'*+/=?^_`{|}~.")
#: Unicode categories never allowed anywhere: controls, surrogates, line/paragraph separators.
_FORBIDDEN = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: Full stops IDNA treats as label separators (RFC 3490 3.1).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_WHAT_TO_DO = "correct the address in the CRM and send the email again"


class AddressRefused(QuarantineError):
    """Raised when address text cannot be used; the email it belongs to fails with the reason."""


def parse_address(text: str) -> Address:
    """The address in ``text`` (``a@b``, ``<a@b>`` or ``Name <a@b>``), or AddressRefused."""
    if len(text) > MAX_TEXT:
        raise _refused(text, f"is longer than {MAX_TEXT} characters")
    _check_characters(text, text)
    name, spec = _split_name(text.strip(), text)
    return Address(_addr_spec(spec, text), _name(name, text))


def parse_party(party: Address) -> Address:
    """``party`` parsed: its ``email`` may hold ``Name <a@b>``; its own ``name`` wins if set."""
    parsed = parse_address(party.email)
    if not party.name:
        return parsed
    if len(party.name) > MAX_TEXT:
        raise _refused(party.name, f"has a name longer than {MAX_TEXT} characters")
    _check_characters(party.name, party.name)
    return Address(parsed.email, _name(party.name, party.name))


def clean_parties(email: OutboundEmail) -> OutboundEmail:
    """``email`` with every party parsed, or AddressRefused naming the first bad one.

    One unusable recipient refuses the whole email, on purpose: sending to the others would
    deliver to a different set of people than the CRM email names. An email without any
    recipient is refused too. A sender without an address is left empty, name and all (the
    caller of the composer supplies one).
    """
    to = _parties("To", email.to)
    cc = _parties("Cc", email.cc)
    bcc = _parties("Bcc", email.bcc)
    if not (to or cc or bcc):
        raise AddressRefused("the email has no To, Cc or Bcc recipient; add one in the CRM")
    sender = _party("From", 1, email.sender) if email.sender.email else Address("")
    return replace(email, sender=sender, to=to, cc=cc, bcc=bcc)


def _parties(role: str, parties: tuple[Address, ...]) -> tuple[Address, ...]:
    return tuple(_party(role, i, party) for i, party in enumerate(parties, 1))


def _party(role: str, number: int, party: Address) -> Address:
    try:
        return parse_party(party)
    except AddressRefused as exc:
        raise AddressRefused(f"{role} address {number} {exc}") from None


# -- the pieces -----------------------------------------------------------------------------------
def _check_characters(value: str, text: str) -> None:
    if value.isprintable():  # the usual case, decided in C
        return
    for ch in value:
        if not ch.isprintable() and unicodedata.category(ch) in _FORBIDDEN:
            raise _refused(text, f"contains the control character U+{ord(ch):04X}")


def _split_name(text: str, original: str) -> tuple[str, str]:
    """(name part, addr-spec) of ``Name <spec>``, ``<spec>`` or a bare ``spec``."""
    if not text:
        raise _refused(original, "is empty")
    if not text.endswith(">"):
        if "<" in text or ">" in text:
            raise _refused(original, "has text after its <address> (two addresses in one?)")
        return "", text
    start = text.rfind("<")
    if start < 0:
        raise _refused(original, "has a '>' without a '<'")
    return text[:start].strip(), text[start + 1 : -1].strip()


def _name(part: str, original: str) -> str:
    """The display name: quotes and backslash escapes removed, white space collapsed, cut."""
    if part.startswith('"'):
        part = _unquote(part, original)
    elif '"' in part or "<" in part or ">" in part:
        raise _refused(original, "has quotes or angle brackets in its name (two addresses in one?)")
    return " ".join(part.split())[:MAX_NAME]


def _unquote(part: str, original: str) -> str:
    out, escaped = [], False
    for i, ch in enumerate(part[1:], 1):
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            if part[i + 1 :].strip():
                raise _refused(original, "has text after its quoted name (two addresses in one?)")
            return "".join(out)
        else:
            out.append(ch)
    raise _refused(original, "has a quoted name without its closing quote")


def _addr_spec(spec: str, original: str) -> str:
    """``local@domain`` checked, with the domain in its ASCII (IDNA) form."""
    if not spec:
        raise _refused(original, "has no address")
    if "," in spec or ";" in spec:
        raise _refused(original, "holds more than one address (',' or ';')")
    if any(ch.isspace() for ch in spec):
        raise _refused(original, "has white space in its address")
    if len(spec.encode("utf-8")) > MAX_ADDRESS:
        raise _refused(original, f"is longer than {MAX_ADDRESS} octets")
    local, at, domain = spec.rpartition("@")
    if not at:
        raise _refused(original, "has no '@' and domain")
    _local_part(local, original)
    address = f"{local}@{_domain(domain, original)}"
    if len(address.encode("utf-8")) > MAX_ADDRESS:
        raise _refused(original, f"is longer than {MAX_ADDRESS} octets once encoded")
    return address


def _local_part(local: str, original: str) -> None:
    if not local:
        raise _refused(original, "has an empty local part (nothing before the '@')")
    if "@" in local or local.startswith('"'):
        raise _refused(original, "has more than one '@' (quoted local parts are not supported)")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise _refused(original, f"has a local part longer than {MAX_LOCAL} octets")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise _refused(original, "has a misplaced '.' in its local part")
    if local.isascii() and _ATEXT.issuperset(local):  # the usual case, decided in C
        return
    bad = next((ch for ch in local if not _local_char(ch)), None)
    if bad is not None:
        raise _refused(original, f"has {bad!r} in its local part")


def _local_char(ch: str) -> bool:
    if ch.isascii():
        return ch in _ATEXT
    return unicodedata.category(ch)[0] in "LMNPS"  # letters, marks, numbers, punctuation, symbols


def _domain(domain: str, original: str) -> str:
    if not domain:
        raise _refused(original, "has an empty domain (nothing after the '@')")
    if domain.startswith("["):
        raise _refused(original, "has an address literal [...] as its domain (not supported)")
    labels = [_label(label, original) for label in domain.translate(_DOTS).split(".")]
    ascii_domain = ".".join(labels)
    if len(ascii_domain) > MAX_DOMAIN:
        raise _refused(original, f"has a domain longer than {MAX_DOMAIN} characters")
    return ascii_domain


def _label(label: str, original: str) -> str:
    """One domain label as ASCII (IDNA for a non-ASCII one), checked as a host name label."""
    if not label:
        raise _refused(original, "has an empty label in its domain ('..' or a leading '.')")
    try:
        encoded = label if label.isascii() else label.encode("idna").decode("ascii")
    except UnicodeError:
        raise _refused(
            original, "has a domain that is not a valid internationalised name"
        ) from None
    if len(encoded) > MAX_LABEL or not _LDH.issuperset(encoded):
        raise _refused(original, "has a domain that is not a valid host name")
    if encoded.startswith("-") or encoded.endswith("-"):
        raise _refused(original, "has a domain label starting or ending with '-'")
    return encoded


def _refused(text: str, problem: str) -> AddressRefused:
    return AddressRefused(f"{preview(text)} {problem}; {_WHAT_TO_DO}")


def preview(text: str, limit: int = 60) -> str:
    """``text`` quoted for a reason or a log line: cut, and every control character escaped."""
    cut = text[:limit]
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)
    return f"'{shown}{'...' if len(text) > limit else ''}'"


__all__ = [
    "MAX_ADDRESS",
    "MAX_NAME",
    "MAX_TEXT",
    "AddressRefused",
    "clean_parties",
    "parse_address",
    "parse_party",
]
