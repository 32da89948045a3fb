"""The packaging: the distribution's name, pinned development tools (constraints/dev.txt), pinned
images, what goes into a Docker build context and into git, and absolute state paths in every
example a reader copies.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from router.state import open_store

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
CONSTRAINTS = ROOT / "constraints" / "dev.txt"
DISTRIBUTION = "dataverse-email-router"


def names(requirements: list[str]) -> list[str]:
    return [canonicalize_name(Requirement(line).name) for line in requirements]


def pins() -> dict[str, str]:
    """constraints/dev.txt as {canonical name: exact version}; any other line form fails."""
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # exactly one specifier per line
        assert spec.operator == "==", f"{line!r}: pin it with =="
        found[canonicalize_name(requirement.name)] = spec.version
    return found


# -- the distribution -----------------------------------------------------------------------------
def test_the_distribution_is_not_the_unrelated_email_router_of_the_public_index() -> None:
    assert PROJECT["name"] == DISTRIBUTION


def test_the_command_keeps_its_name_email_router() -> None:
    assert PROJECT["scripts"] == {"email-router": "router.cli:main"}


def test_version_reads_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    from router.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"email-router {PROJECT['version']}"


def test_the_example_provider_package_depends_on_the_distribution_by_its_name() -> None:
    example = tomllib.loads((ROOT / "examples" / "maildir-http" / "pyproject.toml").read_text())
    assert DISTRIBUTION in names(example["project"]["dependencies"])


def test_the_systemd_unit_installs_the_distribution_by_its_name() -> None:
    unit = (ROOT / "deploy" / "systemd" / "email-router.service").read_text()
    installs = re.findall(r"pip install (\S+)", unit)
    assert installs == [DISTRIBUTION]


# -- dependencies and pins ------------------------------------------------------------------------
def test_pyproject_lists_each_dependency_once() -> None:
    runtime = names(PROJECT["dependencies"])
    dev = names(PROJECT["optional-dependencies"]["dev"])
    assert len(set(runtime)) == len(runtime)
    assert len(set(dev)) == len(dev)
    assert not set(runtime) & set(dev), "a runtime dependency is already in the dev environment"


def test_the_constraints_pin_every_dev_tool_and_every_runtime_dependency() -> None:
    wanted = names(PROJECT["dependencies"]) + names(PROJECT["optional-dependencies"]["dev"])
    missing = sorted(set(wanted) - set(pins()))
    assert not missing, f"add {missing} to constraints/dev.txt (pip freeze of a fresh `make venv`)"


def test_the_pins_satisfy_the_ranges_of_pyproject() -> None:
    pinned = pins()
    for line in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        version = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (line, version)


def test_the_constraints_never_pin_the_project_itself() -> None:
    assert DISTRIBUTION not in pins()
    assert "email-router-example-providers" not in pins()


def test_make_venv_installs_through_the_constraints_and_reinstalls_when_they_change() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS := constraints/dev.txt" in makefile
    assert re.search(r"^\$\(STAMP\):.*\$\(CONSTRAINTS\)", makefile, re.M)
    assert "pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'" in makefile


def test_ci_installs_the_example_package_through_the_same_constraints() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make venv" in ci
    installs = re.findall(r"^.*pip install.*$", ci, re.M)
    assert installs and all("-c constraints/dev.txt" in line for line in installs)


# -- images ---------------------------------------------------------------------------------------
def explicitly_tagged(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_every_compose_image_carries_an_explicit_tag() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    images = [s["image"] for s in services.values() if "image" in s]
    assert images
    assert [i for i in images if not explicitly_tagged(i)] == []


def test_every_k8s_image_gets_an_explicit_tag_from_the_kustomization() -> None:
    k8s = ROOT / "deploy" / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    tags = {i["name"]: str(i.get("newTag", "")) for i in kustomization["images"]}
    used = set(re.findall(r"^\s*image:\s*(\S+)", "".join(
        p.read_text() for p in k8s.glob("*.yaml")), re.M))  # fmt: skip
    assert used
    for image in used:
        assert explicitly_tagged(image) or tags.get(image) not in (None, "", "latest"), image


def test_the_docker_base_image_is_pinned_to_a_python_minor_and_a_debian_release() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert re.fullmatch(r"python:3\.\d+-slim-[a-z]+", base), base


# -- build context and git ------------------------------------------------------------------------
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these files: the last matching pattern wins, ! re-includes."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.removeprefix("!")):
            verdict = not negated
    return verdict


@pytest.mark.parametrize("path", [".venv", ".git", ".env", "benchmark-results", ".mypy_cache"])
def test_the_docker_build_context_leaves_out(path: str) -> None:
    assert ignored(path, dockerignore())


def test_the_docker_build_context_keeps_everything_the_dockerfile_copies() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = [
        source
        for line in re.findall(r"^COPY (.+)$", dockerfile, re.M)
        for source in line.split()[:-1]
        if not source.startswith("--")
    ]
    assert "constraints" in copied
    assert [c for c in copied if ignored(c, dockerignore())] == []
    assert all((ROOT / c).exists() for c in copied)


def test_git_ignores_the_env_file_with_its_secrets() -> None:
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in gitignore
    assert ".env.example" not in gitignore


# -- state paths ----------------------------------------------------------------------------------
def documented_sqlite_urls() -> list[str]:
    texts = [
        (ROOT / "deploy" / "config" / "router.example.xml").read_text(),
        (ROOT / "deploy" / "systemd" / "email-router.service").read_text(),
    ]
    return [url for text in texts for url in re.findall(r"sqlite:///[^\s<\"']*\.db", text)]


def test_every_example_state_path_is_absolute() -> None:
    urls = documented_sqlite_urls()
    assert urls
    assert [u for u in urls if not u.removeprefix("sqlite:///").startswith("/")] == []


def test_a_four_slash_sqlite_url_opens_the_same_file_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "state" / "state.db"
    target.parent.mkdir()
    open_store(f"sqlite:///{target}").close()
    assert target.exists()
    assert list(elsewhere.iterdir()) == []
