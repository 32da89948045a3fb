"""TLS for the Dataverse simulator: a private CA (trustme) or the user's own certificate.

MSAL refuses an ``http://`` authority, so the simulator serves everything - token endpoint,
discovery document and Web API - over HTTPS. :func:`server_certificate` returns the certificate
and key files the server loads; with no ``--cert``/``--key`` it makes a fresh CA and a
certificate for ``127.0.0.1``, ``localhost`` and ``::1``, and writes the CA to ``ca_out``. Point
the adapter at it with ``<CaBundle>PATH</CaBundle>`` in the Deployment (or
``REQUESTS_CA_BUNDLE=PATH``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEFAULT_NAMES = ("127.0.0.1", "localhost", "::1")


def server_certificate(
    ca_out: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    names: tuple[str, ...] = DEFAULT_NAMES,
) -> tuple[str, str]:
    """``(certificate chain file, private key file)``; writes a generated CA to ``ca_out``."""
    if cert is not None:
        return str(cert), str(key or cert)
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - trustme is a dependency
        raise SystemExit("crm-sim needs 'trustme' for its own CA, or --cert/--key") from exc
    ca = trustme.CA(organization_name="email-router crm-sim")
    issued = ca.issue_cert(*names)
    if ca_out is not None:
        ca_out.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_out))
    # One private file with key and chain; removed when the process ends (see __main__).
    fd, path = tempfile.mkstemp(prefix="crm-sim-", suffix=".pem")
    os.close(fd)
    issued.private_key_and_cert_chain_pem.write_to_path(path)
    return path, path
