"""Sign-in, the session and CSRF protection of the console.

Use :func:`install` on the Flask app: every request except the sign-in page needs a signed
session cookie of the configured user (:mod:`router.console.settings`); a page request without
one is sent to ``/login``, anything else gets 401. Every POST - the sign-in form included -
must carry the session's CSRF token in the ``csrf_token`` form field, or it gets 403 before any
view runs. User name and password are compared in constant time, and signing in starts a fresh
session (a token planted before sign-in is never reused). After :data:`MAX_FAILURES` refused
sign-ins from one address within a minute, that address gets 429 until the minute has passed.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request
from flask import session as flask_session
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from router.console.audit import audit_log
from router.console.settings import Credentials

#: Form field and session key of the CSRF token.
CSRF_FIELD = "csrf_token"
#: How long a session lasts without signing in again.
SESSION_LIFETIME = timedelta(hours=8)
#: Refused sign-ins from one address within :data:`FAILURE_WINDOW` seconds before it must wait.
MAX_FAILURES, FAILURE_WINDOW = 10, 60.0
#: Endpoints anyone may reach (the sign-in form, and the health check of the orchestrator).
OPEN_ENDPOINTS = frozenset({"auth.login", "auth.health"})

bp = Blueprint("auth", __name__)


class Throttle:
    """Refused sign-ins per remote address: guessing passwords gets slow (429 for a while)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, address: str) -> bool:
        """True while ``address`` had :data:`MAX_FAILURES` refusals in the last window."""
        with self._lock:
            recent = self._recent(address)
            return len(recent) >= MAX_FAILURES

    def failed(self, address: str) -> None:
        """Count a refused sign-in from ``address``."""
        with self._lock:
            self._recent(address).append(self._clock())

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        while failures and self._clock() - failures[0] > FAILURE_WINDOW:
            failures.popleft()
        return failures


def install(app: Flask, creds: Credentials, key: bytes, *, secure_cookie: bool) -> None:
    """Protect every endpoint of ``app`` with the sign-in and the CSRF check."""
    app.secret_key = key
    app.config.update(
        CONSOLE_THROTTLE=Throttle(),
        CONSOLE_CREDENTIALS=creds,
        SESSION_COOKIE_NAME="email_router_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookie,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.before_request(_guard)
    app.after_request(_headers)
    app.context_processor(lambda: {"csrf_token": csrf_token(), "user": current_user()})
    app.register_blueprint(bp)


def current_user() -> str | None:
    """The signed-in user of this request, or None."""
    user = flask_session.get("user")
    return user if isinstance(user, str) else None


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for the forms of a page."""
    token = flask_session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        flask_session[CSRF_FIELD] = token
    return token


def csrf_ok() -> bool:
    """True when the request's form carries this session's CSRF token."""
    expected = flask_session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD, "")
    return isinstance(expected, str) and hmac.compare_digest(given.encode(), expected.encode())


def credentials_match(creds: Credentials, user: str, password: str) -> bool:
    """Constant-time check of both fields (both are compared, whichever is wrong)."""
    user_ok = hmac.compare_digest(user.encode(), creds.user.encode())
    password_ok = hmac.compare_digest(password.encode(), creds.password.encode())
    return user_ok and password_ok


def _guard() -> ResponseReturnValue | None:
    if request.method == "POST" and not csrf_ok():
        abort(403, "missing or wrong CSRF token: reload the page and try again")
    if request.endpoint in OPEN_ENDPOINTS or current_user() is not None:
        return None
    if request.method == "GET":
        return redirect(f"/login?next={request.full_path.rstrip('?')}")
    abort(401)


def _headers(response: Response) -> Response:
    # no script, no frame, no third-party anything: the pages are plain HTML and inline SVG
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    # only a path of this site: an open redirect would make the sign-in page a phishing tool
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The sign-in form; on POST check the credentials and start a fresh session (else 401)."""
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", error=None, next=target)
    creds: Credentials = current_app.config["CONSOLE_CREDENTIALS"]
    throttle: Throttle = current_app.config["CONSOLE_THROTTLE"]
    address = request.remote_addr or "?"
    if throttle.blocked(address):
        audit_log().record(None, "login", "refused: too many attempts", remote=address)
        error = "too many failed attempts: wait a minute"
        return render_template("login.html", error=error, next=target), 429
    given = (request.form.get("username", ""), request.form.get("password", ""))
    if not credentials_match(creds, *given):
        throttle.failed(address)
        audit_log().record(None, "login", "refused", remote=address)
        return render_template("login.html", error="wrong user name or password", next=target), 401
    flask_session.clear()
    flask_session.permanent = True
    flask_session["user"] = creds.user
    csrf_token()
    audit_log().record(creds.user, "login", "ok", remote=request.remote_addr)
    return redirect(target)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session."""
    audit_log().record(current_user(), "logout", "ok", remote=request.remote_addr)
    flask_session.clear()
    return redirect("/login")


@bp.get("/healthz")
def health() -> ResponseReturnValue:
    """``ok``: the process serves requests (for probes; it shows nothing else)."""
    return "ok\n", 200, {"Content-Type": "text/plain"}
