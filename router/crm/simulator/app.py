"""The simulator's Flask application: identity endpoints, the Web API routes, the admin pages.

Use :func:`create_app` with a :class:`~router.crm.simulator.shared.Simulator` (store, faults,
accepted client). Every Web API request goes through the same pipeline as in Dataverse
(``pipeline.py``: concurrency gate, latency, Bearer token, injected 429/503, OData headers, then
the handler in ``webapi.py`` or ``batch.py``). Each request - and each ``$batch`` part - is
written to the request log with its method, path, selected headers (the token value never), the
JSON body's names and types, status and timestamps.

Organisations: ``/api/data/v9.2/`` is the organisation ``default``; ``/org/<name>/api/data/v9.2/``
is the organisation ``<name>`` (its ``CrmServerUrl`` is ``https://host:port/org/<name>``). The
authority is ``https://host:port/<tenant>`` (token: ``<authority>/oauth2/v2.0/token``, discovery:
``<authority>/v2.0/.well-known/openid-configuration``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request

from router.crm.simulator import (
    checks,  # noqa: F401  (registers CheckIncomingEmail)
    tables,  # noqa: F401  (registers the tables' Web API routes)
)
from router.crm.simulator.admin import admin_blueprint
from router.crm.simulator.pipeline import WebApiRequest
from router.crm.simulator.shared import Simulator
from router.crm.simulator.wire import json_response


def create_app(sim: Simulator) -> Flask:
    """Build the Flask app serving the identity endpoints, the Web API and the admin pages."""
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
        return json_response(200, {
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
            status, error, description = problem
            return json_response(status, {"error": error, "error_description": description})
        scope = form["scope"].split()[0]
        value, lifetime = sim.issue(form["client_id"], scope[: -len("/.default")])
        return json_response(200, {"token_type": "Bearer", "expires_in": lifetime,
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
