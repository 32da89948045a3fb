"""Flower and the worker's metrics behind authentication (real Redis, worker and Flower processes).

The launcher refuses to start Flower without credentials; Flower then answers 401 on every
endpoint without them - its pages and API, and also ``/metrics`` and ``/healthcheck``, which
Flower itself leaves open - and lists the cluster's workers with them. It listens on 127.0.0.1
unless told otherwise. The worker's own ``/metrics`` answers only with its bearer token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from tests.servers.celery_procs import ROOT, CeleryProcs, Proc, wait_until
from tests.servers.common import free_port, port_open
from tests.servers.redis_server import PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

AUTH = ("ops", "flower-test-pw")
METRICS_TOKEN = "metrics-test-token"
CONFIG = """<Configuration><SystemConfiguration><StateStore>memory://</StateStore>
</SystemConfiguration></Configuration>"""
#: One path of each kind: page, API, control API (POST), the two Flower leaves open, a static
#: file and a path that does not exist.
PATHS = [
    ("GET", "/"),
    ("GET", "/api/workers"),
    ("POST", "/api/worker/shutdown/x@y"),
    ("GET", "/metrics"),
    ("GET", "/healthcheck"),
    ("GET", "/static/css/flower.css"),
    ("GET", "/no/such/page"),
]


def launcher(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTER_", "FLOWER_"))}
    return subprocess.run(
        [sys.executable, "-m", "workers.flower", "--port=1"],
        cwd=ROOT,
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def listening_addresses(proc: Proc, port: int) -> set[str]:
    """The local addresses ``proc`` (or a child) listens on at ``port``."""
    procs = [psutil.Process(proc.popen.pid), *psutil.Process(proc.popen.pid).children(True)]
    return {
        c.laddr.ip
        for p in procs
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


@pytest.mark.parametrize("value", [None, "", "ops", "ops:", ":pw"])
def test_flower_launcher_refuses_to_start_without_credentials(value: str | None) -> None:
    env = {} if value is None else {"ROUTER_FLOWER_BASIC_AUTH": value}
    done = launcher(env)
    assert done.returncode == 2
    assert "refusing to start Flower without credentials" in done.stderr


@pytest.fixture
def cluster(tmp_path: Path, private_redis: PrivateRedis, celery_procs: CeleryProcs) -> Proc:
    """A worker serving metrics behind a token, on the test's private Redis."""
    config = tmp_path / "router.xml"
    config.write_text(CONFIG)
    celery_procs.env.update(ROUTER_CONFIG=str(config), ROUTER_BROKER_URL=private_redis.url)
    return celery_procs.worker("flowertest", concurrency=1)


def test_every_flower_endpoint_asks_for_credentials_and_the_workers_are_listed_with_them(
    cluster: Proc, celery_procs: CeleryProcs
) -> None:
    # Given Flower started by the launcher with its default address
    port = free_port()
    flower = celery_procs.flower(port, ":".join(AUTH), address=None)
    wait_until(lambda: port_open(port) or not flower.alive, 60, "Flower to listen", celery_procs)
    base = f"http://127.0.0.1:{port}"
    # Then every endpoint answers 401 without credentials or with wrong ones
    for method, path in PATHS:
        for auth in (None, ("ops", "wrong")):
            answer = requests.request(method, base + path, auth=auth, timeout=30)
            assert answer.status_code == 401, (method, path, auth, answer.status_code)
            assert "flower_events_total" not in answer.text
    # and with them /metrics, /healthcheck and the API answer, listing the worker
    assert requests.get(f"{base}/healthcheck", auth=AUTH, timeout=30).text == "OK"
    assert "flower_" in requests.get(f"{base}/metrics", auth=AUTH, timeout=30).text
    wait_until(
        lambda: any(
            name.startswith("flowertest@")
            for name in requests.get(f"{base}/api/workers?refresh=1", auth=AUTH, timeout=30).json()
        ),
        60,
        "Flower to list the worker",
        celery_procs,
    )
    # and it listens on loopback only, with the credentials never on its command line
    assert listening_addresses(flower, port) == {"127.0.0.1"}
    cmdline = Path(f"/proc/{flower.popen.pid}/cmdline").read_bytes()
    assert AUTH[1].encode() not in cmdline


def test_flower_on_a_non_loopback_address_warns_and_still_asks_for_credentials(
    cluster: Proc, celery_procs: CeleryProcs
) -> None:
    port = free_port()
    flower = celery_procs.flower(port, ":".join(AUTH), address="0.0.0.0")
    wait_until(lambda: port_open(port) or not flower.alive, 60, "Flower to listen", celery_procs)
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).status_code == 401
    assert listening_addresses(flower, port) == {"0.0.0.0"}
    assert "Flower listens on 0.0.0.0, reachable from other hosts" in flower.log_text()


def test_the_workers_metrics_answer_only_with_the_bearer_token(
    tmp_path: Path, private_redis: PrivateRedis, celery_procs: CeleryProcs
) -> None:
    # Given a worker with ROUTER_METRICS_PORT and a token file
    (tmp_path / "router.xml").write_text(CONFIG)
    (tmp_path / "token").write_text(METRICS_TOKEN + "\n")
    port = free_port()
    celery_procs.env.update(
        ROUTER_CONFIG=str(tmp_path / "router.xml"), ROUTER_BROKER_URL=private_redis.url,
        ROUTER_METRICS_PORT=str(port), ROUTER_METRICS_TOKEN_FILE=str(tmp_path / "token"),
    )  # fmt: skip
    worker = celery_procs.worker("metrics", concurrency=1)
    wait_until(lambda: port_open(port), 30, "the worker's metrics", celery_procs)
    url = f"http://127.0.0.1:{port}/metrics"
    # Then it answers 401 without the token, the metrics with it, on loopback only
    assert requests.get(url, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(url, headers=wrong, timeout=30).status_code == 401
    good = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert "email_router_" in requests.get(url, headers=good, timeout=30).text
    assert listening_addresses(worker, port) == {"127.0.0.1"}
