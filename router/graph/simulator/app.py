"""The Graph simulator's Flask application: identity endpoints, ``/v1.0`` and ``/admin``.

Use :func:`create_app` with a :class:`Simulator`. Routes:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``POST /{tenant}/oauth2/v2.0/token``
  - what MSAL needs for client credentials;
* ``/v1.0/...`` - the Graph mail calls (:mod:`router.graph.simulator.graphapi`);
* ``PUT /upload/{session}?authtoken=`` - the ``uploadUrl`` of an attachment upload session
  (:mod:`router.graph.simulator.uploads`; its token is in the URL, as in Graph);
* ``/admin/...`` - loopback clients only (no token): ``POST
  /admin/mailboxes/{m}/folders/{f}/messages`` (``{"mime": [base64, ...]}``), ``GET`` the same
  path (what the folder holds), ``GET /admin/sent[?sender=]``, ``GET
  /admin/requests[?since=N&mailbox=M]`` (the request log, never a token or a body), ``GET|POST
  /admin/faults``, ``POST /admin/faults/reset``, ``POST /admin/expire-delta`` (``{"mailbox":
  m}`` or all), ``POST /admin/revoke-tokens``, ``GET /admin/stats``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, abort, request

from router.graph.simulator.faults import Faults, Traffic
from router.graph.simulator.graphapi import Answer, Call, GraphApi
from router.graph.simulator.identity import Identity
from router.graph.simulator.mailstore import MailStore, NotFound

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass
class Simulator:
    """Everything one simulator process holds."""

    tenant: str
    client_id: str
    client_secret: str
    faults: Faults
    store: MailStore = field(default_factory=MailStore)
    traffic: Traffic = field(init=False)
    identity: Identity = field(init=False)
    api: GraphApi = field(init=False)

    def __post_init__(self) -> None:
        self.traffic = Traffic(self.faults)
        self.identity = Identity(
            self.tenant,
            self.client_id,
            self.client_secret,
            lambda: self.traffic.faults.token_lifetime,
        )
        self.api = GraphApi(self.store, self.traffic, self.identity)


def create_app(sim: Simulator) -> Flask:
    """Build the Flask app serving identity, Graph and admin routes."""
    app = Flask("graph-sim")
    _identity_routes(app, sim)
    app.register_blueprint(_admin(sim))

    @app.route("/v1.0/<path:rest>", methods=["GET", "POST", "PATCH", "DELETE"])
    def graph(rest: str) -> Response:
        body = request.get_data()
        call = Call(
            method=request.method,
            path=f"/{rest}",
            query={k: v for k, v in request.args.items()},
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=_json_or_none(body, request.content_type or ""),
            base=request.host_url.rstrip("/"),
        )
        return _response(sim.api.call(call))

    @app.put("/upload/<session>")
    def upload(session: str) -> Response:
        status, body = sim.api.uploads.put(
            session,
            request.args.get("authtoken", ""),
            request.headers.get("Content-Range", ""),
            request.get_data(),
        )
        return _json(status, body) if body is not None else Response(b"", status)

    return app


def _json_or_none(body: bytes, content_type: str) -> Any:
    if not body or not content_type.startswith("application/json"):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _response(answer: Answer) -> Response:
    if answer.raw is not None:
        return Response(answer.raw, answer.status, headers=answer.headers)
    if answer.json is None:
        return Response(b"", answer.status, headers=answer.headers)
    return _json(answer.status, answer.json, answer.headers)


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(value), status, headers=headers,
                    content_type="application/json")  # fmt: skip


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
        status, body = sim.identity.issue(tenant, request.form)
        return _json(status, body)


def _admin(sim: Simulator) -> Blueprint:
    admin = Blueprint("admin", __name__, url_prefix="/admin")

    @admin.before_request
    def loopback_only() -> None:
        address = ipaddress.ip_address(request.remote_addr or "0.0.0.0")
        if not any(address in net for net in LOOPBACK):
            abort(403)

    @admin.post("/mailboxes/<mailbox>/folders/<folder>/messages")
    def add(mailbox: str, folder: str) -> Response:
        payload = request.get_json(force=True)
        ids = [sim.store.add(mailbox, folder, base64.b64decode(m)) for m in payload["mime"]]
        return _json(201, {"ids": ids})

    @admin.get("/mailboxes/<mailbox>/folders/<folder>/messages")
    def listing(mailbox: str, folder: str) -> Response:
        try:
            return _json(200, sim.store.listing(mailbox, folder))
        except NotFound:
            return _json(404, {"error": f"no folder {folder!r}"})

    @admin.get("/sent")
    def sent() -> Response:
        return _json(200, sim.store.sent(request.args.get("sender")))

    @admin.get("/requests")
    def requests_log() -> Response:
        since = int(request.args.get("since", "0"))
        return _json(200, sim.traffic.entries(since, request.args.get("mailbox")))

    @admin.route("/faults", methods=["GET", "POST"])
    def faults() -> Response:
        if request.method == "POST":
            try:
                sim.traffic.set_faults(request.get_json(force=True) or {})
            except (ValueError, TypeError) as exc:
                return _json(400, {"error": str(exc)})
        return _json(200, sim.traffic.faults.as_dict())

    @admin.post("/faults/reset")
    def reset() -> Response:
        sim.traffic.reset(sim.faults)
        return _json(200, sim.traffic.faults.as_dict())

    @admin.post("/expire-delta")
    def expire() -> Response:
        payload = request.get_json(silent=True) or {}
        return _json(200, {"expired": sim.store.expire_tokens(payload.get("mailbox"))})

    @admin.post("/revoke-tokens")
    def revoke() -> Response:
        return _json(200, {"revoked": sim.identity.revoke()})

    @admin.get("/stats")
    def stats() -> Response:
        return _json(200, {"in_flight": sim.traffic.in_flight(),
                           "tokens_issued": sim.identity.issued})  # fmt: skip

    return admin
