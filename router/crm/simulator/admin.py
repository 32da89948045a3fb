"""The simulator's admin endpoints under ``/_admin/`` (no token; loopback clients only, unless
``--admin-allow`` names more networks - e.g. the Docker bridge, to watch the page from the host).

* ``GET /_admin/`` - an HTML page listing the email activities (refreshes every 2 s; the demo).
* ``GET /_admin/emails[?org=NAME&limit=N]`` - the same as JSON, with parties and attachments.
* ``GET /_admin/requests[?since=ID&org=NAME]`` - the request log (shape only, never a token).
* ``GET|POST /_admin/faults`` - read or change the injected faults (JSON object of changes).
* ``POST /_admin/reset`` - delete data and log (``{"org": NAME}`` for one organisation) and faults.
* ``POST /_admin/seed`` - put N outbound emails straight into Pending Send (a test shortcut; the
  Dataverse way is ``POST emails`` then ``SendEmail(IssueSend=true)``).
* ``POST /_admin/tables/<table>`` - add rows to ``mailboxes``, ``queues``, ``systemusers`` or
  ``emailserverprofiles`` (``{"org": NAME, "rows": [{...}]}``; missing columns take defaults);
  ``GET /_admin/tables/<table>?org=NAME`` lists them; ``PATCH|DELETE /_admin/tables/<table>/<id>``
  (``{"org": NAME, <column>: value}``) changes or removes one, as an administrator would.
* ``POST /_admin/revoke-tokens`` - forget every issued token (the next call gets a 401).
* ``GET /_admin/stats`` - requests in flight and the peak since the last ``POST /_admin/stats``.
"""

from __future__ import annotations

import html
import ipaddress
import time
from typing import Any

from flask import Blueprint, Response, abort, request

from router.crm.simulator.shared import Simulator
from router.crm.simulator.tables import seed_rows
from router.crm.simulator.wire import json_response

STATUS_NAMES = {1: "Draft", 2: "Completed", 3: "Sent", 4: "Received", 5: "Canceled",
                6: "Pending Send", 7: "Sending", 8: "Failed"}  # fmt: skip


def admin_blueprint(sim: Simulator) -> Blueprint:
    """The ``/_admin`` routes bound to ``sim``."""
    bp = Blueprint("admin", __name__, url_prefix="/_admin")

    @bp.before_request
    def allowed_clients_only() -> None:
        if request.remote_addr is None:
            return
        address = ipaddress.ip_address(request.remote_addr)
        if not any(address in network for network in sim.admin_networks):
            abort(403)

    @bp.get("/emails")
    def emails() -> Response:
        rows = sim.store.list_emails(request.args.get("org"), int(request.args.get("limit", 1000)))
        return json_response(200, rows)

    @bp.get("/requests")
    def requests_log() -> Response:
        since = int(request.args.get("since", 0))
        return json_response(200, sim.store.request_log(since, request.args.get("org")))

    @bp.route("/faults", methods=["GET", "POST"])
    def faults() -> Response:
        if request.method == "POST":
            try:
                sim.faults.update(request.get_json(force=True) or {})
            except (TypeError, ValueError) as exc:
                return json_response(400, {"error": str(exc)})
        return json_response(200, sim.faults.faults.as_dict())

    @bp.post("/reset")
    def reset() -> Response:
        org = (request.get_json(silent=True) or {}).get("org")
        sim.store.reset(org)
        if org is None:
            sim.faults.reset()
            sim.gate.reset_peak()
        return json_response(200, {"reset": org or "all"})

    @bp.post("/seed")
    def seed() -> Response:
        return json_response(201, {"ids": seed_pending(sim, request.get_json(force=True) or {})})

    _table_routes(bp, sim)

    @bp.post("/revoke-tokens")
    def revoke() -> Response:
        sim.revoke_all()
        return json_response(200, {"revoked": True})

    @bp.route("/stats", methods=["GET", "POST"])
    def stats() -> Response:
        if request.method == "POST":  # start a new measurement
            sim.gate.reset_peak()
        return json_response(200, {"in_flight": sim.gate.in_flight, "peak": sim.gate.peak,
                                   "tokens": len(sim.tokens)})  # fmt: skip

    @bp.get("/")
    def page() -> Response:
        return Response(render_page(sim.store.list_emails(request.args.get("org"), 200)),
                        content_type="text/html; charset=utf-8")  # fmt: skip

    return bp


