"""Every web surface the deployment files start is authenticated, and exposed only on purpose.

The launchers default to 127.0.0.1; a container must listen on 0.0.0.0, so the files that run
one set the address explicitly - and every such surface has its credentials configured (the
compose file refuses to start without them).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from router.crm.simulator.__main__ import add_arguments
from router.graph.simulator.__main__ import add_arguments as add_graph_sim_arguments
from router.graph.simulator.app import Simulator as GraphSim
from router.graph.simulator.app import create_app as create_graph_sim_app
from router.graph.simulator.faults import Faults
from router.websurface import basic_ok, bearer_ok, is_loopback

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = re.compile(r"\$\{\w+:\?.+\}")


def compose_service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services[name]


def k8s_container(name: str) -> dict[str, Any]:
    doc = next(yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()))
    return doc["spec"]["template"]["spec"]["containers"][0]


def test_compose_flower_listens_on_every_interface_only_with_required_basic_auth() -> None:
    flower = compose_service("flower")
    assert "--address=0.0.0.0" in flower["command"]
    assert REQUIRED.fullmatch(flower["environment"]["FLOWER_BASIC_AUTH"])


def test_compose_worker_metrics_listen_on_every_interface_only_with_a_required_token() -> None:
    env = compose_service("worker")["environment"]
    assert env["ROUTER_METRICS_ADDR"] == "0.0.0.0"
    assert REQUIRED.fullmatch(env["ROUTER_METRICS_TOKEN"])


def test_k8s_surfaces_bind_every_interface_with_their_credentials_from_the_secret() -> None:
    secret = next(yaml.safe_load_all((ROOT / "deploy/k8s/secret.example.yaml").read_text()))
    worker, flower = k8s_container("worker.yaml"), k8s_container("flower.yaml")
    assert {"name": "ROUTER_METRICS_ADDR", "value": "0.0.0.0"} in worker["env"]
    assert "--address=0.0.0.0" in flower["command"]
    assert {"ROUTER_METRICS_TOKEN", "FLOWER_BASIC_AUTH"} <= set(secret["stringData"])
    assert all(c["envFrom"] == [{"secretRef": {"name": "email-router"}}] for c in (worker, flower))


def test_systemd_units_serving_metrics_name_a_token_file() -> None:
    for unit in ("email-router.service", "email-router-worker.service"):
        text = (ROOT / "deploy" / "systemd" / unit).read_text()
        environment = re.findall(r"^Environment=(.*)$", text, re.M)  # several lines: all of them
        assert "ROUTER_METRICS_TOKEN_FILE=/etc/email-router/secrets/metrics-token" in environment
        assert not [e for e in environment if e.startswith("ROUTER_METRICS_ADDR")], unit


def test_credential_checks_refuse_anything_but_the_exact_credentials() -> None:
    assert bearer_ok("Bearer t0k", "t0k")
    assert not any(bearer_ok(h, "t0k") for h in (None, "", "Bearer t0", "bearer t0k", "Basic t0k"))
    assert not bearer_ok("Bearer ", "")
    assert basic_ok("Basic b3BzOnB3", ["x:y", "ops:pw"])
    assert not any(basic_ok(h, ["ops:pw"]) for h in (None, "Basic b3BzOnB4", "Basic %%%", "b3Bz"))


def test_loopback_means_localhost_or_a_loopback_ip_never_every_interface() -> None:
    assert all(is_loopback(a) for a in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(a) for a in ("", "0.0.0.0", "::", "10.0.0.5", "example.org"))


def test_the_simulator_listens_on_loopback_unless_told_otherwise() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    assert parser.parse_args([]).host == "127.0.0.1"


def test_compose_graph_sim_is_reachable_in_compose_only_and_its_admin_api_by_loopback() -> None:
    # Given the compose file's graph-sim, which listens on 0.0.0.0 inside its container
    service = compose_service("graph-sim")
    parser = argparse.ArgumentParser()
    add_graph_sim_arguments(parser)
    args = parser.parse_args(service["command"][2:])
    assert args.host == "0.0.0.0" and parser.parse_args([]).host == "127.0.0.1"
    assert "ports" not in service  # never published on the host
    # When a container of the compose network calls its admin API, it is refused; the simulated
    # Graph API asks for a token; only graph-sim's own namespace (graph-seed) may seed mail
    app = create_graph_sim_app(GraphSim("t", "c", "s", Faults())).test_client()
    neighbour = {"REMOTE_ADDR": "172.18.0.5"}
    assert app.get("/admin/stats", environ_base=neighbour).status_code == 403
    assert app.get("/v1.0/users/x@demo.example", environ_base=neighbour).status_code == 401
    assert app.get("/admin/stats", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
