"""The push process in the deployment files: one ``email-router watch`` beside the workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_one_watch_process_with_the_cluster_environment() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    watch = compose["services"]["watch"]
    assert watch["command"] == ["email-router", "watch"]
    assert watch["deploy"]["replicas"] == 1
    assert watch["environment"]["ROUTER_BROKER_URL"].startswith("redis://")  # the poll tasks
    assert "ports" not in watch  # no web surface


def test_k8s_watch_is_one_unprivileged_replica_replaced_not_rolled() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/watch.yaml").read_text()) if d]
    (deployment,) = docs
    spec = deployment["spec"]
    assert (deployment["kind"], spec["replicas"]) == ("Deployment", 1)
    assert spec["strategy"]["type"] == "Recreate"  # never two watchers during a rollout
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["email-router", "watch"]
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    assert "watch.yaml" in kustomization["resources"]
