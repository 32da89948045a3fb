"""Fuzz target: the XML configuration loader on any bytes (atheris, libFuzzer).

:func:`router.configcheck.check_file` reads a file (``xmlsafe`` parsing, then the structure and
the models) and raises ConfigError for whatever is wrong, never anything else. Each input is
written to one temporary file and loaded from there. Run with ``make fuzz`` or
``python -m tests.fuzz.run config``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

#: Coverage is collected in these packages only: instrumenting pydantic & co. costs seconds.
INSTRUMENTED = ("router", "xml", "defusedxml")

with atheris.instrument_imports(include=INSTRUMENTED):
    from router.configcheck import check_file
    from router.errors import ConfigError

_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "router.xml"


def test_one_input(data: bytes) -> None:
    _FILE.write_bytes(data)
    with contextlib.suppress(ConfigError):
        check_file(_FILE)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
