"""The ``email`` policies the incoming parser gives the standard library: cheap and bounded.

Use :data:`PARSE` (and :data:`FALLBACK` for the second try) to parse received mail, and
:data:`AS_RECEIVED` to write a parsed nested message back out as bytes. Nothing else in the
router hands policies to the stdlib for incoming mail.

Both parsing policies return header values as plain strings (:class:`RawFetch`): the router
reads raw header values itself (:mod:`router.mail.text`), and the stdlib only needs the content
type, the boundary and the transfer encoding. Their messages (:class:`Nested`) stop the parser
descending below :data:`MAX_NESTING` levels. :data:`AS_RECEIVED` writes each header line as it
came in instead of refolding it.
"""

from __future__ import annotations

import re
from email.message import EmailMessage, Message
from email.policy import Compat32, EmailPolicy, Policy

#: Longest header value the stdlib gets to see (a Content-Type's type and boundary come first;
#: the longest boundary in the corpus, apache-mime4j's very-very-long-boundary, is 7,000).
MAX_FETCHED = 8192
#: Parameters of a header value the stdlib gets to see (a real Content-Type has two or three).
MAX_PARAMS = 16
#: Multipart and message/* parts deeper than this are read as text. The feed parser checks every
#: line against the boundary of every enclosing multipart, so its cost per line grows with the
#: depth (a 260 KB message 400 deep took 3.6 s); the deepest message of the corpus is 6 deep.
MAX_NESTING = 20
_LINE_BREAKS = re.compile(r"[\r\n]")
_FOLDS = re.compile(r"\r\n|\r|\n")


class RawFetch(Policy):
    """Header values come back to the stdlib as plain unfolded strings, never parsed.

    The feed parser and ``Message.get_payload`` need no more than ``_splitparam`` and
    ``_parseparam`` on a string. ``policy.default`` builds a header object with its
    structured-header parser on every ask instead: about 5 microseconds a character, and
    superlinear on many parameters (a 64 KB Content-Type took 1.6 s, 950 parts with 1 KB ones
    21 s). ``_parseparam`` itself copies the rest of the value once per ``;`` and counts quotes
    from the start at each one (quadratic), so the stdlib sees at most :data:`MAX_FETCHED`
    characters and :data:`MAX_PARAMS` parameters.
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        value = _LINE_BREAKS.sub("", value[:MAX_FETCHED])
        return ";".join(value.split(";", MAX_PARAMS + 1)[: MAX_PARAMS + 1])


class Nested(Message):
    """A parsed part that knows its depth; below :data:`MAX_NESTING` it claims to be text.

    The feed parser attaches each new part to its parent before reading the part's headers, and
    asks for the content type to decide whether to descend: a part deeper than the limit keeps
    its raw headers but its content is read as one text payload.
    """

    nesting = 0

    def attach(self, payload: Message) -> None:  # type: ignore[override]
        if isinstance(payload, Nested):
            payload.nesting = self.nesting + 1
        super().attach(payload)

    def get_content_type(self) -> str:
        ctype = super().get_content_type()
        if self.nesting > MAX_NESTING and ctype.startswith(("multipart/", "message/")):
            return "text/plain"
        return ctype


class NestedEmailMessage(Nested, EmailMessage):
    """The :class:`Nested` form of ``EmailMessage`` (what ``policy.default`` parses into)."""


class ParsePolicy(RawFetch, EmailPolicy):
    """``policy.default`` with :class:`RawFetch` header values: the normal parse."""

    message_factory = NestedEmailMessage


class FallbackPolicy(RawFetch, Compat32):
    """``policy.compat32`` with :class:`RawFetch` header values: the parse after a parser bug."""

    message_factory = Nested


class AsReceived(RawFetch, Compat32):
    """``compat32`` for writing a nested message out: every header line as it came in.

    compat32 refolds each ASCII header value through ``email.header`` (about 3 microseconds a
    character: a forwarded message with a 1 MB Subject took 3.5 s). The raw value keeps its own
    folding; only its line breaks are made the output's.
    """

    def fold(self, name: str, value: str) -> str:
        return f"{name}: {_FOLDS.sub(self.linesep, value)}{self.linesep}"

    def fold_binary(self, name: str, value: str) -> bytes:
        return self.fold(name, value).encode("utf-8", "surrogateescape")


PARSE = ParsePolicy()
FALLBACK = FallbackPolicy()
AS_RECEIVED = AsReceived()
