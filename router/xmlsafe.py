"""Parse untrusted XML without DTDs or entities, keeping each element's line number.

Two guards, both needed for a file anyone can edit:

1. expat through defusedxml reads the document first and stops at the ``<!DOCTYPE`` itself
   (also at any entity declaration or external reference), before anything is declared,
   expanded or fetched: no XXE file read, no billion laughs, no network.
2. Only then lxml builds the tree (for ``sourceline``), with entity substitution, DTD loading and
   network access switched off, and refuses a DOCTYPE again should one ever get past the first.

:func:`parse` raises :class:`XmlRefused` with the line and the reason (also for a document over
:data:`MAX_DOCUMENT` bytes); callers turn it into their own error format.
"""

from __future__ import annotations

import re
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError
from lxml import etree

REFUSED_DTD = "DOCTYPE declarations are not allowed (no DTDs, no entities)"
UNREADABLE_ENCODING = (
    "the encoding named in the XML declaration cannot be read; save the file as UTF-8 "
    '(<?xml version="1.0" encoding="utf-8"?>)'
)
#: Largest document read (10,000 mailboxes take about 10 MB). Both passes are linear in the size
#: (tests/unit/test_parser_bounds.py); this bounds their time and the tree's memory.
MAX_DOCUMENT = 64 * 2**20


class XmlRefused(ValueError):
    """Raised when a document is not well-formed or declares a DTD or entities."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def parse(data: bytes) -> Any:
    """Return the root element of ``data``, blanks around leaf values stripped."""
    if len(data) > MAX_DOCUMENT:
        limit = MAX_DOCUMENT // 2**20
        raise XmlRefused(1, f"the file is larger than {limit} MiB; is it the configuration?")
    refuse_dtd(data)
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise XmlRefused(exc.lineno or 0, f"not well-formed XML: {exc.msg}") from None
    except (ValueError, LookupError):
        raise XmlRefused(1, UNREADABLE_ENCODING) from None
    if root.getroottree().docinfo.doctype:  # second guard; refuse_dtd already stops these
        raise XmlRefused(1, REFUSED_DTD)
    _strip_leaf_text(root)
    return root


def safe_parser() -> Any:
    """An lxml parser that never substitutes entities, loads a DTD or touches the network."""
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def refuse_dtd(data: bytes) -> None:
    """Raise XmlRefused at the first DOCTYPE/entity declaration or well-formedness error."""
    guard = DefusedXMLParser(forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        guard.feed(data)
        guard.close()
    except DefusedXmlException:
        raise XmlRefused(guard.parser.CurrentLineNumber, REFUSED_DTD) from None
    except ParseError as exc:
        reason = re.sub(r": line \d+, column \d+$", "", str(exc))
        raise XmlRefused(exc.position[0], f"not well-formed XML: {reason}") from None
    except (ValueError, LookupError):  # expat hands other encodings to Python's codecs
        raise XmlRefused(1, UNREADABLE_ENCODING) from None


def _strip_leaf_text(root: Any) -> None:
    # Pretty-printed files put values on their own lines; " 993 " means 993.
    for el in root.iter(etree.Element):
        if len(el) == 0 and el.text:
            el.text = el.text.strip()
