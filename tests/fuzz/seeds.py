"""Seed corpora of the fuzz targets, built from the project's own files.

* ``mime``: the corpus of hard real-world messages (``tests/corpus``),
  the messages the test servers append to mailboxes, and every hostile family at a small size;
* ``addresses``: the address headers of those messages and the hostile address families;
* ``config``: the configuration files of the repository (``deploy/``, ``tests/fixtures/config``)
  and the hostile XML families.

Use :func:`write_seeds` (``tests/fuzz/run.py`` does) to write one target's seeds into a
directory; the sources are read fresh each time, so a new fixture is a new seed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from tests.fuzz import hostile
from tests.servers.dovecot import message
from tests.support.corpus import CORPUS

ROOT = Path(__file__).resolve().parents[2]

#: Seeds larger than this are cut (libFuzzer's -max_len would ignore the rest anyway).
MAX_SEED = 64 * 1024
_NOT_MESSAGES = {"MANIFEST.tsv", "SOURCES.md"}
_ADDRESS_HEADER = re.compile(
    rb"^(?:From|To|Cc|Bcc|Sender|Reply-To|Return-Path):[ \t]*(.*(?:\r?\n[ \t].*)*)",
    re.IGNORECASE | re.MULTILINE,
)


def mime_seeds() -> Iterator[bytes]:
    for path in sorted(CORPUS.rglob("*")):
        if path.is_file() and path.name not in _NOT_MESSAGES:
            yield path.read_bytes()[:MAX_SEED]
    yield from (message(n, size=size) for n, size in enumerate((0, 200, 5000)))
    yield from (make(2048) for make in hostile.MESSAGES.values())


def address_seeds() -> Iterator[bytes]:
    for raw in mime_seeds():
        for match in _ADDRESS_HEADER.finditer(raw[:8192]):
            yield match.group(1)
    yield from (make(1024).encode("utf-8") for make in hostile.ADDRESSES.values())


def config_seeds() -> Iterator[bytes]:
    for folder in (ROOT / "deploy", ROOT / "tests" / "fixtures" / "config"):
        for path in sorted(folder.rglob("*.xml")):
            yield path.read_bytes()[:MAX_SEED]
    yield from (make(2048) for make in hostile.XML.values())


SEEDS = {"mime": mime_seeds, "addresses": address_seeds, "config": config_seeds}


def write_seeds(target: str, directory: Path) -> int:
    """Write the distinct seeds of ``target`` into ``directory``; return how many."""
    directory.mkdir(parents=True, exist_ok=True)
    names = set()
    for seed in SEEDS[target]():
        name = hashlib.sha1(seed).hexdigest()
        if name not in names:
            names.add(name)
            (directory / name).write_bytes(seed)
    return len(names)
