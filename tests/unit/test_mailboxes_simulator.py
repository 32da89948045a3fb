"""The simulator's directory tables, called as the Web API handlers see a request (no HTTP).

``$select``, ``$filter`` (``eq`` joined by ``and``, strings case-insensitive), paging with
``Prefer: odata.maxpagesize`` and ``@odata.nextLink``, the lookup annotation, PATCH of the status
columns Test Access writes (and nothing else), and the owner lookups the tracking filter uses.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from router.crm.simulator import tables
from router.crm.simulator.odata import ODataError
from router.crm.simulator.storage import Store
from router.crm.simulator.webapi import Answer, Call, route

BASE = "https://sim.test/org/o/api/data/v9.2/"


def call(method: str, path: str, body: Any = None, prefer: str = "", **args: str) -> Answer:
    return route(STORE, Call("o", method, path, dict(args), body, BASE, prefer=prefer))


STORE = Store()


@pytest.fixture(autouse=True)
def seeded() -> None:
    STORE.reset()
    users = tables.seed_rows(STORE, "o", "systemusers", [
        {"fullname": "Ann", "internalemailaddress": "Ann@Contoso.com",
         "incomingemailfilteringmethod": 1},
        {"fullname": "Bob", "internalemailaddress": "bob@contoso.com", "isdisabled": True},
    ])  # fmt: skip
    (queue,) = tables.seed_rows(STORE, "o", "queues", [{"emailaddress": "help@contoso.com"}])
    tables.seed_rows(STORE, "o", "mailboxes", [
        {"emailaddress": f"m{n}@contoso.com", "_regardingobjectid_value": users[0],
         "statecode": n % 2} for n in range(5)
    ] + [{"emailaddress": "help@contoso.com", "_regardingobjectid_value": queue,
          "regardingobjecttype": "queue"}])  # fmt: skip
    tables.seed_rows(STORE, "other", "mailboxes", [{"emailaddress": "x@elsewhere.com"}])


def test_filter_and_select_return_only_the_matching_rows_and_columns() -> None:
    answer = call(
        "GET", "mailboxes", **{"$select": "emailaddress,statecode", "$filter": "statecode eq 0"}
    )
    assert [r["emailaddress"] for r in answer.body["value"]] == [
        "m0@contoso.com", "m2@contoso.com", "m4@contoso.com", "help@contoso.com",
    ]  # fmt: skip
    assert set(answer.body["value"][0]) == {"emailaddress", "statecode"}
    both = "emailaddress eq 'M2@contoso.com' and statecode eq 0"
    assert len(call("GET", "mailboxes", **{"$filter": both}).body["value"]) == 1


def test_pages_follow_the_next_link_until_every_row_was_read() -> None:
    seen, path, args = [], "mailboxes", {"$select": "mailboxid"}
    for _ in range(10):
        body = call("GET", path, prefer="odata.maxpagesize=4", **args).body
        seen += [r["mailboxid"] for r in body["value"]]
        if "@odata.nextLink" not in body:
            break
        link = urlsplit(body["@odata.nextLink"])
        path, args = link.path.rsplit("/", 1)[-1], dict(parse_qsl(link.query))
    assert len(seen) == len(set(seen)) == 6  # the other organisation's row is not there


def test_the_owner_table_is_annotated_only_when_the_client_asks() -> None:
    select = {"$select": "emailaddress,_regardingobjectid_value"}
    plain = call("GET", "mailboxes", **select).body["value"][-1]
    assert tables.LOOKUP_NAME not in "".join(plain)
    asked = call("GET", "mailboxes", prefer='odata.include-annotations="*"', **select)
    row = asked.body["value"][-1]
    assert row["_regardingobjectid_value" + tables.LOOKUP_NAME] == "queue"


def test_patch_writes_the_test_access_columns_and_refuses_others() -> None:
    mailbox = STORE.records("o", "mailboxes")[0]["mailboxid"]
    body = {"incomingemailstatus": 2, "new_emailrouterfailurereason": "login refused"}
    assert call("PATCH", f"mailboxes({mailbox})", body).status == 204
    row = call("GET", f"mailboxes({mailbox})").body
    assert (row["incomingemailstatus"], row["new_emailrouterfailurereason"]) == (2, "login refused")
    with pytest.raises(ODataError) as info:
        call("PATCH", f"mailboxes({mailbox})", {"emailaddress": "evil@example.com"})
    assert "cannot be updated" in info.value.message
    with pytest.raises(ODataError) as info:
        call("GET", "mailboxes(00000000-0000-0000-0000-000000000009)")
    assert info.value.status == 404


def test_an_unknown_column_in_a_seeded_row_is_refused() -> None:
    with pytest.raises(ValueError, match="no column"):
        tables.seed_rows(STORE, "o", "queues", [{"colour": "blue"}])


def test_owners_are_found_by_address_case_insensitively_with_their_filtering_method() -> None:
    ann = tables.find_owner(STORE, "o", "ann@contoso.COM")
    assert ann is not None and ann["type"] == "systemuser"
    assert ann["incomingemailfilteringmethod"] == 1
    assert tables.find_owner(STORE, "o", "bob@contoso.com") is None  # disabled
    help_queue = tables.find_owner(STORE, "o", "help@contoso.com")
    assert help_queue is not None and help_queue["type"] == "queue"
    assert tables.owner(STORE, "o", help_queue["id"]) == help_queue
