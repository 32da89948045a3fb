"""Start Flower for the router's Celery cluster: every endpoint behind basic auth, on 127.0.0.1.

Run it as::

    ROUTER_FLOWER_BASIC_AUTH=admin:long-password python -m workers.flower --port=5555

* **Credentials.** ``ROUTER_FLOWER_BASIC_AUTH`` (``user:password``, several separated by commas;
  Flower's own ``FLOWER_BASIC_AUTH`` is accepted too). Without them it refuses to start (exit 2):
  Flower can revoke tasks and shut workers down. They reach Flower inside this process, never
  through the command line (visible in ``ps``).
* **Every endpoint.** Flower 2 checks credentials in its pages and API only: ``/metrics``,
  ``/healthcheck`` and static files answer anyone. :class:`GuardedFlower` checks them before any
  request is routed, so every path - today's and any a Flower upgrade adds - answers 401 without
  them. Prometheus scrapes ``/metrics`` with ``basic_auth`` in its scrape config.
* **Address.** 127.0.0.1 unless ``--address=...`` (or ``FLOWER_ADDRESS``) says otherwise; any
  non-loopback address is logged as a warning. Containers pass ``--address=0.0.0.0`` (deploy/).

Other arguments are Flower's own options (``--port``, ``--url_prefix``, ``--certfile``, ...).
Logging is the router's (redacted, ``ROUTER_LOG_FORMAT``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from flower.app import Flower
from flower.command import (
    apply_env_options,
    apply_options,
    extract_settings,
    setup_logging,
    sigterm_handler,
)
from flower.urls import settings as flower_settings
from tornado.httputil import HTTPServerRequest
from tornado.options import options
from tornado.web import RequestHandler

from router.config import Settings
from router.logsetup import configure_logging
from router.websurface import DEFAULT_ADDRESS, basic_ok, warn_if_exposed
from workers.app import app
from workers.context import system_of

log = logging.getLogger(__name__)

EXIT_NO_CREDENTIALS = 2


def credentials_ok(value: str | None) -> bool:
    """Every comma-separated entry is ``user:password`` with both parts non-empty."""
    if not value:
        return False
    entries = [e.partition(":") for e in value.split(",")]
    return all(user and sep and password for user, sep, password in entries)


def credentials(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """``ROUTER_FLOWER_BASIC_AUTH``, else Flower's own ``FLOWER_BASIC_AUTH`` (deploy/k8s)."""
    return settings.flower_basic_auth or environ.get("FLOWER_BASIC_AUTH") or None


class GuardedFlower(Flower):
    """Flower that answers 401 to any request without valid basic-auth credentials.

    Use it instead of Flower's own application: the check runs before routing, so it covers the
    handlers Flower leaves open (``/metrics``, ``/healthcheck``, static files, 404 pages).
    """

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        allowed = list(self.options.basic_auth or ())
        if basic_ok(request.headers.get("Authorization"), allowed):
            return super().find_handler(request, **kwargs)
        return self.get_handler_delegate(request, Unauthorized)


class Unauthorized(RequestHandler):
    """The answer to a request without valid credentials, whatever its method or path."""

    def check_xsrf_cookie(self) -> None:
        """Skipped: the request is refused anyway, and a 403 would hide the 401 challenge."""

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.finish("401 Unauthorized: Flower needs the user:password of FLOWER_BASIC_AUTH\n")


def configure(auth: str, argv: Sequence[str]) -> None:
    """Flower's options from its environment, ``argv`` and config file, then our rules on top."""
    options.address = DEFAULT_ADDRESS  # a default only: FLOWER_ADDRESS and --address win
    apply_env_options()
    apply_options(sys.argv[0], list(argv))
    options.basic_auth = auth.split(",")  # the launcher's credentials, whatever was parsed
    extract_settings()
    setup_logging()


def serve(auth: str, argv: Sequence[str]) -> None:
    """Run Flower in this process until SIGTERM/SIGINT."""
    settings = Settings()
    level = settings.log_level or system_of(settings).log_level
    configure_logging(level, settings.log_format)  # first, so tornado adds no handler of its own
    configure(auth, argv)
    configure_logging(level, settings.log_format)  # tornado's option parsing reset the level
    warn_if_exposed("Flower", options.address)
    flower = GuardedFlower(capp=app, options=options, **flower_settings)
    atexit.register(flower.stop)
    signal.signal(signal.SIGTERM, sigterm_handler)
    port = flower.start_http_server()
    where = options.unix_socket or f"http://{options.address or '0.0.0.0'}:{port}"
    log.info("Flower on %s (every endpoint asks for the credentials)", where)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        flower.start()


def main(argv: Sequence[str] | None = None) -> int:
    auth = credentials(Settings(), os.environ)
    if auth is None or not credentials_ok(auth):
        print(
            "refusing to start Flower without credentials: "
            "set ROUTER_FLOWER_BASIC_AUTH=user:password",
            file=sys.stderr,
        )
        return EXIT_NO_CREDENTIALS
    serve(auth, sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
