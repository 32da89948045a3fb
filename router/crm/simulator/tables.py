"""The simulator's directory tables: ``mailboxes``, ``queues``, ``systemusers``,
``emailserverprofiles`` - who the organisation's mailboxes are and who owns them.

Use :data:`TABLES` for the columns of each table (with their defaults), :func:`seed_rows` to add
rows (the admin API ``POST /_admin/tables/<table>`` and ``make demo`` call it), and
:func:`find_owner` / :func:`owner` to know which user or queue an address belongs to and its
tracking filter (``incomingemailfilteringmethod``, 0 all ... 4 none).

Simplification, said once: a user's filtering method lives in Dataverse's ``usersettings``; here
it is a column of the ``systemusers`` row, like the queue's own column.

The Web API routes registered here: ``GET <table>`` with ``$select``, ``$filter`` (``eq`` joined
by ``and``), ``$top`` and paging (``Prefer: odata.maxpagesize=N`` -> ``@odata.nextLink``),
``GET <table>(<id>)`` and ``PATCH mailboxes(<id>)`` for the status columns Test Access writes.
A lookup column's target table is annotated
(``_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname``) when the request's
``Prefer`` asks for ``odata.include-annotations``, as in Dataverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from router.crm.simulator.odata import (
    CODE_NOT_FOUND,
    ODataError,
    bad_request,
    check_guid,
    check_query_options,
    parse_filter,
    parse_select,
)
from router.crm.simulator.storage import Store, new_id
from router.crm.simulator.webapi import Answer, Call, handles

LOOKUP_NAME = "@Microsoft.Dynamics.CRM.lookuplogicalname"
#: What a page holds when the client does not ask for a size (Dataverse: 5,000).
DEFAULT_PAGE = 5000


@dataclass(frozen=True)
class Table:
    """One directory table: its key, columns with their defaults, and what PATCH may change."""

    entity: str  # logical name (lookupname annotations)
    key: str
    defaults: dict[str, Any]
    writable: frozenset[str] = frozenset()
    #: lookup column -> the column of the row holding the target's logical name
    lookups: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.key, *self.defaults)


TABLES: dict[str, Table] = {
    "mailboxes": Table(
        "mailbox", "mailboxid",
        {"name": "", "emailaddress": "", "incomingemaildeliverymethod": 2,
         "outgoingemaildeliverymethod": 2, "emailrouteraccessapproval": 1,
         "enabledforincomingemail": True, "enabledforoutgoingemail": True,
         "incomingemailstatus": 0, "outgoingemailstatus": 0, "processanddeleteemails": False,
         "processemailreceivedafter": None, "isforwardmailbox": False, "statecode": 0,
         "testmailboxaccesscompletedon": None,
         # a custom column (publisher prefix new_) an organisation adds to keep Test Access's
         # failure reason; Dataverse has none of its own (LoadMailboxes FailureReasonColumn=)
         "new_emailrouterfailurereason": None,
         "_emailserverprofile_value": None, "_regardingobjectid_value": None,
         "regardingobjecttype": "systemuser"},
        frozenset({"incomingemailstatus", "outgoingemailstatus", "testmailboxaccesscompletedon",
                   "new_emailrouterfailurereason", "emailrouteraccessapproval", "statecode"}),
        (("_regardingobjectid_value", "regardingobjecttype"),),
    ),
    "queues": Table(
        "queue", "queueid",
        {"name": "", "emailaddress": "", "incomingemailfilteringmethod": 0, "statecode": 0},
    ),
    "systemusers": Table(
        "systemuser", "systemuserid",
        {"fullname": "", "internalemailaddress": "", "isdisabled": False,
         "incomingemailfilteringmethod": 0},
    ),
    "emailserverprofiles": Table(
        "emailserverprofile", "emailserverprofileid",
        {"name": "", "servertype": 4, "incomingserverlocation": "", "incomingportnumber": 993,
         "incomingusessl": True, "outgoingserverlocation": "", "outgoingportnumber": 587,
         "outgoingusessl": True, "incomingcredentialretrieval": 1, "statecode": 0},
    ),
}  # fmt: skip

_TABLE_NAMES = "|".join(TABLES)


def seed_rows(store: Store, org: str, table: str, rows: list[dict[str, Any]]) -> list[str]:
    """Add ``rows`` to ``table`` (missing columns take their defaults); return their ids.

    ValueError for an unknown table or column (the admin API answers 400).
    """
    spec = _table(table)
    full = []
    for row in rows:
        unknown = set(row) - set(spec.columns)
        if unknown:
            raise ValueError(f"{table} has no column(s) {', '.join(sorted(unknown))}")
        full.append({**spec.defaults, **row, spec.key: str(row.get(spec.key) or new_id()).lower()})
    store.put_records(org, table, spec.key, full)
    return [r[spec.key] for r in full]


def _table(name: str) -> Table:
    if name not in TABLES:
        raise ValueError(f"no table {name!r} (tables: {', '.join(TABLES)})")
    return TABLES[name]


def find_owner(store: Store, org: str, address: str) -> dict[str, Any] | None:
    """The active user or queue whose address is ``address`` (case-insensitive), or None.

    The answer: ``{"type": "systemuser"|"queue", "id": ..., "incomingemailfilteringmethod": n}``.
    """
    wanted = address.strip().lower()
    for table, column in (("systemusers", "internalemailaddress"), ("queues", "emailaddress")):
        for row in store.records(org, table):
            if str(row.get(column) or "").lower() == wanted and _active(row):
                return _owner_view(table, row)
    return None


def owner(store: Store, org: str, owner_id: str) -> dict[str, Any] | None:
    """The user or queue with id ``owner_id`` (same shape as :func:`find_owner`), or None."""
    for table in ("systemusers", "queues"):
        row = store.record(org, table, owner_id.lower())
        if row is not None:
            return _owner_view(table, row)
    return None


def _active(row: dict[str, Any]) -> bool:
    return not row.get("isdisabled") and row.get("statecode", 0) == 0


def _owner_view(table: str, row: dict[str, Any]) -> dict[str, Any]:
    spec = TABLES[table]
    method = int(row.get("incomingemailfilteringmethod") or 0)
    return {"type": spec.entity, "id": row[spec.key], "incomingemailfilteringmethod": method}


# -- Web API routes -------------------------------------------------------------------------


@handles("GET", rf"({_TABLE_NAMES})")
def query_table(store: Store, call: Call, match: re.Match[str]) -> Answer:
    table, spec = match.group(1), TABLES[match.group(1)]
    check_query_options(call.args, ("$select", "$filter", "$top", "$skiptoken"))
    select = parse_select(call.args.get("$select"), spec.columns)
    text = call.args.get("$filter")
    clauses = parse_filter(text, spec.columns) if text else []
    rows = [r for r in store.records(call.org, table) if _matches(r, clauses)]
    rows = rows[: int(call.args.get("$top", len(rows)))]
    start, size = int(call.args.get("$skiptoken", "0")), _page_size(call.prefer)
    page = rows[start : start + size]
    body: dict[str, Any] = {
        "@odata.context": f"{call.base_url}$metadata#{table}",
        "value": [_project(spec, r, select, call.prefer) for r in page],
    }
    if start + size < len(rows):
        body["@odata.nextLink"] = _next_link(call, table, start + size)
    return Answer(200, body)


def _matches(row: dict[str, Any], clauses: list[tuple[str, Any]]) -> bool:
    return all(_same(row.get(name), value) for name, value in clauses)


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, str) and isinstance(want, str):
        return have.lower() == want.lower()  # Dataverse compares strings case-insensitively
    return bool(have == want)


def _page_size(prefer: str) -> int:
    found = re.search(r"odata\.maxpagesize=(\d+)", prefer)
    return max(1, int(found.group(1))) if found else DEFAULT_PAGE


def _next_link(call: Call, table: str, start: int) -> str:
    args = {k: v for k, v in call.args.items() if k != "$skiptoken"}
    query = "&".join(f"{k}={quote(v, safe=',$')}" for k, v in args.items())
    return f"{call.base_url}{table}?{query}{'&' if query else ''}$skiptoken={start}"


def _project(
    spec: Table, row: dict[str, Any], select: tuple[str, ...], prefer: str
) -> dict[str, Any]:
    out = {name: row.get(name) for name in select}
    if "include-annotations" in prefer:
        for lookup, kind in spec.lookups:
            if lookup in select and row.get(lookup):
                out[lookup + LOOKUP_NAME] = row.get(kind)
    return out


@handles("GET", rf"({_TABLE_NAMES})\(([^)]*)\)")
def read_record(store: Store, call: Call, match: re.Match[str]) -> Answer:
    table, spec = match.group(1), TABLES[match.group(1)]
    check_query_options(call.args, ("$select",))
    select = parse_select(call.args.get("$select"), spec.columns)
    row = _record(store, call, table, match.group(2))
    return Answer(200, {"@odata.context": f"{call.base_url}$metadata#{table}/$entity",
                        **_project(spec, row, select, call.prefer)})  # fmt: skip


@handles("PATCH", r"(mailboxes)\(([^)]*)\)")
def update_mailbox(store: Store, call: Call, match: re.Match[str]) -> Answer:
    spec = TABLES["mailboxes"]
    if not isinstance(call.body, dict):
        raise bad_request("The request body must be a JSON object.")
    refused = set(call.body) - spec.writable
    if refused:
        raise bad_request(
            f"The property '{sorted(refused)[0]}' cannot be updated on type "
            "'Microsoft.Dynamics.CRM.mailbox' by the simulator."
        )
    row = _record(store, call, "mailboxes", match.group(2))
    store.update_record(call.org, "mailboxes", row[spec.key], call.body)
    return Answer(204)


def _record(store: Store, call: Call, table: str, record_id: str) -> dict[str, Any]:
    row = store.record(call.org, table, check_guid(record_id))
    if row is None:
        entity = TABLES[table].entity
        raise ODataError(404, CODE_NOT_FOUND, f"{entity} With Id = {record_id} Does Not Exist")
    return row
