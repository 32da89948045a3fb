"""TLS client contexts shared by the mail providers (IMAP, POP3, SMTP).

Use :func:`client_context` wherever a provider opens a TLS connection (implicit TLS or STARTTLS).
Certificate and host name verification are on by default, against the system trust store or a
CA bundle the instance names (``<Parameter Name="ca_bundle">``, a PEM file). Turning verification
off (``tls_verify=false``) is possible for lab servers and is logged as a warning every time a
context is built, so it never goes unnoticed.

:class:`TlsOptions` is a pydantic mixin holding those two options; a provider's options model
inherits it so every provider spells them the same way.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

log = logging.getLogger(__name__)


class TlsOptions(BaseModel):
    """``<Parameters>`` every TLS-capable provider accepts: ``ca_bundle`` and ``tls_verify``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_bundle: str | None = None
    tls_verify: bool = True

    @field_validator("ca_bundle")
    @classmethod
    def _bundle_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"CA bundle {value!r} is not a readable file")
        return value

    def ssl_context(self, name: str = "") -> ssl.SSLContext:
        """The client context these options describe (see :func:`client_context`)."""
        return client_context(self.ca_bundle, verify=self.tls_verify, name=name)


def client_context(
    ca_bundle: str | None = None, *, verify: bool = True, name: str = ""
) -> ssl.SSLContext:
    """Return a client SSL context: TLS 1.2+, certificate and host name checked.

    ``ca_bundle`` replaces the system trust store with the CAs in that PEM file (a private CA).
    ``verify=False`` disables every check - for lab servers only; ``name`` (the instance) goes
    into the warning that is logged.
    """
    if not verify:
        log.warning("%s: TLS certificate verification is DISABLED (tls_verify=false)", name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_bundle:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_bundle)
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


__all__ = ["TlsOptions", "client_context"]
