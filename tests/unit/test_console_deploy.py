"""``email-router console`` as deployed: its command line, compose service and k8s manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_refuses_to_start_without_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("USER", "PASSWORD", "PASSWORD_FILE"):
        monkeypatch.delenv(f"ROUTER_CONSOLE_{name}", raising=False)
    config = tmp_path / "router.xml"
    config.write_text("<Configuration/>")
    assert main(["console", "--config", str(config)]) == 2
    assert "refusing to start the console without credentials" in capsys.readouterr().err
    assert not (tmp_path / "console-audit.jsonl").exists()


def test_the_console_listens_on_loopback_unless_told_otherwise() -> None:
    args = build_parser().parse_args(["console"])
    assert (args.host, args.port) == ("127.0.0.1", 8090)


def test_compose_runs_the_console_on_every_interface_only_behind_its_credentials() -> None:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    console = services["console"]
    assert "--host=0.0.0.0" in console["command"]
    assert {"ROUTER_CONSOLE_USER", "ROUTER_CONSOLE_PASSWORD"} <= set(console["environment"])
    assert console["ports"] == ["127.0.0.1:8090:8090"]


def test_k8s_console_takes_its_credentials_from_a_secret_and_is_in_the_kustomization() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/console.yaml").read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--host=0.0.0.0" in container["command"]
    assert {"secretRef": {"name": "email-router-console"}} in container["envFrom"]
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    assert "console.yaml" in kustomization["resources"]
