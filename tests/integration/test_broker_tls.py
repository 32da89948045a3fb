"""A ``rediss://`` broker is verified like every other TLS connection (real redis-server, TLS on).

kombu alone connects to ``rediss://`` without checking the certificate; the worker's Celery
configuration (:func:`workers.app.broker_tls`) must refuse a server whose certificate no trusted
CA signed, and connect when ``ROUTER_BROKER_CA_FILE`` names the CA that did.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from kombu.exceptions import OperationalError

from router.config import Settings
from tests.servers.common import free_port, port_open, require, wait_for
from workers.app import create_app


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking only TLS, with a certificate for 127.0.0.1 from a private CA."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    args = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(tmp_path / "server.pem")]
    args += ["--tls-key-file", str(tmp_path / "server.key")]
    args += ["--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        require(wait_for(lambda: port_open(port), 10), "redis-server has no TLS support here")
        yield port, tmp_path / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(port: int, ca_file: Path | None) -> None:
    settings = Settings(broker_url=f"rediss://127.0.0.1:{port}/0", broker_ca_file=ca_file)
    app = create_app(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        conn.default_channel.client.ping()


def test_a_tls_broker_signed_by_the_configured_ca_is_accepted(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca_file = tls_redis
    _connect(port, ca_file)  # no exception: TLS handshake verified against our CA, PING answered


def test_a_tls_broker_whose_certificate_no_trusted_ca_signed_is_refused(
    tls_redis: tuple[int, Path],
) -> None:
    port, _ = tls_redis
    with pytest.raises((OperationalError, ssl.SSLError)) as caught:
        _connect(port, None)  # the system CAs never signed the test CA's certificate
    assert "certificate verify failed" in str(caught.value).lower()
