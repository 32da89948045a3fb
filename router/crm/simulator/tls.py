"""TLS for the Dataverse simulator: a private CA (trustme) or the user's own certificate.

MSAL refuses an ``http://`` authority, so the simulator serves everything - token endpoint,
discovery document and Web API - over HTTPS. :func:`server_context` builds the server's
``ssl.SSLContext``; with no ``--cert``/``--key`` it makes a fresh CA and a certificate for
``127.0.0.1``, ``localhost`` and ``::1`` and writes the CA to ``ca_out``. Point the adapter at it
with ``<CaBundle>PATH</CaBundle>`` in the Deployment (or ``REQUESTS_CA_BUNDLE=PATH``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

DEFAULT_NAMES = ("127.0.0.1", "localhost", "::1")


def server_context(
    ca_out: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    names: tuple[str, ...] = DEFAULT_NAMES,
) -> ssl.SSLContext:
    """Return the server's TLS context; writes the generated CA (PEM) to ``ca_out``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
        return ctx
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - trustme is a dependency
        raise SystemExit("crm-sim needs 'trustme' for its own CA, or --cert/--key") from exc
    ca = trustme.CA(organization_name="email-router crm-sim")
    ca.issue_cert(*names).configure_cert(ctx)
    if ca_out is not None:
        ca_out.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_out))
    return ctx
