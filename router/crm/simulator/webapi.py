"""The Web API subset the simulator implements, as plain functions of a parsed request.

Use :func:`route` with a :class:`Call` (organisation, method, path after ``/api/data/v9.2/``,
query arguments, JSON body) to get an :class:`Answer`. The Flask app (``app.py``) turns HTTP
requests and ``$batch`` parts into calls, after authentication, headers and fault injection.

Supported: ``WhoAmI``, ``CheckIncomingEmail`` (in :mod:`router.crm.simulator.checks`),
``emails/Microsoft.Dynamics.CRM.DeliverIncomingEmail``,
``BackgroundSendEmail``, ``emails(<id>)/Microsoft.Dynamics.CRM.SendEmail``,
``GetTrackingTokenEmail``, ``emails`` (create with parties, query by ``$filter``), ``emails(<id>)``
(read, update), ``emails(<id>)/email_activity_parties``, ``activitymimeattachments`` (create,
query) and ``annotations`` (create). Email status moves Draft (1) -> Pending Send (6) -> Sent (3)
or Failed (8); delivered incoming email is Received (4).
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.crm.simulator import fetchxml
from router.crm.simulator.odata import (
    ACTIONS,
    CODE_CLOSED,
    CODE_INVALID_ARG,
    CODE_NOT_FOUND,
    CODE_SYNTAX,
    ODataError,
    bad_request,
    bound_id,
    check_entity,
    check_guid,
    check_params,
    check_query_options,
    parse_filter,
    parse_select,
)
from router.crm.simulator.storage import EMAIL_COLUMNS, Store

NS = "Microsoft.Dynamics.CRM."
DRAFT, SENT, RECEIVED, PENDING_SEND, SENDING, FAILED = 1, 3, 4, 6, 7, 8
CLOSED = (2, 3, 4, 5)
VALID_STATUS = {1: 0, 8: 0, 2: 1, 3: 1, 4: 1, 6: 1, 7: 1, 5: 2}  # statuscode -> statecode
PRIORITY = {"low": 0, "normal": 1, "high": 2}
PARTY_TYPES = {"From": 1, "To": 2, "Cc": 3, "Bcc": 4}
_TOKENS = itertools.count(1001)


@dataclass
class Call:
    """One Web API request (a whole HTTP request or one ``$batch`` part)."""

    org: str
    method: str
    path: str
    args: dict[str, str]
    body: Any
    base_url: str
    client_id: str = ""
    prefer: str = ""
    reject_message_ids: tuple[str, ...] = ()


@dataclass
class Answer:
    """What a handler answers: status, JSON body (or None) and extra headers."""

    status: int
    body: Any = None  # a JSON object, None (no content) or, for $batch, the encoded multipart
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Store, Call, "re.Match[str]"], Answer]
ROUTES: list[tuple[str, str, Handler]] = []


def handles(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        ROUTES.append((method, pattern, func))
        return func

    return register


def route(store: Store, call: Call) -> Answer:
    """Dispatch ``call`` to its handler; unknown paths and methods get Dataverse's errors."""
    path_known = False
    for method, pattern, func in ROUTES:
        match = re.fullmatch(pattern, call.path)
        if match is None:
            continue
        path_known = True
        if method == call.method:
            return func(store, call, match)
    if path_known:
        return Answer(
            405, ODataError(405, CODE_SYNTAX, f"{call.method} is not allowed here.").body()
        )
    segment = call.path.split("/")[0]
    raise ODataError(404, CODE_SYNTAX, f"Resource not found for the segment '{segment}'.")


def _context(call: Call, what: str) -> str:
    return f"{call.base_url}$metadata#{what}"


def _body(call: Call) -> dict[str, Any]:
    if not isinstance(call.body, dict):
        raise bad_request("The request body must be a JSON object.")
    return call.body


def _email(store: Store, call: Call, activity_id: str) -> dict[str, Any]:
    row = store.get_email(call.org, check_guid(activity_id))
    if row is None:
        raise ODataError(404, CODE_NOT_FOUND, f"email With Id = {activity_id} Does Not Exist")
    return row


def _project(row: dict[str, Any], select: tuple[str, ...]) -> dict[str, Any]:
    out = {name: _out(name, row.get(name)) for name in select}
    if "_ownerid_value" in select or select == EMAIL_COLUMNS:
        out["_ownerid_value"] = row.get("ownerid")
    return out


def _out(name: str, value: Any) -> Any:
    if name == "directioncode":
        return bool(value)
    if name in ("createdon", "modifiedon") and isinstance(value, float):
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    return value


# -- identity and incoming mail -------------------------------------------------------------