def _table_routes(bp: Blueprint, sim: Simulator) -> None:
    @bp.post("/tables/<table>")
    def add_rows(table: str) -> Response:
        spec = request.get_json(force=True) or {}
        try:
            ids = seed_rows(sim.store, spec.get("org", "default"), table, list(spec["rows"]))
        except (KeyError, TypeError, ValueError) as exc:
            return json_response(400, {"error": f"{type(exc).__name__}: {exc}"})
        return json_response(201, {"ids": ids})

    @bp.get("/tables/<table>")
    def list_rows(table: str) -> Response:
        return json_response(200, sim.store.records(request.args.get("org", "default"), table))

    @bp.route("/tables/<table>/<record_id>", methods=["PATCH", "DELETE"])
    def change_row(table: str, record_id: str) -> Response:
        spec = dict(request.get_json(silent=True) or {})
        org = str(spec.pop("org", request.args.get("org", "default")))
        if request.method == "DELETE":
            found = sim.store.delete_record(org, table, record_id.lower())
        else:
            found = sim.store.update_record(org, table, record_id.lower(), spec)
        return json_response(200 if found else 404, {"found": found})


def seed_pending(sim: Simulator, spec: dict[str, Any]) -> list[str]:
    """Create ``count`` outbound emails in Pending Send for ``owner_id`` / ``queue_id``."""
    org, count = spec.get("org", "default"), int(spec.get("count", 1))
    ids = []
    with sim.store.transaction() as db:
        for n in range(count):
            fields = {
                "subject": spec.get("subject", "Seeded email {n}").format(n=n),
                "description": spec.get("body", "<p>Hello {n}</p>").format(n=n),
                "directioncode": 1, "sender": spec.get("sender", "sales@example.com"),
                "torecipients": ";".join(spec.get("to", ["customer@example.net"])),
                "statecode": 1, "statuscode": 6, "ownerid": spec.get("owner_id"),
                "emailsender": spec.get("queue_id") or spec.get("owner_id"), "origin": "seed",
                "trackingtoken": spec.get("tracking_token"),
                "createdon": time.time() + n * 1e-6, "modifiedon": time.time(),
            }  # fmt: skip
            email_id = sim.store.insert_email(db, org, fields)
            _seed_parties(sim, db, org, email_id, spec)
            for att in spec.get("attachments", []):
                sim.store.insert_attachment(db, org, email_id, att)
            ids.append(email_id)
    return ids


def _seed_parties(sim: Simulator, db: Any, org: str, email_id: str, spec: dict[str, Any]) -> None:
    parties = [(1, spec.get("sender", "sales@example.com"))]
    for mask, key, default in ((2, "to", ["customer@example.net"]), (3, "cc", []), (4, "bcc", [])):
        parties += [(mask, address) for address in spec.get(key, default)]
    for mask, address in parties:
        sim.store.insert_party(
            db, org, email_id, {"participationtypemask": mask, "addressused": address}
        )


def render_page(rows: list[dict[str, Any]]) -> str:
    """The demo page: one table row per activity, newest first."""
    names = ("Org", "Direction", "Subject", "From", "To", "Received / created", "Status",
             "Attachments", "Notes")  # fmt: skip
    head = "<tr>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    body = "".join(_row(r) for r in rows) or "<tr><td colspan=9>No activities yet.</td></tr>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
        "<title>crm-sim activities</title><style>body{font-family:sans-serif}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Dataverse simulator - email activities ({len(rows)})</h1><table>{head}{body}</table>"
        "</body></html>"
    )


def _row(r: dict[str, Any]) -> str:
    when = r["receivedon"] or time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["createdon"]))
    cells = [
        r["org"], "outgoing" if r["directioncode"] else "incoming", r["subject"] or "",
        r["sender"] or "", r["torecipients"] or "", when,
        STATUS_NAMES.get(r["statuscode"], str(r["statuscode"])),
        ", ".join(a["filename"] or "?" for a in r["attachments"]), "; ".join(r["notes"]),
    ]  # fmt: skip
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
