"""Where the repository's copy of the real-world message corpus lives (``tests/corpus``).

About 400 hard messages (bounces, broken MIME, odd charsets, TNEF, S/MIME, calendar) that every
parser change must survive; their origins and licences are in ``tests/corpus/SOURCES.md``, one
line per file in ``MANIFEST.tsv``. The bytes are kept as they are (``-text`` in .gitattributes).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
