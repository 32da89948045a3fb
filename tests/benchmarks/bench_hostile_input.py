"""Benchmark: parse time of hostile input (issue 10), for every family of tests/fuzz/hostile.py.

Run: ``.venv/bin/python -m tests.benchmarks.bench_hostile_input [--sizes 40,150,1024]
[--families to-without-at,many-parts] [--deadline 60]``

Each cell is the CPU seconds of one ``parse_message`` (messages), ``mailboxes`` (address text)
or ``parse_safely`` (XML) on the family's input of that many KiB, measured in a forked child
with a wall-clock deadline (``>60`` when it did not finish). No baseline: the question is
whether time grows linearly with the size; the last column is the ratio of the largest size's
time to the smallest's, next to the ratio of the sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable
from typing import Any

from router.configcheck import parse_safely
from router.errors import ConfigError, MessageUnusable
from router.mail.address_scan import mailboxes
from router.mail.parse import parse_message
from tests.benchmarks.common import print_table, write_json
from tests.fuzz import hostile
from tests.fuzz.timing import bounded_cpu


def _message(raw: bytes) -> None:
    with contextlib.suppress(MessageUnusable):
        parse_message(raw)


def _xml(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_safely(data, "router.xml")


def _addresses(text: str) -> None:
    mailboxes([text])


PARSERS: dict[str, tuple[dict[str, Callable[[int], Any]], Callable[[Any], None]]] = {
    "message": (hostile.MESSAGES, _message),
    "address": (hostile.ADDRESSES, _addresses),
    "xml": (hostile.XML, _xml),
}


def measure(kind: str, family: str, sizes: list[int], deadline: float) -> dict[str, Any]:
    families, parse = PARSERS[kind]
    row: dict[str, Any] = {"family": f"{kind}: {family}"}
    times = []
    for kib in sizes:
        seconds = bounded_cpu(parse, families[family](kib * 1024), deadline, repeat=1)
        times.append(seconds)
        row[f"{kib} KiB"] = f">{deadline:.0f}" if math.isinf(seconds) else round(seconds, 3)
        if math.isinf(seconds):
            break
    if len(times) == len(sizes) and times[0] > 0:
        row["growth"] = round(times[-1] / times[0], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40,150,1024", help="KiB, comma-separated")
    parser.add_argument("--families", default="", help="names (default: all)")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds per input")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    wanted = set(filter(None, args.families.split(",")))
    rows = [
        measure(kind, family, sizes, args.deadline)
        for kind, (families, _) in PARSERS.items()
        for family in families
        if not wanted or family in wanted
    ]
    columns = ["family", *(f"{kib} KiB" for kib in sizes), "growth"]
    print_table(f"CPU seconds per parse (sizes x{sizes[-1] / sizes[0]:.0f})", rows, columns)
    write_json("hostile_input", {"sizes_kib": sizes, "rows": rows})


if __name__ == "__main__":
    main()
