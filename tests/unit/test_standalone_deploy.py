"""The deployment files: docker-compose.yml, deploy/Dockerfile, deploy/k8s, deploy/systemd, and
the configurations they ship (checked with the router's own loader).

``docker compose config`` runs when the compose plugin is installed (it needs no engine);
otherwise that one test is skipped - the structural checks with PyYAML always run.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from router.configcheck import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
SECRETS = {
    "CRM_CLIENT_SECRET": "x",
    "DEMO_MAIL_PASSWORD": "pass",
    "DATAVERSE_CLIENT_SECRET": "x",
    "SALES_IMAP_PASSWORD": "x",
    "SMTP_RELAY_PASSWORD": "x",
}


@pytest.fixture
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


# -- docker compose -------------------------------------------------------------------------------
def test_compose_has_every_service_of_the_cluster_and_the_demo(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "redis", "beat", "worker", "flower", "crm-sim", "dovecot", "mailpit", "seed",
    }  # fmt: skip


def test_compose_redis_keeps_state_never_evicts_and_reports_health(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"][-1] == "ping"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_runs_one_beat_and_workers_that_can_scale(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["beat"]["command"][:4] == ["celery", "-A", "workers", "beat"]
    worker = services["worker"]
    assert worker["command"][:4] == ["celery", "-A", "workers", "worker"]
    # `--scale worker=4` needs no fixed name and no published host port
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_flower_cannot_start_without_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?.+\}", flower["environment"]["FLOWER_BASIC_AUTH"])
    assert not any("basic" in str(part) for part in flower["command"])  # not in argv
    assert flower["command"][:3] == ["python", "-m", "workers.flower"]


def test_compose_publishes_ports_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published
    assert all(str(p).startswith("127.0.0.1:") for p in published)


def test_compose_demo_seed_reaches_the_simulator_admin_api(compose: dict[str, Any]) -> None:
    seed, sim = compose["services"]["seed"], compose["services"]["crm-sim"]
    assert seed["restart"] == "no"
    assert "https://crm-sim:8080" in seed["command"]
    allowed = sim["command"][sim["command"].index("--admin-allow") + 1]
    assert "172.16.0.0/12" in allowed.split(",")  # compose networks (and the published port)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = docker and subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30, check=False
    )
    if not probe or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (not a server; fine to skip)")
    assert docker is not None
    # a copy with .env made from .env.example, as a user would
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.read_text())
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    done = subprocess.run(
        [docker, "compose", "config", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_env_example_sets_every_variable_compose_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example)
    assert required  # FLOWER_BASIC_AUTH at least


# -- Dockerfile -----------------------------------------------------------------------------------
def test_the_image_is_python_311_slim_and_runs_as_an_unprivileged_user() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r"^RUN pip install \.", text, re.M)


# -- Kubernetes -----------------------------------------------------------------------------------
def test_k8s_beat_is_a_single_replica_recreated_never_rolled() -> None:
    (beat,) = k8s("beat.yaml")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_workers_scale_with_an_hpa() -> None:
    deployment, hpa = k8s("worker.yaml")
    assert (deployment["kind"], hpa["kind"]) == ("Deployment", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 1 < hpa["spec"]["maxReplicas"]


def test_k8s_flower_has_a_service_and_requires_basic_auth() -> None:
    deployment, service = k8s("flower.yaml")
    assert service["kind"] == "Service"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "workers.flower"]  # the launcher that demands auth


def test_k8s_kustomization_lists_every_manifest() -> None:
    (kustomization,) = k8s("kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_k8s_configmap_is_a_valid_configuration_without_inline_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (configmap,) = k8s("configmap.yaml")
    xml = configmap["data"]["router.xml"]
    assert not re.search(r"<(ClientSecret|EmailPassword)>[^<]", xml)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "router.xml"
    path.write_text(xml)
    config = load_config(path)
    assert {p.name for p in config.providers} == {"sales-imap", "outbound-smtp"}


# -- systemd --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("email-router.service", "email-router run"),
        ("email-router-worker.service", "celery -A workers worker"),
        ("email-router-beat.service", "celery -A workers beat"),
    ],
)
def test_systemd_units_run_the_right_command_as_an_unprivileged_user(
    unit: str, command: str
) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((ROOT / "deploy" / "systemd" / unit).read_text())
    service = parser["Service"]
    assert command in " ".join(service["ExecStart"].replace("\\\n", " ").split())
    assert service["User"] not in ("root", "0")
    assert service["NoNewPrivileges"] == "yes"
    assert parser["Install"]["WantedBy"] == "multi-user.target"


# -- shipped configurations -----------------------------------------------------------------------
def test_the_compose_demo_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    config = load_config(ROOT / "deploy" / "demo" / "router.compose.xml")
    assert [p.provider_class for p in config.providers] == ["imap", "pop3", "smtp"]


def test_the_make_demo_template_is_a_valid_configuration_once_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    template = string.Template((ROOT / "deploy" / "demo" / "router.demo.xml").read_text())
    path = tmp_path / "router.xml"
    path.write_text(template.substitute(
        STATE_DB=tmp_path / "state.db", CRM_URL="https://127.0.0.1:8443",
        CRM_CA=tmp_path / "ca.pem", IMAP_PORT=1143, POP3_PORT=1110, SMTP_PORT=2525,
    ))  # fmt: skip
    config = load_config(path)
    assert config.system.state_store.startswith("sqlite:///")


def test_compose_runs_the_simulator_through_the_email_router_command(
    compose: dict[str, Any],
) -> None:
    from router.cli import build_parser

    command = compose["services"]["crm-sim"]["command"]
    assert command[:2] == ["email-router", "crm-sim"]
    build_parser().parse_args(command[1:])  # every option exists (exits 2 otherwise)


# -- the "graph" profile: a second mail source through Microsoft Graph -----------------------------
DEMO = ROOT / "deploy" / "demo"
GRAPH_SECRETS = {**SECRETS, "GRAPH_CLIENT_SECRET": "graph-sim-secret"}


def demo_script(name: str) -> Any:
    """deploy/demo/<name>.py as a module (a script beside its siblings, not a package)."""
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMO / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(DEMO))  # demo.py imports its sibling seed.py
    spec.loader.exec_module(module)
    return module


def test_compose_graph_sim_and_its_seed_are_opt_in_behind_the_graph_profile(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["graph-sim"]["profiles"] == ["graph"]
    assert services["graph-seed"]["profiles"] == ["graph"]
    # nothing else needs the profile: a plain `docker compose up` starts no Graph service
    assert [n for n, s in services.items() if "graph" in s.get("profiles", [])] == [
        "graph-sim", "graph-seed",
    ]  # fmt: skip


def test_compose_graph_sim_runs_the_email_router_command_with_a_certificate_naming_it(
    compose: dict[str, Any],
) -> None:
    from router.cli import build_parser

    services = compose["services"]
    command = services["graph-sim"]["command"]
    assert command[:2] == ["email-router", "graph-sim"]
    args = build_parser().parse_args(command[1:])  # every option exists (exits 2 otherwise)
    # the certificate is the one the certs service issues, and it names graph-sim
    certs = services["certs"]["command"]
    names = [certs[i + 1] for i, part in enumerate(certs) if part == "--name"]
    assert "graph-sim" in names
    assert str(args.cert) == f"/certs/{names[0]}.pem" and str(args.key) == f"/certs/{names[0]}.key"
    assert services["graph-sim"]["depends_on"]["certs"]["condition"] == (
        "service_completed_successfully"
    )
    assert "ports" not in services["graph-sim"]  # its admin API is for loopback callers only


def test_the_demo_certificate_is_valid_for_graph_sim_and_loopback(tmp_path: Path) -> None:
    seed = demo_script("seed")
    seed.make_certs(tmp_path, ["crm-sim", "graph-sim", "127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate((tmp_path / "crm-sim.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"crm-sim", "graph-sim", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_compose_graph_seed_calls_the_admin_api_from_graph_sims_own_network(
    compose: dict[str, Any],
) -> None:
    seed_service = compose["services"]["graph-seed"]
    assert seed_service["network_mode"] == "service:graph-sim"  # so 127.0.0.1 is graph-sim
    assert seed_service["restart"] == "no"
    assert seed_service["depends_on"]["graph-sim"]["condition"] == "service_healthy"
    command = seed_service["command"]
    assert command[:2] == ["python", "/app/deploy/demo/seed.py"]
    args = demo_script("seed").parse(command[2:])
    assert args.command == "graph" and args.graph_url == "https://127.0.0.1:8443"
    assert args.ca == "/certs/ca.pem"


def test_every_router_service_mounts_the_config_demo_config_names(
    compose: dict[str, Any],
) -> None:
    mounts = [
        volume
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if str(volume).endswith(":/etc/email-router/router.xml:ro")
    ]
    assert len(mounts) >= 5  # beat, worker, flower, console, the simulators ...
    assert set(mounts) == {
        "./deploy/demo/${DEMO_CONFIG:-router.compose.xml}:/etc/email-router/router.xml:ro"
    }
    assert (DEMO / "router.compose.graph.xml").exists()


def test_the_compose_graph_configuration_is_the_compose_one_plus_a_graph_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in GRAPH_SECRETS.items():
        monkeypatch.setenv(name, value)
    plain = load_config(DEMO / "router.compose.xml")
    graph = load_config(DEMO / "router.compose.graph.xml")
    assert graph.providers[:-1] == plain.providers
    assert graph.deployments == plain.deployments and graph.system == plain.system
    instance = graph.providers[-1]
    assert (instance.provider_class, instance.direction.value) == ("graph", "Incoming")
    assert instance.email_server == "https://graph-sim:8443/v1.0"
    params = {p.name: p.value for p in instance.parameters.items}
    assert params["ca_bundle"] == "/certs/ca.pem"  # the CA the certs service wrote
    assert params["authority"].startswith("https://graph-sim:8443/")
    assert instance.email_password is not None and instance.email_password.env == (
        "GRAPH_CLIENT_SECRET"
    )


def test_the_make_demo_graph_configuration_is_valid_once_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in GRAPH_SECRETS.items():
        monkeypatch.setenv(name, value)
    demo = demo_script("demo")
    path = demo.write_config(tmp_path, {
        "STATE_DB": tmp_path / "state.db", "CRM_URL": "https://127.0.0.1:8443",
        "CRM_CA": tmp_path / "ca.pem", "IMAP_PORT": 1143, "POP3_PORT": 1110, "SMTP_PORT": 2525,
        "GRAPH_URL": "https://127.0.0.1:9443", "GRAPH_CA": tmp_path / "graph-ca.pem",
        "GRAPH_MAILBOX": "orders@demo.example",
    }, graph=True)  # fmt: skip
    config = load_config(path)
    assert [p.provider_class for p in config.providers] == ["imap", "pop3", "smtp", "graph"]
    params = {p.name: p.value for p in config.providers[-1].parameters.items}
    assert params["ca_bundle"] == str(tmp_path / "graph-ca.pem")
    assert demo.SECRETS_ENV["GRAPH_CLIENT_SECRET"] == "graph-sim-secret"
