"""The Dataverse ``mailboxes`` table: reading the records ``<LoadMailboxes>`` runs, writing
Test Access results.

Use :func:`list_mailboxes` and :func:`record_test` with the adapter's :class:`WebApi`
(:class:`~router.crm.dataverse.DataverseAdapter` delegates to them). Reading follows
``@odata.nextLink`` page by page (:data:`PAGE_SIZE` rows each), and asks for the lookup
annotation that says whether a mailbox belongs to a user or a queue.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from router.crm.base import MailboxRecord
from router.crm.dataverse_http import WebApi
from router.errors import CrmRejected

#: Rows per page (Dataverse's maximum is 5,000; smaller pages keep each answer quick).
PAGE_SIZE = 500
#: Pages followed at most: 1,000,000 mailboxes; a server that links pages in a loop stops here.
MAX_PAGES = 2000
COLUMNS = (
    "mailboxid", "name", "emailaddress", "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod", "emailrouteraccessapproval", "statecode",
    "processanddeleteemails", "_regardingobjectid_value",
)  # fmt: skip
LOOKUP = "_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
ANNOTATIONS = 'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'
#: A custom column name: a publisher prefix, an underscore, letters and digits.
CUSTOM_COLUMN = re.compile(r"[a-z][a-z0-9]*_[a-z0-9_]+")


def list_mailboxes(api: WebApi) -> list[MailboxRecord]:
    """Every mailbox record of the organisation, all pages."""
    path: str | None = f"mailboxes?$select={','.join(COLUMNS)}"
    found: list[MailboxRecord] = []
    prefer = f"{ANNOTATIONS},odata.maxpagesize={PAGE_SIZE}"
    for _ in range(MAX_PAGES):
        if path is None:
            return found
        page = api.call("GET", path, "list mailboxes", headers={"Prefer": prefer}).json()
        found += [_record(row) for row in page.get("value", [])]
        path = page.get("@odata.nextLink")
    raise CrmRejected(f"list mailboxes: more than {MAX_PAGES} pages, giving up")


def _record(row: dict[str, Any]) -> MailboxRecord:
    return MailboxRecord(
        mailbox_id=str(row["mailboxid"]),
        address=str(row.get("emailaddress") or ""),
        name=str(row.get("name") or ""),
        incoming_method=int(row.get("incomingemaildeliverymethod") or 0),
        outgoing_method=int(row.get("outgoingemaildeliverymethod") or 0),
        approval=int(row.get("emailrouteraccessapproval") or 0),
        active=int(row.get("statecode") or 0) == 0,
        owner_id=row.get("_regardingobjectid_value"),
        owner_type=str(row.get(LOOKUP) or "systemuser"),
        delete_after_processing=bool(row.get("processanddeleteemails")),
    )


def record_test(
    api: WebApi, mailbox_id: str, incoming: bool, reason: str | None, reason_column: str | None
) -> None:
    """Set the incoming or outgoing email status (1 success, 2 failure) and the test time."""
    status = "incomingemailstatus" if incoming else "outgoingemailstatus"
    body: dict[str, Any] = {
        status: 1 if reason is None else 2,
        "testmailboxaccesscompletedon": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if reason_column and CUSTOM_COLUMN.fullmatch(reason_column):
        body[reason_column] = (reason or "")[:2000]
    api.call("PATCH", f"mailboxes({mailbox_id})", "record Test Access", json=body)
