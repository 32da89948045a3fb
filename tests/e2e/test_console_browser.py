"""The operations console in a real browser: Debian's chromium driven by Playwright.

``email-router console`` runs as a subprocess over a SQLite state store seeded with a
quarantined message, with the Dataverse simulator as the CRM. The browser signs in, sees the
instances, opens one, replays the quarantined message from the quarantine page and sees it
delivered (and the simulator holds the activity). Also: a wrong password is refused, a POST
without the CSRF token gets 403, and no secret appears on any page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from router.models import LedgerState
from router.state.factory import open_store
from tests.e2e.console_screenshots import (
    SECRETS,
    ConsoleWorld,
    browser,
    chromium,
    console_world,
    press_test_access,
    sign_in,
)
from tests.servers.common import require
from tests.servers.simulator import SimulatorServer

BODY = "Body text that must stay in the store"


@pytest.fixture(scope="module")
def chrome() -> Iterator[Browser]:
    require(chromium() is not None, "chromium is not installed (apt-get install chromium)")
    with browser() as instance:
        yield instance


@pytest.fixture
def world(tmp_path: Path, simulator: SimulatorServer) -> Iterator[ConsoleWorld]:
    with console_world(tmp_path, simulator, BODY) as running:
        yield running


def visit(page: Page, url: str, seen: list[str]) -> None:
    page.goto(url)
    seen.append(page.content())


def test_an_operator_signs_in_opens_an_instance_and_replays_a_quarantined_message(
    chrome: Browser, world: ConsoleWorld, simulator: SimulatorServer
) -> None:
    page, seen = chrome.new_page(), []
    # Given a signed-in operator
    sign_in(page, world.url)
    seen.append(page.content())
    rows = page.locator("#instances tbody tr")
    assert rows.count() == 3
    table = page.inner_text("#instances")
    assert "ProviderUnavailable: connection refused" in table
    assert "paused by an operator" in table
    # When they open an instance
    page.click("a[href='/instances/sales-inbox']")
    seen.append(page.content())
    assert page.inner_text("h1").startswith("sales-inbox")
    assert page.locator("#chart svg").count() == 1
    # And go to its quarantined message and replay it
    page.click(".grid a[href^='/quarantine']")
    seen.append(page.content())
    row = page.locator(f"#quarantine tr[data-key='{world.quarantined_key}']")
    assert "attachment too large" in row.inner_text()
    row.locator("button", has_text="Replay").click()
    seen.append(page.content())
    # Then the page says it was delivered, the ledger agrees and the CRM has the activity
    assert "delivered" in page.inner_text(".flash")
    assert "nothing quarantined" in page.inner_text("#quarantine")
    store = open_store(world.state_url, create=False)
    try:
        entry = store.get_entry("sales-inbox", world.quarantined_key)
    finally:
        store.close()
    assert entry is not None and entry.state is LedgerState.DELIVERED
    subjects = [e.get("subject") for e in simulator.emails()]
    assert "Invoice with a broken attachment" in subjects
    # And the other pages show no secret either
    for path in ("/", "/quarantine", "/instances/outbound-smtp", "/instances/support-inbox"):
        visit(page, world.url + path, seen)
    for html in seen:
        for secret in SECRETS:
            assert secret not in html
        assert BODY not in html
    actions = [json.loads(line)["action"] for line in world.audit.read_text().splitlines()]
    assert actions == ["login", "replay"]


def test_a_wrong_password_is_refused(chrome: Browser, world: ConsoleWorld) -> None:
    page = chrome.new_page()
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        sign_in(page, world.url, password="not-the-password")
    assert answer.value.status == 401
    assert "wrong user name or password" in page.inner_text("[role=alert]")
    page.goto(world.url)
    assert page.url.startswith(f"{world.url}/login")


def test_a_post_without_the_csrf_token_is_refused(chrome: Browser, world: ConsoleWorld) -> None:
    page = chrome.new_page()
    sign_in(page, world.url)
    # the session cookie goes along (same browser context), the token does not
    answer = page.request.post(
        f"{world.url}/quarantine/replay",
        form={"instance": "sales-inbox", "key": world.quarantined_key},
    )
    assert answer.status == 403
    store = open_store(world.state_url, create=False)
    try:
        entry = store.get_entry("sales-inbox", world.quarantined_key)
    finally:
        store.close()
    assert entry is not None and entry.state is LedgerState.QUARANTINED


def test_the_test_access_button_shows_what_the_command_found(
    chrome: Browser, world: ConsoleWorld
) -> None:
    page = chrome.new_page()
    sign_in(page, world.url)
    page.goto(f"{world.url}/instances/sales-inbox")
    output = press_test_access(page)
    assert "token: ok" in output and "WhoAmI: ok" in output  # the Deployment
    assert "Instance sales-inbox" in output and "connect: ok" in output  # its mailbox
    assert "ok" in page.inner_text("tr.job strong")
    actions = [json.loads(line) for line in world.audit.read_text().splitlines()]
    assert [(a["action"], a["outcome"]) for a in actions][-2:] == [
        ("test access", "started"),
        ("test access", "ok"),
    ]
