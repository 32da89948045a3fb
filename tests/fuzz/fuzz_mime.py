"""Fuzz target: :func:`router.mail.parse.parse_message` on any bytes (atheris, libFuzzer).

The property: parse_message returns an Activity or raises MessageUnusable, nothing else, and
every input finishes within libFuzzer's ``-timeout`` (``tests/fuzz/run.py`` sets it). Run it
with ``make fuzz`` (all targets, ``FUZZ_SECONDS`` each) or ``python -m tests.fuzz.run mime``.
"""

from __future__ import annotations

import sys

import atheris

#: Coverage is collected in these packages only: instrumenting pydantic & co. costs seconds.
INSTRUMENTED = ("router", "email")

with atheris.instrument_imports(include=INSTRUMENTED):
    from router.errors import MessageUnusable
    from router.mail.parse import parse_message


def test_one_input(data: bytes) -> None:
    try:
        activity = parse_message(data)
    except MessageUnusable:
        return
    if not activity.message_id.startswith("<"):
        raise AssertionError(f"message id {activity.message_id!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
