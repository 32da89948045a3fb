"""The column sizes of the CRM's email table and the rules that fit a message's fields into them.

Use these functions wherever a header value is about to become a column of an email activity
(the Dataverse payload builder, the memory CRM) and :data:`COLUMN_LIMITS` wherever a limit is
enforced (the Dataverse simulator): Dataverse refuses a value longer than its column - it does
not cut it - so a message with a 400-character Message-ID or a 2,000-character To list would
never be delivered. The stored MIME keeps every original value whole.

* :func:`fit_message_id` - a Message-ID longer than :data:`MESSAGE_ID_MAX` becomes a shorter one
  made of a prefix of it and a hash of the whole, still in ``<local@domain>`` form. The same
  Message-ID always gives the same value, so the router's own Message-ID index and the CRM's
  duplicate check agree on every poll, replay and mailbox. :func:`router.mail.parse.message_id`
  applies it, so ``Activity.message_id`` is already the value the CRM stores.
* :func:`clip` - free text (the subject) cut with :data:`MARKER` at the end.
* :func:`fit_addresses` - a ``;``-separated address list cut at a whole address, then the marker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Dataverse's email columns and their sizes in characters (the ``email`` table's definitions;
#: ``inreplyto`` and ``trackingtoken`` are not confirmed - see the README's "Column limits").
COLUMN_LIMITS: dict[str, int] = {
    "messageid": 320,
    "subject": 800,
    "sender": 250,
    "torecipients": 500,
    "inreplyto": 320,
    "trackingtoken": 50,
}
MESSAGE_ID_MAX = COLUMN_LIMITS["messageid"]
SUBJECT_MAX = COLUMN_LIMITS["subject"]
SENDER_MAX = COLUMN_LIMITS["sender"]
TO_MAX = COLUMN_LIMITS["torecipients"]
#: What ends a value that was cut (one character, so it costs one character of the column).
MARKER = "\u2026"
#: Characters of the hash that stands for a shortened Message-ID (SHA-256, hex: 160 bits).
_HASH_CHARS = 40
#: The longest domain kept whole in a shortened Message-ID; a longer one is cut too.
_DOMAIN_MAX = 100


def fit_message_id(message_id: str) -> str:
    """``message_id`` when it fits :data:`MESSAGE_ID_MAX`, else its deterministic short form.

    The short form is ``<{prefix of the local part}.{hash}@{domain}>``: the hash is the SHA-256
    of the whole original id, so two different long ids never share a short form in practice
    and the same id always gets the same one. The prefix and domain keep it readable.
    """
    if len(message_id) <= MESSAGE_ID_MAX:
        return message_id
    inner = message_id.strip()
    if inner.startswith("<") and inner.endswith(">"):
        inner = inner[1:-1]
    local, at, domain = inner.rpartition("@")
    if not at:
        local, domain = inner, "shortened.invalid"
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    domain = domain[:_DOMAIN_MAX]
    room = MESSAGE_ID_MAX - len(domain) - _HASH_CHARS - 4  # "<", ".", "@", ">"
    return f"<{local[:room]}.{digest}@{domain}>"


def clip(value: str, limit: int) -> str:
    """``value`` when it fits ``limit`` characters, else cut to fit with :data:`MARKER`."""
    if len(value) <= limit:
        return value
    return value[: limit - len(MARKER)] + MARKER


def fit_addresses(addresses: Iterable[str], limit: int, separator: str = ";") -> str:
    """The addresses joined by ``separator``, cut after the last whole address that fits.

    A cut list ends with ``separator`` and :data:`MARKER`, so the CRM still resolves every
    address it holds; an address longer than the whole column is cut with the marker itself.
    """
    items = [a for a in addresses if a]
    whole = separator.join(items)
    if len(whole) <= limit:
        return whole
    tail = separator + MARKER
    kept: list[str] = []
    used = 0
    for item in items:
        extra = len(item) + (len(separator) if kept else 0)
        if used + extra + len(tail) > limit:
            break
        kept.append(item)
        used += extra
    if not kept:
        return clip(items[0], limit)
    return separator.join(kept) + tail
