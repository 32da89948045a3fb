"""The configuration parser refuses DTDs and entities without expanding or fetching anything."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from router import xmlsafe
from router.configcheck import load_config
from router.errors import ConfigError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "config"
SECRET = "TOP-SECRET-CONTENT-4711"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def xxe_file(tmp_path: Path, secret_file: Path) -> Path:
    path = tmp_path / "xxe.xml"
    path.write_text(
        f"""<?xml version="1.0"?>
<!DOCTYPE Configuration [
  <!ENTITY xxe SYSTEM "file://{secret_file}">
]>
<Configuration>
  <SystemConfiguration><LogLevel>&xxe;</LogLevel></SystemConfiguration>
</Configuration>
"""
    )
    return path


def test_external_entity_is_refused_and_the_file_is_never_read(
    tmp_path: Path, secret_file: Path
) -> None:
    path = xxe_file(tmp_path, secret_file)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert raised.value.problems == [
        f"{path}:2: <Configuration>: DOCTYPE declarations are not allowed (no DTDs, no entities)"
    ]
    assert SECRET not in str(raised.value) + repr(raised.value)


def test_lxml_alone_would_not_expand_the_external_entity_either(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth: with the expat DOCTYPE guard switched off, lxml neither resolves the
    # entity nor loads the file, and the DOCTYPE is still refused.
    monkeypatch.setattr(xmlsafe, "refuse_dtd", lambda data: None)
    path = xxe_file(tmp_path, secret_file)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert "DOCTYPE declarations are not allowed" in raised.value.problems[0]
    assert SECRET not in str(raised.value) + "".join(raised.value.problems)
    tree = etree.fromstring(path.read_bytes(), xmlsafe.safe_parser())
    assert SECRET not in etree.tostring(tree, encoding="unicode")


def test_billion_laughs_fails_fast_with_tiny_memory() -> None:
    # In a fresh interpreter, so the peak RSS measured is this parse's alone; an expansion
    # would need gigabytes.
    script = f"""
import json, resource, sys, time
from pathlib import Path
from router.configcheck import load_config
from router.errors import ConfigError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_config(Path({str(FIXTURES / "billion_laughs.xml")!r}))
except ConfigError as exc:
    problems = exc.problems
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"kib": after - before, "s": elapsed, "problems": problems}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)

    assert "DOCTYPE declarations are not allowed" in result["problems"][0]
    assert result["s"] < 1.0
    assert result["kib"] < 20 * 1024


def test_quadratic_blowup_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "quadratic.xml"
    big = "x" * 100_000
    path.write_text(
        f'<!DOCTYPE Configuration [<!ENTITY a "{big}">]>\n'
        f"<Configuration><SystemConfiguration><LogLevel>{'&a;' * 10_000}</LogLevel>"
        "</SystemConfiguration></Configuration>"
    )
    start = time.perf_counter()

    with pytest.raises(ConfigError, match="DOCTYPE declarations are not allowed"):
        load_config(path)

    assert time.perf_counter() - start < 1.0


def test_xinclude_is_not_processed(tmp_path: Path, secret_file: Path) -> None:
    path = tmp_path / "xinclude.xml"
    path.write_text(
        '<Configuration xmlns:xi="http://www.w3.org/2001/XInclude">\n'
        f'  <xi:include href="{secret_file}" parse="text"/>\n'
        "</Configuration>\n"
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert "unknown element in <Configuration>" in raised.value.problems[0]
    assert SECRET not in "".join(raised.value.problems)


def test_undefined_entity_is_not_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "entity.xml"
    path.write_text("<Configuration>\n<SystemConfiguration>&passwd;</SystemConfiguration>\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert raised.value.problems == [
        f"{path}:2: <Configuration>: not well-formed XML: undefined entity"
    ]
