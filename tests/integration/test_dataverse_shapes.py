"""The adapter's requests have exactly the documented shapes, read from the simulator's log.

Every assertion here looks at what the simulator received (method, path, headers, parameter
names and JSON types), never at the adapter's own code, so a change in the adapter that breaks
the wire format fails these tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from router.crm.base import DeliveryTarget, Owners
from router.crm.dataverse import DataverseAdapter, DataverseOptions
from router.crm.dataverse_payloads import Shapes
from router.models import Activity, Address, Attachment
from tests.servers.simulator import SimulatorServer

USER = "8d1f2d3c-0000-4000-8000-00000000000a"
QUEUE = "8d1f2d3c-0000-4000-8000-00000000000b"
ODATA = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "If-None-Match": "null",
    "Authorization": "Bearer <token>",
}
DELIVER_SHAPE = {
    "MessageId": "string",
    "Subject": "string",
    "From": "string",
    "To": "string",
    "Cc": "string",
    "Bcc": "string",
    "ReceivedOn": "string",
    "SubmittedBy": "string",
    "Importance": "string",
    "Body": "string",
    "Attachments": [
        {"@odata.type": "string", "filename": "string", "mimetype": "string", "body": "string"}
    ],
    "ExtraProperties": {
        "@odata.type": "string",
        "directioncode": "boolean",
        "ownerid@odata.bind": "string",
        "queueid@odata.bind": "string",
    },
}


def sample(n: str = "1") -> Activity:
    return Activity(
        message_id=f"<shape-{n}@example.net>",
        subject="Quote 'A' & B",
        body_html="<p>Hi</p>",
        sender=Address("c@example.net", "C"),
        to=(Address("sales@example.com"),),
        cc=(Address("x@example.org"), Address("y@example.org")),
        received_on=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        importance="high",
        attachments=(Attachment("a.txt", "text/plain", b"hello"),),
    )


TARGET = DeliveryTarget(mailbox="sales@example.com", user_id=USER, queue_id=QUEUE)


@pytest.fixture
def adapter(simulator: SimulatorServer) -> Iterator[DataverseAdapter]:
    crm = DataverseAdapter.from_deployment(simulator.deployment())
    yield crm
    crm.close()


def web_api(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if "/api/data/" in (r["path"] or "")]


def test_deliver_sends_check_then_deliver_with_documented_parameters(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    adapter.deliver(sample(), TARGET)

    check, deliver = web_api(simulator.request_log())
    base = f"/org/{simulator.org}/api/data/v9.2/"
    assert check["method"] == "GET"
    assert (
        check["path"]
        == base + "CheckIncomingEmail(MessageId=@p1,Subject=@p2,From=@p3,To=@p4,Cc=@p5,Bcc=@p6)"
    )
    assert [kv.split("=")[0] for kv in check["query"].split("&")] == [f"@p{i}" for i in range(1, 7)]
    assert check["headers"] == ODATA and check["status"] == 200
    assert deliver["method"] == "POST"
    assert deliver["path"] == base + "emails/Microsoft.Dynamics.CRM.DeliverIncomingEmail"
    assert deliver["headers"] == {**ODATA, "Content-Type": "application/json"}
    assert deliver["body"] == DELIVER_SHAPE
    assert deliver["status"] == 200


def test_delivered_fields_arrive_intact(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    adapter.deliver(sample("2"), TARGET)

    (email,) = simulator.emails()
    assert email["subject"] == "Quote 'A' & B" and email["statuscode"] == 4
    assert email["ownerid"] == USER and email["queueid"] == QUEUE
    assert email["submittedby"] == "sales@example.com" and email["prioritycode"] == 2
    assert sorted((p["participationtypemask"], p["addressused"]) for p in email["parties"]) == [
        (1, "c@example.net"),
        (2, "sales@example.com"),
        (3, "x@example.org"),
        (3, "y@example.org"),
    ]
    assert email["attachments"] == [{"filename": "a.txt", "mimetype": "text/plain", "size": 6}]


def test_separate_attachments_are_created_after_the_email(simulator: SimulatorServer) -> None:
    crm = DataverseAdapter.from_deployment(
        simulator.deployment(), DataverseOptions(attachments="separate")
    )
    crm.deliver(sample("3"), TARGET)
    crm.deliver(sample("3"), TARGET)  # a retry adds nothing twice

    posts = [
        r
        for r in web_api(simulator.request_log())
        if r["path"].endswith("activitymimeattachments") and r["method"] == "POST"
    ]
    assert len(posts) == 1
    assert posts[0]["body"] == {
        "@odata.type": "string",
        "filename": "string",
        "mimetype": "string",
        "body": "string",
        "objectid_activitypointer@odata.bind": "string",
        "objecttypecode": "string",
    }
    assert [len(e["attachments"]) for e in simulator.emails()] == [1]


def test_batch_delivery_uses_multipart_parts_with_continue_on_error(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    adapter.deliver_many([(sample(f"b{i}"), TARGET) for i in range(3)])

    log = web_api(simulator.request_log())
    (outer,) = [r for r in log if r["parent"] is None]
    assert outer["path"].endswith("/$batch") and outer["method"] == "POST"
    assert outer["headers"]["Content-Type"].startswith("multipart/mixed; boundary=batch_")
    assert outer["headers"]["Prefer"] == "odata.continue-on-error"
    parts = [r for r in log if r["parent"] == outer["id"]]
    assert [p["part"] for p in parts] == [0, 1, 2]
    assert all(p["body"] == DELIVER_SHAPE and p["status"] == 200 for p in parts)


def test_outgoing_calls_have_documented_shapes(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    simulator.seed_pending(
        1,
        owner_id=USER,
        attachments=[{"filename": "f.txt", "mimetype": "text/plain", "body": "aGk="}],
    )
    (email,) = adapter.list_pending(Owners(user_ids=(USER,)), limit=5)
    adapter.record_attempt(email.email_id, 1)
    adapter.mark_sent(email.email_id, "<out-1@example.com>", "CRM:0001")

    log = [r for r in web_api(simulator.request_log()) if r["parent"] is None]
    calls = [(r["method"], r["path"].rsplit("/v9.2/", 1)[1], r["body"]) for r in log]
    email_path = f"emails({email.email_id})"
    assert calls == [
        ("POST", "BackgroundSendEmail", {"Query": {"@odata.type": "string", "Query": "string"}}),
        ("POST", "$batch", {"multipart": 2}),
        ("PATCH", email_path, {"deliveryattempts": "number"}),
        ("PATCH", email_path, {"messageid": "string"}),
        (
            "POST",
            f"{email_path}/Microsoft.Dynamics.CRM.SendEmail",
            {"IssueSend": "boolean", "TrackingToken": "string"},
        ),
    ]
    assert email.attachments[0].content == b"hi"
    assert [e["statuscode"] for e in simulator.emails()] == [3]


def test_failed_email_gets_status_8_and_a_note(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    (email_id,) = simulator.seed_pending(1, owner_id=USER)
    adapter.mark_failed(email_id, "550 5.1.1 no such user")

    patch = [r for r in web_api(simulator.request_log()) if r["method"] == "PATCH"]
    assert [p["body"] for p in patch] == [{"statecode": "number", "statuscode": "number"}]
    (email,) = simulator.emails()
    assert email["statuscode"] == 8 and email["notes"] == ["550 5.1.1 no such user"]


def test_outbound_created_the_dataverse_way_is_listed(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    email_id = simulator.create_pending("Offer", "buyer@example.org", USER)
    (email,) = adapter.list_pending(Owners(user_ids=(USER,)), limit=5)
    assert email.email_id == email_id and email.subject == "Offer"
    assert [a.email for a in email.to] == ["buyer@example.org"]
    assert email.tracking_token and email.tracking_token.startswith("CRM:")


def test_queue_owner_selects_by_sender_party(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    (mine,) = simulator.seed_pending(1, queue_id=QUEUE)
    simulator.seed_pending(1, owner_id=USER)
    assert [e.email_id for e in adapter.list_pending(Owners(queue_ids=(QUEUE,)), 10)] == [mine]


def test_who_am_i_returns_the_application_user(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    user_id = adapter.who_am_i()
    (call,) = web_api(simulator.request_log())
    assert call["path"].endswith("/WhoAmI") and call["headers"] == ODATA
    assert len(user_id) == 36


def test_a_long_recipient_list_is_checked_inside_a_batch(
    simulator: SimulatorServer, adapter: DataverseAdapter
) -> None:
    crowd = tuple(Address(f"person{i}@example.org") for i in range(150))
    act = Activity(
        "<crowd@example.net>", "Hello all", "<p>x</p>", Address("c@example.net"), to=crowd
    )

    assert adapter.deliver(act, TARGET).activity_id
    assert adapter.deliver(act, TARGET).duplicate

    log = web_api(simulator.request_log())
    checks = [r for r in log if "CheckIncomingEmail(" in r["path"]]
    assert checks and all(r["parent"] is not None and r["method"] == "GET" for r in checks)
    # the To list is cut at its column (500, router.mail.limits): a party per address kept,
    # and the marker that says the list goes on, as an unresolved party
    row = simulator.emails()[0]
    kept = str(row["torecipients"]).removesuffix(";\u2026").split(";")
    assert len(row["parties"]) == 1 + len(kept) + 1 and 10 < len(kept) < 150


def test_the_queue_column_can_be_left_out(simulator: SimulatorServer) -> None:
    options = DataverseOptions(shapes=Shapes(queue_binding=None))
    crm = DataverseAdapter.from_deployment(simulator.deployment(), options)
    crm.deliver(sample("q"), TARGET)

    deliver = next(r for r in web_api(simulator.request_log()) if r["method"] == "POST")
    assert "queueid@odata.bind" not in deliver["body"]["ExtraProperties"]
    assert simulator.emails()[0]["queueid"] is None
