"""The console's Flask app and its HTTP server: ``email-router console``.

Use :func:`create_app` to build the app around a :class:`~router.console.hub.ConsoleHub` (tests
use it with Flask's test client) and :func:`serve` to run it: a cheroot WSGI server (the one
``crm-sim`` uses; threads, HTTP/1.1) on 127.0.0.1 unless told otherwise, until SIGTERM/SIGINT.
Listening anywhere else is logged as a warning (:func:`router.websurface.warn_if_exposed`).
"""

from __future__ import annotations

import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from cheroot import wsgi
from flask import Flask

from router.console import auth, views
from router.console.audit import EXTENSION as AUDIT_EXTENSION
from router.console.hub import EXTENSION as HUB_EXTENSION
from router.console.hub import ConsoleHub
from router.console.settings import Credentials
from router.websurface import warn_if_exposed

log = logging.getLogger(__name__)

#: Requests served at once.
THREADS = 8


def create_app(
    hub: ConsoleHub, creds: Credentials, key: bytes, *, secure_cookie: bool = False
) -> Flask:
    """The console app: every page behind the sign-in, every POST behind the CSRF check."""
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"))
    app.jinja_env.filters["when"] = when
    app.extensions[HUB_EXTENSION] = hub
    app.extensions[AUDIT_EXTENSION] = hub.audit
    auth.install(app, creds, key, secure_cookie=secure_cookie)
    app.register_blueprint(views.bp)
    return app


def when(ts: float) -> str:
    """``2026-12-07 04:50:12 UTC``: a time as the pages show it."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def serve(app: Flask, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; prints the URL once the port is bound."""
    warn_if_exposed("the console", host)
    logging.getLogger("cheroot").setLevel(logging.WARNING)
    server = wsgi.Server((host, port), app, numthreads=THREADS, server_name="email-router")
    server.prepare()  # binds the port (a free one for --port 0)
    bound = int(server.bind_addr[1])
    shown = f"[{host}]" if ":" in host else host
    print(f"console listening on http://{shown}:{bound}/", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("console stopped", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
