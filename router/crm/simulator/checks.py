"""The simulator's CheckIncomingEmail: the duplicate check and the owners' tracking filters.

Registered on :data:`router.crm.simulator.webapi.ROUTES` when the app imports this module:

* ``GET CheckIncomingEmail(MessageId=@p1,Subject=@p2,From=@p3,To=@p4,Cc=@p5,Bcc=@p6
  [,ExtraProperties=@p7])`` - ``ShouldDeliver`` / ``ReasonCode``. A Message-ID the organisation
  holds is a duplicate (0). Otherwise every recipient (To, Cc, Bcc) that is an active user or
  queue (:func:`router.crm.simulator.tables.find_owner`) applies its
  ``incomingemailfilteringmethod`` with the rules of :mod:`router.crm.tracking`; the message is
  wanted when one of them wants it. ``ExtraProperties`` (an email entity) may carry
  ``inreplyto``, the id the message answers.
* ``GET usersettingscollection(<systemuserid>)`` - a user's ``incomingemailfilteringmethod``
  (Dataverse keeps it in ``usersettings``; the simulator on the ``systemusers`` row).

What the simulator has stands in for Dataverse's own records (kept simple, said here once):
an email "the organisation sent" is an outgoing email row (``directioncode`` 1) with that
``messageid``; a lead, contact or account is an address used by an activity party bound to one
(``partyid_contact@odata.bind`` ...); an email-enabled record is one of those or a user or queue.
A message with no user or queue among its recipients is accepted (6 AcceptAll): the simulator
cannot know whose filter would apply.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from router.crm.base import ACCEPTED, Verdict
from router.crm.simulator import tables
from router.crm.simulator.odata import (
    CODE_NOT_FOUND,
    CODE_SYNTAX,
    FUNCTIONS,
    ODataError,
    bad_request,
    check_guid,
    check_params,
    check_query_options,
    parse_literal,
    parse_select,
)
from router.crm.simulator.storage import Store
from router.crm.simulator.webapi import NS, Answer, Call, handles
from router.crm.tracking import Facts, Lookups, decide, verdict
from router.mail.limits import COLUMN_LIMITS

_RECORD_TYPES = ("contacts", "accounts", "leads")


@handles("GET", r"CheckIncomingEmail\((.*)\)")
def check_incoming(store: Store, call: Call, match: re.Match[str]) -> Answer:
    params = _function_params(match.group(1), call.args)
    extra = _extra_properties(params.pop("ExtraProperties", None))
    check_params("CheckIncomingEmail", params, FUNCTIONS)
    if store.find_by_message_id(call.org, params["MessageId"] or "") is not None:
        result = verdict(False, 0)
    else:
        result = _filtered(store, call.org, params, extra)
    return Answer(200, {
        "@odata.context": f"{call.base_url}$metadata#{NS}CheckIncomingEmailResponse",
        "ShouldDeliver": result.wanted, "ReasonCode": result.reason_code,
    })  # fmt: skip


@handles("GET", r"usersettingscollection\(([^)]*)\)")
def user_settings(store: Store, call: Call, match: re.Match[str]) -> Answer:
    check_query_options(call.args, ("$select",))
    columns = ("systemuserid", "incomingemailfilteringmethod")
    select = parse_select(call.args.get("$select"), columns)
    found = tables.owner(store, call.org, check_guid(match.group(1)))
    if found is None or found["type"] != "systemuser":
        raise ODataError(
            404, CODE_NOT_FOUND, f"usersettings With Id = {match.group(1)} Does Not Exist"
        )
    row = {"systemuserid": found["id"], **found}
    context = f"{call.base_url}$metadata#usersettingscollection/$entity"
    return Answer(200, {"@odata.context": context, **{k: row[k] for k in select}})


def _filtered(store: Store, org: str, params: dict[str, Any], extra: dict[str, Any]) -> Verdict:
    recipients = [a for n in ("To", "Cc", "Bcc") for a in _addresses(params.get(n))]
    owners = [o for o in (tables.find_owner(store, org, a) for a in recipients) if o is not None]
    if not owners:
        return ACCEPTED
    answers = (extra["inreplyto"],) if extra.get("inreplyto") else ()
    sender = (_addresses(params.get("From")) or [""])[0].lower()
    facts, lookups = Facts(params.get("Subject") or "", answers, sender), _lookups(store, org)
    verdicts = [decide(o["incomingemailfilteringmethod"], facts, lookups) for o in owners]
    return next((v for v in verdicts if v.wanted), verdicts[0])


def _lookups(store: Store, org: str) -> Lookups:
    def sent_by_org(message_id: str) -> bool:
        rows = store.query(
            "SELECT 1 FROM emails WHERE org=? AND messageid=? AND directioncode=1 LIMIT 1",
            (org, message_id),
        )
        return bool(rows)

    def is_record(address: str) -> bool:
        marks = ",".join("?" * len(_RECORD_TYPES))
        rows = store.query(
            f"SELECT 1 FROM parties WHERE org=? AND lower(addressused)=? AND partytype IN ({marks})"
            " LIMIT 1",
            (org, address.lower(), *_RECORD_TYPES),
        )
        return bool(rows)

    def is_email_enabled(address: str) -> bool:
        return is_record(address) or tables.find_owner(store, org, address) is not None

    return Lookups(sent_by_org, is_record, is_email_enabled)


def _extra_properties(value: Any) -> dict[str, Any]:
    """CheckIncomingEmail's optional ExtraProperties: an email entity with ``inreplyto``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"@odata.type", "inreplyto"}:
        raise bad_request(
            "ExtraProperties must be an email entity (the simulator reads inreplyto)."
        )
    reply = value.get("inreplyto")
    if reply is not None and (
        not isinstance(reply, str) or len(reply) > COLUMN_LIMITS["inreplyto"]
    ):
        raise bad_request("inreplyto must be a string of at most 320 characters.")
    return value


def _function_params(inner: str, args: dict[str, str]) -> dict[str, Any]:
    """``MessageId=@p1,Subject=@p2`` with ``?@p1='x'`` -> {"MessageId": "x", ...}.

    An alias whose value is a JSON object (an entity parameter) is read as JSON.
    """
    params: dict[str, Any] = {}
    check_query_options(args, ())
    for item in filter(None, (p.strip() for p in unquote(inner).split(","))):
        name, _, value = item.partition("=")
        if value.startswith("@"):
            if value not in args:
                raise bad_request(f"The parameter alias '{value}' has no value.", CODE_SYNTAX)
            value = args[value]
        params[name.strip()] = _literal(value)
    return params


def _literal(text: str) -> Any:
    if text.strip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise bad_request("A JSON parameter value is malformed.", CODE_SYNTAX) from None
    return parse_literal(text)


def _addresses(text: str | None) -> list[str]:
    found = []
    for part in re.split(r"[;,]", text or ""):
        match = re.search(r"<([^>]*)>", part)
        address = (match.group(1) if match else part).strip()
        if address:
            found.append(address)
    return found
