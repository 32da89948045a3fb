"""The console's pages and actions over a memory state store and a memory CRM."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from router.console.hub import ConsoleHub
from router.ledger import InboundLedger, take_poll_lease
from router.models import LedgerState
from tests.unit.console_world import CRM_SECRET, MAIL_SECRET, PASSWORD, build, sign_in

BODY = "The body line nobody may see unless asked"
RAW = (
    "From: Ada <ada@customer.example>\r\nTo: console-inbox@example.org\r\n"
    "Subject: =?utf-8?q?Caf=C3=A9_order?=\r\nMessage-ID: <q1@customer.example>\r\n\r\n"
    f"{BODY}\r\n"
).encode()


World = tuple[FlaskClient, ConsoleHub, str]


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_TEST_MAIL_SECRET", MAIL_SECRET)
    monkeypatch.setenv("CONSOLE_TEST_CRM_SECRET", CRM_SECRET)


@pytest.fixture
def world(tmp_path: Path) -> World:
    app, hub = build(tmp_path)
    client = app.test_client()
    return client, hub, sign_in(client)


def quarantined(hub: ConsoleHub, key: str = "1:1") -> str:
    ledger = InboundLedger(hub.store, "inbox")
    assert ledger.stage(key, RAW)
    assert ledger.quarantine(key, "CrmRejected: the CRM said no")
    return key


def audit(tmp_path_of: ConsoleHub) -> list[dict[str, str]]:
    lines = tmp_path_of.audit.path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_item_page_shows_headers_and_reason_but_never_the_body(world: World) -> None:
    client, hub, _ = world
    key = quarantined(hub)
    page = client.get(f"/quarantine/item?instance=inbox&key={key}").get_data(as_text=True)
    assert "CrmRejected: the CRM said no" in page
    assert "Café order" in page and "&lt;q1@customer.example&gt;" in page
    assert BODY not in page


def test_show_body_returns_the_source_and_is_audited(world: World) -> None:
    client, hub, csrf = world
    key = quarantined(hub)
    page = client.post(
        "/quarantine/body", data={"csrf_token": csrf, "instance": "inbox", "key": key}
    ).get_data(as_text=True)
    assert BODY in page
    entry = audit(hub)[-1]
    assert (entry["user"], entry["action"], entry["key"]) == ("ops", "show body", key)
    assert BODY not in hub.audit.path.read_text()


def test_replay_delivers_a_quarantined_message_and_is_audited(world: World) -> None:
    client, hub, csrf = world
    key = quarantined(hub)
    answer = client.post(
        "/quarantine/replay", data={"csrf_token": csrf, "instance": "inbox", "key": key}
    )
    assert answer.status_code == 302
    entry = hub.store.get_entry("inbox", key)
    assert entry is not None and entry.state is LedgerState.DELIVERED
    assert "delivered" in client.get(answer.headers["Location"]).get_data(as_text=True)
    assert audit(hub)[-1]["action"] == "replay" and audit(hub)[-1]["outcome"] == "ok"


def test_drop_needs_the_confirmation_box(world: World) -> None:
    client, hub, csrf = world
    key = quarantined(hub)
    target = {"csrf_token": csrf, "instance": "inbox", "key": key}
    client.post("/quarantine/drop", data=target)
    assert hub.store.get_entry("inbox", key).state is LedgerState.QUARANTINED  # type: ignore[union-attr]
    client.post("/quarantine/drop", data={**target, "confirm": "yes"})
    assert hub.store.get_entry("inbox", key).state is LedgerState.DONE  # type: ignore[union-attr]
    assert [e["action"] for e in audit(hub)][-1] == "drop"


def test_pause_holds_the_lease_so_no_cycle_starts_and_resume_frees_it(world: World) -> None:
    client, hub, csrf = world
    client.post("/instances/inbox/pause", data={"csrf_token": csrf})
    # Then a worker's cycle cannot take the instance's lease
    assert take_poll_lease(hub.store, "inbox", "worker:1:1", hub.context().config.system) is None
    page = client.get("/?state=paused").get_data(as_text=True)
    assert 'data-instance="inbox"' in page and "paused by an operator" in page
    client.post("/instances/inbox/resume", data={"csrf_token": csrf})
    assert hub.store.get_lease("inbox") is None
    assert [e["action"] for e in audit(hub)][-2:] == ["pause", "resume"]


def test_pause_is_refused_while_a_cycle_holds_the_lease(world: World) -> None:
    client, hub, csrf = world
    lease = take_poll_lease(hub.store, "inbox", "worker:1:1", hub.context().config.system)
    assert lease is not None
    answer = client.post("/instances/inbox/pause", data={"csrf_token": csrf})
    assert "running a cycle" in client.get(answer.headers["Location"]).get_data(as_text=True)
    assert hub.store.get_lease("inbox").holder == "worker:1:1"  # type: ignore[union-attr]
    # And resume never frees a worker's lease
    client.post("/instances/inbox/resume", data={"csrf_token": csrf})
    assert hub.store.get_lease("inbox") is not None


def test_poll_now_runs_one_cycle_in_the_background_and_shows_its_result(world: World) -> None:
    from router.providers.memory import mailbox

    client, hub, csrf = world
    # a Message-ID of its own: the memory CRM of this process may hold the other tests' ones
    mailbox("console-inbox@example.org").append(RAW.replace(b"<q1@", f"<{uuid.uuid4()}@".encode()))
    client.post("/instances/inbox/poll", data={"csrf_token": csrf})
    deadline = time.monotonic() + 10
    while hub.jobs.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    page = client.get("/instances/inbox").get_data(as_text=True)
    assert "staged 1, delivered 1" in page
    assert [(e["action"], e["outcome"]) for e in audit(hub)][-2:] == [
        ("poll now", "started"),
        ("poll now", "ok"),
    ]


def test_no_secret_appears_on_any_page(world: World) -> None:
    client, hub, _ = world
    key = quarantined(hub)
    pages = ["/", "/instances/inbox", "/instances/outbox", "/quarantine"]
    pages.append(f"/quarantine/item?instance=inbox&key={key}")
    text = "".join(client.get(p).get_data(as_text=True) for p in pages)
    assert "*** (Env=CONSOLE_TEST_MAIL_SECRET)" in text
    for secret in (MAIL_SECRET, CRM_SECRET, PASSWORD):
        assert secret not in text


def test_the_instances_table_filters_by_direction_state_and_name(world: World) -> None:
    client, _, _ = world

    def shown(query: str) -> set[str]:
        page = client.get(f"/?{query}").get_data(as_text=True)
        return {n for n in ("inbox", "outbox") if f'data-instance="{n}"' in page}

    assert shown("") == {"inbox", "outbox"}
    assert shown("direction=outgoing") == {"outbox"}
    assert shown("name=INB") == {"inbox"}
    assert shown("state=paused") == set()
    assert 'http-equiv="refresh"' in client.get("/").get_data(as_text=True)


def test_an_unknown_instance_is_404(world: World) -> None:
    client, _, csrf = world
    assert client.get("/instances/nope").status_code == 404
    assert client.post("/instances/nope/pause", data={"csrf_token": csrf}).status_code == 404
