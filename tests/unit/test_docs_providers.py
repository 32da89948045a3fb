"""Every code sample of docs/providers.md runs: the guide cannot drift from the code.

A ```python block whose first line is ``# file: NAME`` is saved as NAME (``(continued)``
appends); the other python blocks run in order, in one namespace, with those files
importable. The saved test module (the provider kit in use) runs in a pytest subprocess, the
XML sample is loaded with the router's own configuration loader and the TOML sample must
name the entry-point group the registry reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from router.configcheck import load_config
from router.providers.registry import ENTRY_POINT_GROUP, resolve

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FILE_LINE = re.compile(r"^# file: (\S+)( \(continued\))?\n")


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(GUIDE.read_text()) if lang == language]


def save_files(directory: Path) -> list[str]:
    """Write the ``# file:`` blocks into ``directory``; return the other python blocks."""
    snippets = []
    for code in blocks("python"):
        match = FILE_LINE.match(code)
        if match is None:
            snippets.append(code)
            continue
        path = directory / match.group(1)
        with path.open("a" if match.group(2) else "w") as out:
            out.write(("\n\n" if match.group(2) else "") + code[match.end() :])
    return snippets


@pytest.fixture
def guide_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    snippets = save_files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_providers", raising=False)
    return tmp_path, snippets


def test_the_guide_has_samples_of_every_kind() -> None:
    assert len(blocks("python")) >= 5
    assert blocks("xml") and blocks("toml")


def test_the_guide_snippets_run_in_order(guide_dir: tuple[Path, list[str]]) -> None:
    _, snippets = guide_dir
    namespace: dict[str, object] = {}
    for code in snippets:
        exec(compile(code, str(GUIDE), "exec"), namespace)


def test_the_guide_xml_loads_and_builds_its_provider(
    guide_dir: tuple[Path, list[str]],
) -> None:
    directory, _ = guide_dir
    path = directory / "router.xml"
    path.write_text(blocks("xml")[0])
    config = load_config(path)
    (instance,) = config.providers
    provider = resolve(instance.provider_class)(instance)
    assert type(provider).__name__ == "DropFolderProvider"


def test_the_guide_toml_names_the_registry_entry_point_group() -> None:
    project = tomllib.loads(blocks("toml")[0])["project"]
    assert list(project["entry-points"]) == [ENTRY_POINT_GROUP]


def test_the_guide_kit_sample_passes_the_provider_kit(
    guide_dir: tuple[Path, list[str]],
) -> None:
    directory, _ = guide_dir
    (directory / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    env = {**os.environ, "PYTHONPATH": str(directory)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_providers.py"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
