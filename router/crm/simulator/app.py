"""The simulator's Flask application: identity endpoints, the Web API pipeline, ``$batch``.

Use :func:`create_app` with a :class:`Simulator` (store, faults, accepted client). Every Web API
request goes through the same pipeline as in Dataverse: the concurrency gate (429 above
``max_concurrent`` in flight), added latency, the Bearer token (issued here, not expired, for this
organisation), injected 429/503, the OData headers, then the handler in ``webapi.py``. Each
request - and each ``$batch`` part - is written to the request log with its method, path, selected
headers (the token value never), the JSON body's names and types, status and timestamps.

Organisations: ``/api/data/v9.2/`` is the organisation ``default``; ``/org/<name>/api/data/v9.2/``
is the organisation ``<name>`` (its ``CrmServerUrl`` is ``https://host:port/org/<name>``). The
authority is ``https://host:port/<tenant>`` (token: ``<authority>/oauth2/v2.0/token``, discovery:
``<authority>/v2.0/.well-known/openid-configuration``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, request

from router.crm.simulator.faults import FaultState, Gate
from router.crm.simulator.odata import (
    CODE_AUTH,
    CODE_SYNTAX,
    CODE_THROTTLED,
    CODE_UNAVAILABLE,
    ODataError,
    bad_request,
)
from router.crm.simulator.storage import Store
from router.crm.simulator.webapi import Answer, Call, route

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
API_VERSIONS = ("9.0", "9.1", "9.2")
LOGGED_HEADERS = (
    "Accept", "OData-MaxVersion", "OData-Version", "If-None-Match", "Content-Type", "Prefer",
    "MSCRMCallerID", "Content-Transfer-Encoding",
)  # fmt: skip
JSON_TYPE = "application/json; odata.metadata=minimal"


@dataclass(frozen=True)
class IssuedToken:
    """A token the simulator issued: who got it, for which resource, until when."""

    client_id: str
    audience_path: str
    expires_at: float


@dataclass
class Simulator:
    """Everything the app shares between requests."""

    store: Store
    faults: FaultState = field(default_factory=FaultState)
    tenant: str = "simulator-tenant"
    client_id: str | None = None
    client_secret: str | None = None
    gate: Gate = field(default_factory=Gate)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    admin_networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
    )  # fmt: skip
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, client_id: str, audience: str) -> tuple[str, int]:
        lifetime = self.faults.faults.token_lifetime
        token = secrets.token_urlsafe(32)
        path = urlsplit(audience).path.rstrip("/")
        with self.lock:
            self.tokens[token] = IssuedToken(client_id, path, time.time() + lifetime)
        return token, lifetime

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()


def create_app(sim: Simulator) -> Flask:
    """Build the Flask app serving the identity endpoints, the Web API and the admin pages."""
    from router.crm.simulator.admin import admin_blueprint

    app = Flask("crm-sim")
    app.config["SIM"] = sim
    app.register_blueprint(admin_blueprint(sim))
    _identity_routes(app, sim)

    methods = ["GET", "POST", "PATCH", "DELETE", "PUT"]

    @app.route("/api/data/v<version>/<path:rest>", methods=methods)
    @app.route("/org/<org>/api/data/v<version>/<path:rest>", methods=methods)
    def webapi(version: str, rest: str, org: str = "default") -> Response:
        return WebApiRequest(sim, org, version, rest).run()

    return app


# -- identity -------------------------------------------------------------------------------


def _identity_routes(app: Flask, sim: Simulator) -> None:
    @app.get("/<tenant>/v2.0/.well-known/openid-configuration")
    def discovery(tenant: str) -> Response:
        base = f"{request.host_url}{tenant}"
        return _json(200, {
            "issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "jwks_uri": f"{base}/discovery/v2.0/keys", "tenant_region_scope": "WW",
            "response_types_supported": ["code", "id_token", "token"],
            "grant_types_supported": ["client_credentials"],
        })  # fmt: skip

    @app.post("/<tenant>/oauth2/v2.0/token")
    def token(tenant: str) -> Response:
        form = request.form
        problem = _token_problem(sim, tenant, form)
        if problem:
            return _json(problem[0], {"error": problem[1], "error_description": problem[2]})
        scope = form["scope"].split()[0]
        value, lifetime = sim.issue(form["client_id"], scope[: -len("/.default")])
        return _json(200, {"token_type": "Bearer", "expires_in": lifetime,
                           "ext_expires_in": lifetime, "access_token": value})  # fmt: skip


def _token_problem(sim: Simulator, tenant: str, form: Any) -> tuple[int, str, str] | None:
    if tenant != sim.tenant:
        return 400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found."
    if form.get("grant_type") != "client_credentials":
        return 400, "unsupported_grant_type", "AADSTS70003: only client_credentials is supported."
    scopes = (form.get("scope") or "").split()
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        return 400, "invalid_scope", "AADSTS1002012: scope must be '<resource>/.default'."
    if not form.get("client_id") or not form.get("client_secret"):
        return 400, "invalid_request", "AADSTS900144: client_id and client_secret are required."
    wrong_id = sim.client_id is not None and form["client_id"] != sim.client_id
    wrong_secret = sim.client_secret is not None and form["client_secret"] != sim.client_secret
    if sim.faults.faults.token_error or wrong_id or wrong_secret:
        return 401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
    return None


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, content_type="application/json")


# -- the Web API pipeline -------------------------------------------------------------------


def body_shape(value: Any) -> Any:
    """The names and JSON types of a body (never its values): what the request log keeps."""
    if isinstance(value, dict):
        return {k: body_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [body_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "string"


def logged_headers(headers: Any) -> dict[str, str]:
    out = {name: headers[name] for name in LOGGED_HEADERS if name in headers}
    auth = headers.get("Authorization")
    if auth is not None:
        out["Authorization"] = "Bearer <token>" if auth.startswith("Bearer ") else "<other>"
    return out


class WebApiRequest:
    """One HTTP request to the Web API, from the concurrency gate to the log line."""

    def __init__(self, sim: Simulator, org: str, version: str, rest: str) -> None:
        self.sim, self.org, self.version, self.rest = sim, org, version, rest
        self.fault: str | None = None
        self.client_id = ""
        self.base_url = request.host_url + ("" if org == "default" else f"org/{org}/")
        self.base_url += f"api/data/v{version}/"

    def run(self) -> Response:
        t_start = time.time()
        log_id = self.sim.store.log_request(self._log_entry(t_start))
        answer = self._answer(log_id)
        retry_after = answer.headers.get("Retry-After")
        self.sim.store.execute(
            "UPDATE requests SET status=?, t_end=?, retry_after=?, fault=?, client_id=? WHERE id=?",
            (answer.status, time.time(), retry_after, self.fault, self.client_id, log_id),
        )
        if isinstance(answer.body, str):  # a $batch answer, already encoded
            return Response(answer.body, answer.status, answer.headers)
        return _odata_response(answer)

    def _log_entry(self, t_start: float) -> dict[str, Any]:
        raw = request.get_data()
        shape: Any = (
            {"multipart": raw.count(b"application/http")}
            if self.rest == "$batch"
            else (body_shape(parse_json(raw)) if raw else None)
        )
        digest = hashlib.sha256(request.full_path.encode() + b"\n" + raw).hexdigest()[:20]
        return {
            "org": self.org, "t_start": t_start, "method": request.method, "path": request.path,
            "query": request.query_string.decode("utf-8", "replace"),
            "headers": logged_headers(request.headers), "body": shape, "fingerprint": digest,
        }  # fmt: skip

    def _answer(self, log_id: int) -> Answer:
        limit = self.sim.faults.faults.max_concurrent
        if not self.sim.gate.enter(limit):
            self.fault = "concurrency"
            retry = self.sim.faults.throttle_retry_after()
            return _error(
                429,
                CODE_THROTTLED,
                f"Number of concurrent requests exceeded the limit of {limit}.",
                retry,
            )
        try:
            return self._guarded(log_id)
        except ODataError as exc:
            return Answer(exc.status, exc.body())
        finally:
            self.sim.gate.leave()

    def _guarded(self, log_id: int) -> Answer:
        decision = self.sim.faults.decide()
        if decision.delay:
            time.sleep(decision.delay)
        self._authenticate()
        if decision.status == 429:
            self.fault = "429"
            return _error(429, CODE_THROTTLED, "Number of requests exceeded the limit of 6000 over "
                          "time window of 300 seconds.", decision.retry_after)  # fmt: skip
        if decision.status == 503:
            self.fault = "503"
            return _error(503, CODE_UNAVAILABLE, "The service is temporarily unavailable.")
        if self.version not in API_VERSIONS:
            raise ODataError(404, CODE_SYNTAX, f"API version v{self.version} is not supported.")
        _check_headers(request.headers, request.method, self.rest == "$batch")
        if self.rest == "$batch":
            from router.crm.simulator.batch import run_batch

            return run_batch(self, log_id)
        return route(self.sim.store, self.call(request.method, self.rest, dict(request.args),
                                               parse_json(request.get_data())))  # fmt: skip

    def call(self, method: str, rest: str, args: dict[str, str], body: Any) -> Call:
        f = self.sim.faults.faults
        return Call(self.org, method, rest, args, body, self.base_url, self.client_id,
                    request.headers.get("Prefer", ""), f.reject_message_ids)  # fmt: skip

    def _authenticate(self) -> None:
        auth = request.headers.get("Authorization", "")
        issued = self.sim.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        expected = "" if self.org == "default" else f"/org/{self.org}"
        refused = self.sim.faults.faults.reject_tokens
        if (
            refused
            or issued is None
            or issued.expires_at < time.time()
            or issued.audience_path != expected
        ):
            self.fault = self.fault or "unauthorized"
            raise _Unauthorized()
        self.client_id = issued.client_id


class _Unauthorized(ODataError):
    def __init__(self) -> None:
        super().__init__(
            401, CODE_AUTH, "The access token is missing, expired or not for this organization."
        )


def _error(status: int, code: str, message: str, retry_after: float | None = None) -> Answer:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
    return Answer(status, ODataError(status, code, message).body(), headers)


def parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("The request body is not valid JSON.") from None


def _check_headers(headers: Any, method: str, batch: bool) -> None:
    """The headers Dataverse expects from a Web API client (see the module docstring)."""
    required = {"OData-MaxVersion": "4.0", "OData-Version": "4.0"}
    for name, value in required.items():
        if headers.get(name) != value:
            raise bad_request(f"The header '{name}: {value}' is required.", CODE_SYNTAX)
    if "application/json" not in headers.get("Accept", ""):
        raise bad_request("The header 'Accept: application/json' is required.", CODE_SYNTAX)
    if headers.get("If-None-Match", "null") != "null":
        raise bad_request("If-None-Match must be 'null' (no cached representation).", CODE_SYNTAX)
    if method in ("POST", "PATCH", "PUT"):
        content_type = headers.get("Content-Type", "")
        want = "multipart/mixed" if batch else "application/json"
        if not content_type.startswith(want) and (batch or request.content_length):
            raise bad_request(f"Content-Type must be {want}.", CODE_SYNTAX)


def _odata_response(answer: Answer) -> Response:
    headers = {"OData-Version": "4.0", **answer.headers}
    if answer.body is None:
        return Response(b"", answer.status, headers)
    return Response(json.dumps(answer.body), answer.status, headers, content_type=JSON_TYPE)


def parse_http_message(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Split an ``application/http`` part into its start line, headers and body."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode("utf-8").split("\n")
    message = BytesParser(policy=HTTP).parsebytes("\n".join(lines[1:]).encode() + b"\n\n")
    return lines[0].strip(), {k: str(v) for k, v in message.items()}, body.strip(b"\n")
