"""Rules every HTTP surface of the router shares: who may call it and where it listens.

Use it from anything that opens a port (the metrics exporter in :mod:`router.metrics`, the Flower
launcher in ``workers.flower``):

* :func:`bearer_ok` / :func:`basic_ok` compare an ``Authorization`` header with the expected
  credentials in constant time; a missing or malformed header is simply not authorised.
* :func:`is_loopback` / :func:`warn_if_exposed`: surfaces listen on 127.0.0.1 unless told
  otherwise, and listening anywhere else is logged as a warning naming the surface, so exposing
  one is always a visible decision (containers set ``0.0.0.0`` explicitly, see deploy/).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging

log = logging.getLogger(__name__)

#: Where a surface listens unless its configuration says otherwise.
DEFAULT_ADDRESS = "127.0.0.1"


def bearer_ok(header: str | None, token: str) -> bool:
    """True when ``header`` is exactly ``Bearer <token>`` (and ``token`` is not empty)."""
    if not token or not header:
        return False
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def basic_ok(header: str | None, allowed: list[str]) -> bool:
    """True when ``header`` is ``Basic <base64 user:password>`` for one of ``allowed``."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme != "Basic" or not encoded:
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    # compare with every entry: the time taken does not depend on which one matched
    matches = [hmac.compare_digest(given, entry.encode()) for entry in allowed if entry]
    return any(matches)


def is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IPs; False for ``""``/``0.0.0.0`` (every interface)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def warn_if_exposed(surface: str, address: str) -> None:
    """Log a warning when ``surface`` listens on a non-loopback ``address``."""
    if not is_loopback(address):
        log.warning(
            "%s listens on %s, reachable from other hosts: keep its credentials strong and put "
            "TLS in front of it (or set the address to 127.0.0.1)",
            surface,
            address or "every interface",
        )
