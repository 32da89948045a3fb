"""Benchmark: router.mail.parse.parse_message against the bare stdlib parse it is built on.

Run: ``.venv/bin/python -m tests.benchmarks.bench_mime [--rounds 3]``

Baseline, measured in the same run: ``email.message_from_bytes(raw, policy=policy.default)``
followed by ``get_body()`` and ``iter_attachments()`` with ``get_content()`` on each part, i.e.
what a straightforward parser would do. Rows:

* the corpus (~400 hard real-world messages, tests/corpus): wall time per pass;
* one 20 MiB message with a base64 attachment, and one with a 20 MiB plain-text body:
  wall time and tracemalloc peak, as a multiple of the message size.

parse_message does more than the baseline (charset fallbacks, classification, Message-ID
synthesis), so the corpus ratio is the cost of that; the large-message rows show what chunked
feeding and in-place base64 decoding save.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email
import os
import time
import tracemalloc
from collections.abc import Callable
from email import policy
from email.message import EmailMessage

from router.errors import MessageUnusable
from router.mail.parse import parse_message
from tests.support.corpus import CORPUS

MiB = 1024 * 1024


def stdlib_parse(raw: bytes) -> None:
    """The baseline: the stdlib's own body and attachment helpers."""
    msg = email.message_from_bytes(raw, policy=policy.default)
    if not isinstance(msg, EmailMessage):
        return
    try:
        body = msg.get_body(preferencelist=("html", "plain"))
        if body is not None:
            body.get_content()
        for part in msg.iter_attachments():
            part.get_content()
    except Exception:  # the stdlib helpers raise on much of the corpus; count the time anyway
        pass


def router_parse(raw: bytes) -> None:
    with contextlib.suppress(MessageUnusable):
        parse_message(raw)


def corpus_messages() -> list[bytes]:
    skip = {"MANIFEST.tsv", "SOURCES.md"}
    return [p.read_bytes() for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.name not in skip]


def timed(call: Callable[[], None], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def peak(call: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def big_attachment() -> bytes:
    data = base64.encodebytes(os.urandom(15 * MiB)).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.com\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
        b"--BB\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--BB\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
        b"filename=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data + b"--BB--\r\n"
    )


def big_text() -> bytes:
    line = b"The quick brown fox jumps over the lazy dog & friends <again>.\r\n"
    return b"From: a@example.com\r\nSubject: long\r\n\r\n" + line * (20 * MiB // len(line))


def _each(parse: Callable[[bytes], None], messages: list[bytes]) -> None:
    for raw in messages:
        parse(raw)


def _large_row(raw: bytes, rounds: int) -> tuple[float, float, str]:
    base = timed(lambda: stdlib_parse(raw), rounds)
    ours = timed(lambda: router_parse(raw), rounds)
    base_peak = peak(lambda: stdlib_parse(raw)) / len(raw)
    ours_peak = peak(lambda: router_parse(raw)) / len(raw)
    return base, ours, f"{base_peak:.1f}x -> {ours_peak:.1f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: list[tuple[str, float, float, str]] = []
    messages = corpus_messages()
    if messages:
        base = timed(lambda: _each(stdlib_parse, messages), args.rounds)
        ours = timed(lambda: _each(router_parse, messages), args.rounds)
        rows.append((f"corpus, {len(messages)} files", base, ours, "-"))
    for name, raw in (("20 MiB attachment", big_attachment()), ("20 MiB text body", big_text())):
        rows.append((name, *_large_row(raw, args.rounds)))
    print(f"{'case':<22} {'stdlib s':>9} {'router s':>9} {'ratio':>6}  peak/size stdlib -> router")
    for case, base, ours, mem in rows:
        print(f"{case:<22} {base:>9.2f} {ours:>9.2f} {ours / base:>5.2f}x  {mem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