@handles("GET", r"WhoAmI(?:\(\))?")
def who_am_i(store: Store, call: Call, _: re.Match[str]) -> Answer:
    user = uuid.uuid5(uuid.NAMESPACE_URL, f"client:{call.client_id}")
    org = uuid.uuid5(uuid.NAMESPACE_URL, f"org:{call.org}")
    return Answer(200, {
        "@odata.context": _context(call, f"{NS}WhoAmIResponse"),
        "BusinessUnitId": str(uuid.uuid5(org, "bu")), "UserId": str(user),
        "OrganizationId": str(org),
    })  # fmt: skip


@handles("POST", r"emails/Microsoft\.Dynamics\.CRM\.DeliverIncomingEmail")
def deliver_incoming(store: Store, call: Call, _: re.Match[str]) -> Answer:
    params = _body(call)
    check_params("DeliverIncomingEmail", params, ACTIONS)
    extra = params.get("ExtraProperties") or {}
    check_entity("email", extra)
    for att in params["Attachments"]:
        check_entity("activitymimeattachment", att)
    if params["MessageId"] in call.reject_message_ids:
        raise bad_request("The email was refused (injected fault).", CODE_INVALID_ARG)
    with store.transaction() as db:
        existing = store.find_by_message_id(call.org, params["MessageId"])
        email_id = existing or _insert_incoming(store, db, call.org, params, extra)
    return Answer(200, {
        "@odata.context": _context(call, f"{NS}DeliverIncomingEmailResponse"), "EmailId": email_id,
    })  # fmt: skip


def _insert_incoming(
    store: Store, db: Any, org: str, p: dict[str, Any], extra: dict[str, Any]
) -> str:
    owner = bound_id(extra["ownerid@odata.bind"])[1] if "ownerid@odata.bind" in extra else None
    queue = bound_id(extra["queueid@odata.bind"])[1] if "queueid@odata.bind" in extra else None
    email_id = store.insert_email(db, org, {
        "subject": p["Subject"], "description": p["Body"], "messageid": p["MessageId"],
        "directioncode": 0, "sender": p["From"], "torecipients": p["To"],
        "prioritycode": PRIORITY.get((p["Importance"] or "normal").lower(), 1),
        "statecode": 1, "statuscode": RECEIVED, "ownerid": owner, "queueid": queue,
        "submittedby": p["SubmittedBy"], "receivedon": p["ReceivedOn"], "origin": "incoming",
    })  # fmt: skip
    for param, mask in PARTY_TYPES.items():
        for address in _addresses(p[param]):
            store.insert_party(
                db, org, email_id, {"participationtypemask": mask, "addressused": address}
            )
    for att in p["Attachments"]:
        store.insert_attachment(db, org, email_id, att)
    return email_id


def _addresses(text: str | None) -> list[str]:
    found = []
    for part in (text or "").split(";"):
        match = re.search(r"<([^>]*)>", part)
        address = (match.group(1) if match else part).strip()
        if address:
            found.append(address)
    return found


# -- emails as entities ---------------------------------------------------------------------


@handles("POST", r"emails")
def create_email(store: Store, call: Call, _: re.Match[str]) -> Answer:
    body = _body(call)
    check_entity("email", body)
    if body.get("email_activity_mime_attachment"):
        raise bad_request("Deep insert of attachments is not supported by the simulator.")
    status = body.get("statuscode", DRAFT)
    if status not in (DRAFT, PENDING_SEND):
        raise bad_request("A new email must be Draft (1) or Pending Send (6).", CODE_INVALID_ARG)
    with store.transaction() as db:
        email_id = _insert_created(store, db, call.org, body, status)
    location = f"{call.base_url}emails({email_id})"
    if "return=representation" in call.prefer:
        return Answer(201, _project(_email(store, call, email_id), EMAIL_COLUMNS))
    return Answer(204, None, {"OData-EntityId": location, "Location": location})


def _insert_created(store: Store, db: Any, org: str, body: dict[str, Any], status: int) -> str:
    parties = [_party(p) for p in body.get("email_activity_parties", [])]
    sender = next((p for p in parties if p["participationtypemask"] == 1), None)
    owner = bound_id(body["ownerid@odata.bind"])[1] if "ownerid@odata.bind" in body else None
    email_id = store.insert_email(db, org, {
        "subject": body.get("subject"), "description": body.get("description"),
        "messageid": body.get("messageid"), "directioncode": int(body.get("directioncode", True)),
        "sender": body.get("sender") or (sender or {}).get("addressused"),
        "torecipients": body.get("torecipients") or ";".join(
            p["addressused"] or "" for p in parties if p["participationtypemask"] == 2),
        "prioritycode": body.get("prioritycode", 1), "statecode": VALID_STATUS[status],
        "statuscode": status, "ownerid": owner, "origin": "webapi",
        "emailsender": sender.get("partyid") if sender else None,
    })  # fmt: skip
    for party in parties:
        store.insert_party(db, org, email_id, party)
    return email_id


