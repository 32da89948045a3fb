"""Address headers of incoming mail (From, To, Cc, ...) -> mailboxes, tolerant, at a bounded cost.

Use :func:`mailboxes` for every address header read from a received message; outgoing mail has
its own strict parser (:mod:`router.mail.addresses`), because a CRM address must be refused when it
is odd while a received header must be read as well as it can be.

Why not ``email.utils.getaddresses`` on the whole header: it costs about 5 microseconds a
character (5 s for a 1 MB header of ``@``), recurses once per ``(`` (RecursionError), and the
pattern that picked addresses out of what it could not parse was quadratic (a 1 MB ``To:``
without ``@`` took over 14 minutes). So here:

1. at most :data:`MAX_LIST_TEXT` characters of a header are read (``address-header-truncated``
   in the defects when there was more; no real header comes near);
2. a linear tokenizer splits the list at the commas outside quotes, comments and ``<...>``;
3. each piece of at most :data:`MAX_PIECE` characters goes to ``getaddresses``; a longer one, or
   one it cannot parse, is split at separator characters and every token with an ``@`` inside is
   taken as an address (:func:`address_like`);
4. addresses longer than :data:`MAX_ADDRESS` are dropped, and reading stops at
   :data:`MAX_ADDRESSES` mailboxes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from email.utils import getaddresses

from router.mail.text import decode_words
from router.models import Address

#: Characters of one address header read at most (about 1,500 ordinary mailboxes).
MAX_LIST_TEXT = 64 * 1024
#: Longest comma-separated piece handed to the stdlib parser (one mailbox is far shorter).
MAX_PIECE = 1024
#: Mailboxes kept per header.
MAX_ADDRESSES = 500
#: Longest address kept (RFC 5321 4.5.3.1.3: a path is at most 256 octets with its <>).
MAX_ADDRESS = 254

# One token of an address list: a quoted string, a comment, an <angle address> (each possibly
# unterminated), a run of ordinary characters, or a single character. No alternative can
# backtrack into another, so a whole header is tokenized in one linear pass.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|<[^>]*>?|[^",(<]+|.', re.S)
_SEPARATORS = re.compile(r"[\s<>(),;:\"']+")
#: Entries of a header :func:`first_addr` looks at (a From has one).
_FIRST_PIECES = 16
_BARE = re.compile(r"[^\s<>(),;:\"'\\\[\]@]+@[^\s<>(),;:\"'\\\[\]@]+")


def mailboxes(values: Iterable[str], defects: list[str] | None = None) -> tuple[Address, ...]:
    """The distinct mailboxes of one or more raw values of an address header.

    Group names, ``undisclosed-recipients:;`` and anything without both a local part and a
    domain are not mailboxes. ``defects`` gets ``address-header-truncated`` when the values
    were longer than :data:`MAX_LIST_TEXT`.
    """
    text = ", ".join(value for value in values if value.strip())
    if len(text) > MAX_LIST_TEXT:
        text = text[:MAX_LIST_TEXT]
        if defects is not None:
            defects.append("address-header-truncated")
    found: dict[Address, None] = {}
    for piece in split_list(text):
        for address in _piece_mailboxes(piece):
            found[address] = None
            if len(found) >= MAX_ADDRESSES:
                return tuple(found)
    return tuple(found)


def split_list(text: str) -> list[str]:
    """``text`` cut at every comma outside quotes, comments and ``<...>``; blank pieces dropped."""
    pieces: list[str] = []
    current: list[str] = []
    for token in _TOKEN.findall(text):
        if token == ",":
            pieces.append("".join(current))
            current = []
        else:
            current.append(token)
    pieces.append("".join(current))
    return [piece for piece in pieces if piece.strip()]


def address_like(text: str) -> list[str]:
    """Every run of non-separator characters that looks like a mailbox (:func:`is_mailbox`)."""
    return [token for token in _SEPARATORS.split(text) if is_mailbox(token)]


def is_mailbox(addr: str) -> bool:
    """True when ``addr`` has a local part and a domain around its last ``@``, no white space,
    and is no longer than an address can be (:data:`MAX_ADDRESS`)."""
    local, at, domain = addr.rpartition("@")
    if not (local and at and domain) or len(addr) > MAX_ADDRESS:
        return False
    return not any(ch.isspace() for ch in addr)


def first_addr(value: str) -> str | None:
    """The address part of the first entry of one header value (e.g. From), with or without a
    domain (``MAILER-DAEMON``), or None when its first few entries name no address at all."""
    for piece in split_list(value[:MAX_LIST_TEXT])[:_FIRST_PIECES]:
        for _, addr in _stdlib_pairs(piece):
            if addr:
                return addr
    return None


def _piece_mailboxes(piece: str) -> Iterator[Address]:
    if "@" not in piece:  # no mailbox can come out of it: skip the stdlib's cost
        return
    bare = piece.strip()
    if _BARE.fullmatch(bare):  # the usual ``a@b``, as getaddresses would return it
        if is_mailbox(bare):
            yield Address(email=bare)
        return
    for display, addr in _stdlib_pairs(piece):
        parsed = _address(display, addr)
        if parsed is not None:
            yield parsed
        else:  # the parser choked on this stretch: pick out what looks like an address
            yield from (Address(email=token) for token in address_like(addr))


def _stdlib_pairs(piece: str) -> list[tuple[str, str]]:
    if len(piece) > MAX_PIECE:
        return [("", piece)]
    try:
        return getaddresses([piece])
    except Exception:  # RecursionError on nested comments, and whatever else hostile text finds
        return [("", piece)]


def _address(display: str, addr: str) -> Address | None:
    addr = addr.strip().strip("<>").strip()
    # no mailbox without both halves: group names and "undisclosed-recipients" are not parties
    if not is_mailbox(addr):
        return None
    name = " ".join(decode_words(display).split()).strip("\"' ")
    return Address(email=addr, name="" if name == addr else name)
