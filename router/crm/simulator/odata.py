"""What the simulator enforces about Web API payloads: parameter and column names and JSON types.

Use :func:`check_params` for action bodies and function parameters and :func:`check_entity` for
entity bodies (create / update / deep insert). Anything Dataverse would refuse - an unknown name,
a missing required parameter, a string where a boolean belongs, a malformed id, a value longer
than its email column (``messageid`` 320, ``subject`` 800, ... :data:`COLUMN_LIMITS`) - raises
:class:`ODataError`, which the app renders as Dataverse's error body
``{"error": {"code": "0x...", "message": "..."}}`` (400). Also the small OData query subset the
adapter uses: ``$select``, ``$filter`` (``eq`` joined by ``and``) and ``$top``.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from router.mail.limits import COLUMN_LIMITS

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
BIND = re.compile(
    r"^/?(systemusers|teams|queues|contacts|accounts|activitypointers|emails)\((.+)\)$"
)

# Codes seen in Dataverse answers; the code is unrelated to the HTTP status.
CODE_BAD_REQUEST = "0x0"
CODE_NOT_FOUND = "0x80040217"
CODE_SYNTAX = "0x80060888"
CODE_INVALID_ARG = "0x80040203"
CODE_THROTTLED = "0x80072322"
CODE_UNAVAILABLE = "0x80040216"
CODE_AUTH = "0x80072560"
CODE_CLOSED = "0x80043e09"  # (unconfirmed) "cannot update a closed email"
CODE_TOO_LONG = "0x80044331"  # (unconfirmed code) a value longer than its column


class ODataError(Exception):
    """A Web API error answer: HTTP status, Dataverse error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = CODE_BAD_REQUEST) -> ODataError:
    return ODataError(400, code, message)


@dataclass(frozen=True)
class Kind:
    """The EDM type of a parameter or column, and the JSON values that fit it."""

    edm: str
    max_length: int = 0
    #: The email column a length-limited parameter is stored in (named in the error).
    column: str = ""

    def check(self, name: str, value: Any) -> None:
        ok = _CHECKS[self.edm](value)
        if not ok:
            raise bad_request(
                f"Cannot convert the literal '{_show(value)}' to the expected type '{self.edm}'"
                f" (parameter or property '{name}')."
            )
        if self.max_length and isinstance(value, str) and len(value) > self.max_length:
            raise bad_request(
                f"A validation error occurred. The length of the '{self.column or name}' "
                f"attribute of the 'email' entity exceeded the maximum allowed length of "
                f"'{self.max_length}'.",
                CODE_TOO_LONG,
            )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:37] + "..."


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "Edm.String": lambda v: v is None or isinstance(v, str),
    "Edm.Boolean": lambda v: isinstance(v, bool),
    "Edm.Int32": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "Edm.DateTimeOffset": _is_datetime,
    "Edm.Binary": lambda v: isinstance(v, str) and _is_base64(v),
    "Bind": lambda v: isinstance(v, str) and _is_bind(v),
    "Entity": lambda v: isinstance(v, dict),
    "Collection": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_bind(value: str) -> bool:
    match = BIND.match(value)
    return bool(match and GUID.match(match.group(2)))


STR, BOOL, INT = Kind("Edm.String"), Kind("Edm.Boolean"), Kind("Edm.Int32")


def column(name: str) -> Kind:
    """A string email column limited to its Dataverse size (one table: router.mail.limits)."""
    return Kind("Edm.String", COLUMN_LIMITS[name], name)


DATE, BIN, BINDING = Kind("Edm.DateTimeOffset"), Kind("Edm.Binary"), Kind("Bind")
ENTITY, COLLECTION = Kind("Entity"), Kind("Collection")

#: Bound/unbound actions: parameter -> kind, and the required parameters.
ACTIONS: dict[str, tuple[dict[str, Kind], frozenset[str]]] = {
    "DeliverIncomingEmail": (
        {"MessageId": column("messageid"), "Subject": column("subject"),
         "From": column("sender"), "To": column("torecipients"),
         "Cc": STR, "Bcc": STR, "ReceivedOn": DATE, "SubmittedBy": STR, "Importance": STR,
         "Body": STR, "Attachments": COLLECTION, "ExtraProperties": ENTITY},
        frozenset({"MessageId", "Subject", "From", "To", "Cc", "Bcc", "ReceivedOn",
                   "SubmittedBy", "Importance", "Body", "Attachments"}),
    ),
    "SendEmail": (
        {"IssueSend": BOOL, "TrackingToken": STR}, frozenset({"IssueSend", "TrackingToken"})
    ),
    "BackgroundSendEmail": ({"Query": ENTITY}, frozenset({"Query"})),
    "GetTrackingTokenEmail": ({"Subject": STR}, frozenset({"Subject"})),
}  # fmt: skip

#: Functions (parameters in the URL, values as @p aliases).
FUNCTIONS: dict[str, tuple[dict[str, Kind], frozenset[str]]] = {
    "CheckIncomingEmail": (
        {n: STR for n in ("MessageId", "Subject", "From", "To", "Cc", "Bcc")},
        frozenset({"MessageId", "Subject", "From", "To", "Cc", "Bcc"}),
    ),
    "WhoAmI": ({}, frozenset()),
}