def _party(body: dict[str, Any]) -> dict[str, Any]:
    if "participationtypemask" not in body:
        raise bad_request("An activity party needs 'participationtypemask'.", CODE_INVALID_ARG)
    party: dict[str, Any] = {"participationtypemask": body["participationtypemask"]}
    party["addressused"] = body.get("addressused")
    for key, value in body.items():
        if key.startswith("partyid_"):
            party["partytype"], party["partyid"] = bound_id(value)
    if not party.get("addressused") and not party.get("partyid"):
        raise bad_request("An activity party needs 'addressused' or a partyid binding.")
    return party


@handles("GET", r"emails")
def query_emails(store: Store, call: Call, _: re.Match[str]) -> Answer:
    check_query_options(call.args, ("$select", "$filter", "$top"))
    columns = (*EMAIL_COLUMNS, "_ownerid_value")
    select = parse_select(call.args.get("$select"), columns)
    text = call.args.get("$filter")
    clauses = parse_filter(text, EMAIL_COLUMNS) if text else []
    sql = "".join(f" AND {name} IS ?" for name, _ in clauses)
    rows = store.query(f"SELECT * FROM emails WHERE org=?{sql} ORDER BY createdon",
                       [call.org, *(v for _, v in clauses)])  # fmt: skip
    top = int(call.args.get("$top", "5000"))
    values = [_project(r, select) for r in rows[:top]]
    return Answer(200, {"@odata.context": _context(call, "emails"), "value": values})


@handles("GET", r"emails\(([^)]*)\)")
def read_email(store: Store, call: Call, match: re.Match[str]) -> Answer:
    check_query_options(call.args, ("$select",))
    select = parse_select(call.args.get("$select"), (*EMAIL_COLUMNS, "_ownerid_value"))
    return Answer(200, {"@odata.context": _context(call, "emails/$entity"),
                        **_project(_email(store, call, match.group(1)), select)})  # fmt: skip


@handles("PATCH", r"emails\(([^)]*)\)")
def update_email(store: Store, call: Call, match: re.Match[str]) -> Answer:
    body = _body(call)
    check_entity("email", body)
    row = _email(store, call, match.group(1))
    state_change_only = set(body) <= {"statecode", "statuscode"}
    if row["statuscode"] in CLOSED and not state_change_only:  # reopening/closing is allowed
        raise bad_request(
            "This email is closed (sent or received) and cannot be updated.", CODE_CLOSED
        )
    allowed = {"subject", "description", "messageid", "trackingtoken", "deliveryattempts",
               "prioritycode", "statecode", "statuscode"}  # fmt: skip
    if set(body) - allowed:
        raise bad_request(f"The simulator cannot update {sorted(set(body) - allowed)}.")
    _check_status_pair(body, row)
    store.update_email(call.org, row["activityid"], body)
    return Answer(204)


def _check_status_pair(body: dict[str, Any], row: dict[str, Any]) -> None:
    if "statuscode" not in body and "statecode" not in body:
        return
    status = body.get("statuscode", row["statuscode"])
    state = body.get("statecode", VALID_STATUS.get(status))
    if VALID_STATUS.get(status) != state:
        raise bad_request(
            f"{status} is not a valid status code for state code {state}.", CODE_INVALID_ARG
        )


@handles("GET", r"emails\(([^)]*)\)/email_activity_parties")
def read_parties(store: Store, call: Call, match: re.Match[str]) -> Answer:
    check_query_options(call.args, ("$select",))
    columns = ("activitypartyid", "participationtypemask", "addressused", "_partyid_value")
    select = parse_select(call.args.get("$select"), columns)
    row = _email(store, call, match.group(1))
    values = [{**p, "_partyid_value": p["partyid"]} for p in store.parties(row["activityid"])]
    return Answer(200, {"@odata.context": _context(call, "activityparties"),
                        "value": [{k: v[k] for k in select} for v in values]})  # fmt: skip


# -- outgoing mail --------------------------------------------------------------------------


