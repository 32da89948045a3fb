"""The HTTPS test servers' common part: certificate, server, lifetime (crm-sim, graph-sim).

Use :func:`serve` from a simulator's ``run``. MSAL refuses an ``http://`` authority and the router
sends tokens only over HTTPS, so the simulators serve everything over TLS: without ``--cert`` /
``--key`` :func:`server_certificate` makes a fresh CA (trustme) and a certificate for
``127.0.0.1``, ``localhost`` and ``::1``, writes the CA to ``ca_out`` for the client to trust
(``<CaBundle>``, the ``ca_bundle`` parameter or ``REQUESTS_CA_BUNDLE``) and removes the generated
key file when the server stops. The server is cheroot's (HTTP/1.1 keep-alive, as the real
services, so the clients' connection pools are exercised); it stops on SIGTERM or Ctrl-C, and with
``exit_with_parent`` when the process that started it dies (a killed test run leaves no server
behind).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import trustme
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

DEFAULT_NAMES = ("127.0.0.1", "localhost", "::1")


def server_certificate(
    tool: str,
    ca_out: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    names: tuple[str, ...] = DEFAULT_NAMES,
) -> tuple[str, str]:
    """``(certificate chain file, private key file)``; writes a generated CA to ``ca_out``."""
    if cert is not None:
        return str(cert), str(key or cert)
    ca = trustme.CA(organization_name=f"email-router {tool}")
    issued = ca.issue_cert(*names)
    if ca_out is not None:
        ca_out.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_out))
    # One private file with key and chain; removed when the server stops (serve()).
    fd, path = tempfile.mkstemp(prefix=f"{tool}-", suffix=".pem")
    os.close(fd)
    issued.private_key_and_cert_chain_pem.write_to_path(path)
    return path, path


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def serve(
    tool: str,
    app: Any,
    *,
    host: str,
    port: int,
    threads: int,
    tls: tuple[Path | None, Path | None, Path],
    exit_with_parent: bool,
    announce: Callable[[int], None],
) -> int:
    """Serve ``app`` over HTTPS until SIGTERM/SIGINT; ``announce(port)`` once the port is bound.

    ``tls`` is ``(--cert, --key, --ca-out)``: the user's certificate, or a generated one whose CA
    goes to ``--ca-out``.
    """
    cert_arg, key_arg, ca_out = tls
    cert, key = server_certificate(tool, None if cert_arg else ca_out, cert_arg, key_arg)
    server = wsgi.Server((host, port), app, numthreads=threads, server_name=tool, timeout=60)
    server.ssl_adapter = BuiltinSSLAdapter(cert, key)
    try:
        server.prepare()  # binds the port (a free one for --port 0)
        announce(int(server.bind_addr[1]))
        signal.signal(signal.SIGTERM, _interrupt)
        if exit_with_parent:
            _watch_parent()
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if not cert_arg:
            Path(cert).unlink(missing_ok=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _watch_parent() -> None:
    """Stop when our parent dies (a killed test run must not leave servers behind)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