#: Writable columns per entity type (for create, update and deep insert).
ENTITIES: dict[str, dict[str, Kind]] = {
    "email": {
        "@odata.type": STR, "subject": column("subject"), "description": STR,
        "messageid": column("messageid"), "directioncode": BOOL, "sender": column("sender"),
        "torecipients": column("torecipients"), "trackingtoken": column("trackingtoken"),
        "deliveryattempts": INT, "prioritycode": INT,
        "statecode": INT, "statuscode": INT, "ownerid@odata.bind": BINDING,
        "queueid@odata.bind": BINDING, "regardingobjectid_contact@odata.bind": BINDING,
        "regardingobjectid_account@odata.bind": BINDING, "email_activity_parties": COLLECTION,
        "email_activity_mime_attachment": COLLECTION,
    },
    "activityparty": {
        "@odata.type": STR, "participationtypemask": INT, "addressused": STR,
        "partyid_systemuser@odata.bind": BINDING, "partyid_contact@odata.bind": BINDING,
        "partyid_account@odata.bind": BINDING, "partyid_queue@odata.bind": BINDING,
    },
    "activitymimeattachment": {
        "@odata.type": STR, "filename": STR, "mimetype": STR, "body": BIN,
        "attachmentcontentid": STR, "objecttypecode": STR,
        "objectid_activitypointer@odata.bind": BINDING,
    },
    "annotation": {
        "@odata.type": STR, "subject": STR, "notetext": STR, "objectid_email@odata.bind": BINDING,
    },
}  # fmt: skip


def check_params(operation: str, body: dict[str, Any], table: dict[str, Any]) -> None:
    """Refuse unknown, missing or wrongly typed parameters of an action or function."""
    kinds, required = table[operation]
    for name, value in body.items():
        if name not in kinds:
            raise bad_request(
                f"The parameter '{name}' in the request payload is not a valid parameter for "
                f"the operation '{operation}'."
            )
        kinds[name].check(name, value)
    missing = sorted(required - set(body))
    if missing:
        raise bad_request(f"Required parameter(s) missing for '{operation}': {', '.join(missing)}.")


def check_entity(entity: str, body: Any) -> None:
    """Refuse unknown or wrongly typed columns of an ``entity`` body (recursing deep inserts)."""
    if not isinstance(body, dict):
        raise bad_request(f"The payload of a '{entity}' must be a JSON object.")
    kinds = ENTITIES[entity]
    for name, value in body.items():
        if name not in kinds:
            raise bad_request(
                f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{entity}'. "
                "Make sure to only use property names that are defined by the type."
            )
        kinds[name].check(name, value)
    for part in body.get("email_activity_parties", []):
        check_entity("activityparty", part)
    for att in body.get("email_activity_mime_attachment", []):
        check_entity("activitymimeattachment", att)


def bound_id(value: str) -> tuple[str, str]:
    """``/systemusers(<guid>)`` -> ("systemusers", guid)."""
    match = BIND.match(value)
    assert match is not None  # checked by Kind("Bind") before
    return match.group(1), match.group(2).lower()


def check_guid(value: str) -> str:
    if not GUID.match(value):
        raise bad_request(
            f"Bad Request - Error in query syntax: '{value}' is not a GUID.", CODE_SYNTAX
        )
    return value.lower()


# -- URL literals and the query subset ------------------------------------------------------


def parse_literal(text: str) -> Any:
    """An OData URL literal: ``'it''s'`` -> "it's", ``null``, ``true``, numbers, GUIDs."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if GUID.match(text):
        return str(uuid.UUID(text))
    raise bad_request(f"Syntax error: '{text}' is not a valid OData literal.", CODE_SYNTAX)


def parse_filter(text: str, columns: tuple[str, ...]) -> list[tuple[str, Any]]:
    """``a eq 'x' and b eq 1`` -> [("a", "x"), ("b", 1)] (the only form the adapter sends)."""
    clauses: list[tuple[str, Any]] = []
    for clause in re.split(r"\s+and\s+", text.strip()):
        match = re.fullmatch(r"(\w+)\s+eq\s+(.+)", clause.strip())
        if not match:
            raise bad_request(f"Unsupported $filter clause: '{clause}'.", CODE_SYNTAX)
        if match.group(1) not in columns:
            raise bad_request(f"Could not find a property named '{match.group(1)}'.", CODE_SYNTAX)
        clauses.append((match.group(1), parse_literal(match.group(2))))
    return clauses


def parse_select(text: str | None, columns: tuple[str, ...]) -> tuple[str, ...]:
    if not text:
        return columns
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in columns:
            raise bad_request(f"Could not find a property named '{name}' on the type.", CODE_SYNTAX)
    return names


def check_query_options(args: dict[str, str], allowed: tuple[str, ...]) -> None:
    """Refuse system query options this endpoint does not support, as Dataverse does."""
    for name in args:
        if name.startswith("$") and name not in allowed:
            raise bad_request(f"The query parameter '{name}' is not supported here.", CODE_SYNTAX)