@handles("POST", r"emails\(([^)]*)\)/Microsoft\.Dynamics\.CRM\.SendEmail")
def send_email(store: Store, call: Call, match: re.Match[str]) -> Answer:
    params = _body(call)
    check_params("SendEmail", params, ACTIONS)
    row = _email(store, call, match.group(1))
    token = params["TrackingToken"] or row["trackingtoken"]
    if params["IssueSend"]:
        if row["statuscode"] not in (DRAFT, FAILED):
            raise bad_request("Only a draft or failed email can be sent.", CODE_INVALID_ARG)
        token = token or f"CRM:{next(_TOKENS):07d}"
        changes = {"statecode": 1, "statuscode": PENDING_SEND, "trackingtoken": token}
    else:
        if row["statuscode"] == SENT:
            raise bad_request("This email has already been sent.", CODE_CLOSED)
        if row["statuscode"] not in (DRAFT, PENDING_SEND, SENDING):
            raise bad_request("Only a draft or pending email can be marked sent.", CODE_INVALID_ARG)
        changes = {"statecode": 1, "statuscode": SENT, "trackingtoken": token}
    store.update_email(call.org, row["activityid"], changes)
    subject = f"{row['subject'] or ''} {token}".strip() if token else row["subject"]
    return Answer(
        200, {"@odata.context": _context(call, f"{NS}SendEmailResponse"), "Subject": subject}
    )


@handles("POST", r"GetTrackingTokenEmail")
def tracking_token(store: Store, call: Call, _: re.Match[str]) -> Answer:
    check_params("GetTrackingTokenEmail", _body(call), ACTIONS)
    return Answer(200, {"@odata.context": _context(call, f"{NS}GetTrackingTokenEmailResponse"),
                        "TrackingToken": f"CRM:{next(_TOKENS):07d}"})  # fmt: skip


@handles("POST", r"BackgroundSendEmail")
def background_send(store: Store, call: Call, _: re.Match[str]) -> Answer:
    params = _body(call)
    check_params("BackgroundSendEmail", params, ACTIONS)
    query = params["Query"]
    if query.get("@odata.type") != f"{NS}FetchExpression" or not isinstance(
        query.get("Query"), str
    ):
        raise bad_request(
            "Query must be a Microsoft.Dynamics.CRM.FetchExpression with a Query string."
        )
    rows = store.query("SELECT * FROM emails WHERE org=?", (call.org,))
    found, selected = fetchxml.evaluate(query["Query"], rows)
    select = tuple(selected) or EMAIL_COLUMNS
    entities = [{"@odata.type": f"#{NS}email", **_project(r, select)} for r in found]
    has = [bool(store.attachments(r["activityid"])) for r in found]
    return Answer(200, {
        "@odata.context": _context(call, f"{NS}BackgroundSendEmailResponse"),
        "EntityCollection": {"EntityName": "email", "MoreRecords": False, "Entities": entities},
        "HasAttachments": has,
    })  # fmt: skip


# -- attachments and notes ------------------------------------------------------------------


@handles("POST", r"activitymimeattachments")
def create_attachment(store: Store, call: Call, _: re.Match[str]) -> Answer:
    body = _body(call)
    check_entity("activitymimeattachment", body)
    bind = body.get("objectid_activitypointer@odata.bind")
    if not bind or body.get("objecttypecode") != "email":
        raise bad_request(
            "An attachment needs objectid_activitypointer@odata.bind and objecttypecode 'email'."
        )
    row = _email(store, call, bound_id(bind)[1])
    with store.transaction() as db:
        att_id = store.insert_attachment(db, call.org, row["activityid"], body)
    location = f"{call.base_url}activitymimeattachments({att_id})"
    return Answer(204, None, {"OData-EntityId": location})


@handles("GET", r"activitymimeattachments")
def query_attachments(store: Store, call: Call, _: re.Match[str]) -> Answer:
    check_query_options(call.args, ("$select", "$filter"))
    columns = ("activitymimeattachmentid", "filename", "mimetype", "body", "attachmentcontentid",
               "_objectid_value")  # fmt: skip
    select = parse_select(call.args.get("$select"), columns)
    clauses = dict(parse_filter(call.args.get("$filter", ""), ("_objectid_value",)))
    rows = store.attachments(str(clauses.get("_objectid_value", "")))
    values = [{**r, "_objectid_value": r["activityid"]} for r in rows if r["org"] == call.org]
    return Answer(200, {"@odata.context": _context(call, "activitymimeattachments"),
                        "value": [{k: v[k] for k in select} for v in values]})  # fmt: skip


@handles("POST", r"annotations")
def create_note(store: Store, call: Call, _: re.Match[str]) -> Answer:
    body = _body(call)
    check_entity("annotation", body)
    bind = body.get("objectid_email@odata.bind")
    if not bind:
        raise bad_request("A note needs objectid_email@odata.bind.")
    row = _email(store, call, bound_id(bind)[1])
    note_id = store.add_note(
        call.org, row["activityid"], body.get("subject") or "", body.get("notetext") or ""
    )
    return Answer(204, None, {"OData-EntityId": f"{call.base_url}annotations({note_id})"})
