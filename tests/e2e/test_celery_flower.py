"""Flower behind basic auth: the launcher refuses to start without credentials, Flower answers 401
without them and lists the cluster's workers with them (real Redis, worker and Flower processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.servers.celery_procs import ROOT, CeleryProcs, wait_until
from tests.servers.common import free_port, port_open
from tests.servers.redis_server import PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

AUTH = ("ops", "flower-test-pw")
CONFIG = """<Configuration><SystemConfiguration><StateStore>memory://</StateStore>
</SystemConfiguration></Configuration>"""


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


@pytest.mark.parametrize("value", [None, "", "ops", "ops:", ":pw"])
def test_flower_launcher_refuses_to_start_without_credentials(value: str | None) -> None:
    env = {} if value is None else {"ROUTER_FLOWER_BASIC_AUTH": value}
    done = launcher(env)
    assert done.returncode == 2
    assert "refusing to start Flower without credentials" in done.stderr


def test_flower_asks_for_credentials_and_then_lists_the_workers(
    tmp_path: Path, private_redis: PrivateRedis, celery_procs: CeleryProcs
) -> None:
    # Given a worker and Flower on the same broker
    config = tmp_path / "router.xml"
    config.write_text(CONFIG)
    celery_procs.env.update(ROUTER_CONFIG=str(config), ROUTER_BROKER_URL=private_redis.url)
    celery_procs.worker("flowertest", concurrency=1)
    port = free_port()
    flower = celery_procs.flower(port, ":".join(AUTH))
    wait_until(lambda: port_open(port) or not flower.alive, 60, "Flower to listen", celery_procs)
    url = f"http://127.0.0.1:{port}/api/workers?refresh=1"
    # Then without credentials it answers 401, with them it lists the worker
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, auth=("ops", "wrong"), timeout=30).status_code == 401
    wait_until(
        lambda: any(
            name.startswith("flowertest@")
            for name in requests.get(url, auth=AUTH, timeout=30).json()
        ),
        60,
        "Flower to list the worker",
        celery_procs,
    )
    # and the credentials never appear on Flower's command line
    cmdline = Path(f"/proc/{flower.popen.pid}/cmdline").read_bytes()
    assert AUTH[1].encode() not in cmdline
