"""The operations console against a real world, for the browser test and the README's screenshots.

Run ``python -m tests.e2e.console_screenshots [OUT_DIR]`` (default ``docs/console``) to write a
PNG of each console page: it starts the Dataverse simulator, writes a configuration (SQLite
state, memory mailboxes, the simulator as CRM), seeds a few messages - delivered ones, a
quarantined one - starts ``email-router console`` as a subprocess and drives Debian's
``chromium`` with Playwright (no ``playwright install``).

:func:`console_world` and :func:`browser` are what ``tests/e2e/test_console_browser.py`` uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

from router.ledger import InboundLedger, take_pause_lease
from router.state.factory import open_store
from router.testing.servers import wait_for
from router.testing.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "operator", "console-pw-4c1d8e"
MAIL_SECRET = "mailbox-pw-93b1f0"
CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <StateStore>sqlite:///{db}</StateStore>
  </SystemConfiguration>
  <Deployment Name="contoso">
    <CrmServerUrl>{crm_url}</CrmServerUrl>
    <TenantId>{tenant}</TenantId>
    <ClientId>{client_id}</ClientId>
    <ClientSecret Env="CONSOLE_E2E_CRM_SECRET"/>
    <Authority>{authority}</Authority>
    <CaBundle>{ca}</CaBundle>
  </Deployment>
  <ProviderConfiguration Name="sales-inbox">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>contoso</Deployment>
    <EmailAddress>sales-{run}@contoso.example</EmailAddress>
    <EmailUser>sales@contoso.example</EmailUser>
    <EmailPassword Env="CONSOLE_E2E_MAIL_SECRET"/>
    <PollingPeriod>60000</PollingPeriod>
  </ProviderConfiguration>
  <ProviderConfiguration Name="support-inbox">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>contoso</Deployment>
    <EmailAddress>support-{run}@contoso.example</EmailAddress>
  </ProviderConfiguration>
  <ProviderConfiguration Name="outbound-smtp">
    <ProviderClass>memory-out</ProviderClass>
    <Direction>Outgoing</Direction>
    <Deployment>contoso</Deployment>
    <EmailAddress>noreply-{run}@contoso.example</EmailAddress>
  </ProviderConfiguration>
</Configuration>
"""
#: Every secret of the world: none may appear on any page.
SECRETS = (PASSWORD, MAIL_SECRET, CLIENT_SECRET)


def message(subject: str, body: str = "Hello from the console test") -> bytes:
    """A small RFC 5322 message with a unique Message-ID."""
    return (
        f"From: Ada Lovelace <ada@customer.example>\r\nTo: sales@contoso.example\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4()}@customer.example>\r\n"
        f"Date: Mon, 07 Dec 2026 09:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


@dataclass
class ConsoleWorld:
    """A console process over a seeded state store, and how to reach it."""

    url: str
    workdir: Path
    state_url: str
    quarantined_key: str
    audit: Path


def write_config(workdir: Path, sim: SimulatorServer) -> Path:
    """The configuration file of the world (SQLite state in ``workdir``)."""
    path = workdir / "router.xml"
    path.write_text(
        CONFIG.format(
            db=workdir / "state.db",
            crm_url=sim.org_url,
            tenant=TENANT,
            client_id=CLIENT_ID,
            authority=sim.authority,
            ca=sim.ca_path,
            run=uuid.uuid4().hex[:8],
        )
    )
    return path


def seed(state_url: str, body: str) -> str:
    """Counters and ledger entries of a world that has been running; returns the quarantined key."""
    store = open_store(state_url)
    try:
        sales = InboundLedger(store, "sales-inbox")
        for n in range(1, 4):
            sales.stage(f"1:{n}", message(f"Order {n}"))
            sales.delivered(f"1:{n}", f"<seed-{n}@customer.example>", f"act-{n}", duplicate=False)
        sales.stage("1:4", message("Invoice with a broken attachment", body))
        sales.quarantine("1:4", "CrmRejected: 400 attachment too large for the organisation")
        store.record_poll("sales-inbox", processed=3)
        store.record_poll("support-inbox", error="ProviderUnavailable: connection refused")
        store.record_poll("outbound-smtp", processed=0)
        take_pause_lease(store, "outbound-smtp", 3600)  # as the console's Pause button does
    finally:
        store.close()
    return "1:4"


@contextlib.contextmanager
def console_process(config: Path, workdir: Path, audit: Path) -> Iterator[str]:
    """``email-router console`` on a free port until the block ends; yields its URL."""
    out = workdir / "console.log"
    env = {
        **os.environ,
        "ROUTER_CONSOLE_USER": USER,
        "ROUTER_CONSOLE_PASSWORD": PASSWORD,
        "CONSOLE_E2E_MAIL_SECRET": MAIL_SECRET,
        "CONSOLE_E2E_CRM_SECRET": CLIENT_SECRET,
    }
    env.pop("ROUTER_STATE_URL", None)
    command = [sys.executable, "-m", "router.cli", "console", "--config", str(config)]
    command += ["--port", "0", "--audit-log", str(audit)]
    with out.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        found: list[str] = []

        def listening() -> bool:
            found[:] = re.findall(r"listening on (http://\S+?)/?$", out.read_text(), re.M)
            return bool(found) or proc.poll() is not None

        wait_for(listening, timeout=30)
        if not found:
            raise RuntimeError(f"the console did not start:\n{out.read_text()}")
        yield found[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def console_world(workdir: Path, sim: SimulatorServer, body: str) -> Iterator[ConsoleWorld]:
    """Configuration, seeded state and a running console."""
    config = write_config(workdir, sim)
    state_url = f"sqlite:///{workdir / 'state.db'}"
    key = seed(state_url, body)
    audit = workdir / "audit.jsonl"
    with console_process(config, workdir, audit) as url:
        yield ConsoleWorld(url, workdir, state_url, key, audit)


def chromium() -> str | None:
    """Debian's chromium, if installed."""
    return shutil.which("chromium")


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    """Headless system chromium driven by Playwright (no downloaded browser)."""
    with sync_playwright() as p:
        instance = p.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox"], headless=True
        )
        try:
            yield instance
        finally:
            instance.close()


def sign_in(page: Page, url: str, password: str = PASSWORD) -> None:
    """Fill the sign-in form (the page may be any page: it redirects to the form)."""
    page.goto(url)
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def press_test_access(page: Page) -> str:
    """Press Test Access on an instance page; the job's output once the page shows it."""
    page.click("button:has-text('Test Access')")
    # the page refreshes itself every few seconds while a job runs
    page.wait_for_selector("tr.job pre", timeout=60_000)
    return page.inner_text("tr.job pre")


def screenshots(out: Path) -> list[Path]:
    """A PNG of each console page in ``out``."""
    from router.testing.simulator import start_simulator

    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_simulator(Path(tmp)) as sim,
        console_world(Path(tmp), sim, "Please find the invoice attached.") as world,
        browser() as b,
    ):
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto(world.url)
        shots.append(_shot(page, out / "login.png"))
        sign_in(page, world.url)
        shots.append(_shot(page, out / "instances.png"))
        page.goto(f"{world.url}/instances/sales-inbox")
        press_test_access(page)
        shots.append(_shot(page, out / "instance.png"))
        page.goto(f"{world.url}/quarantine")
        shots.append(_shot(page, out / "quarantine.png"))
        page.goto(f"{world.url}/quarantine/item?instance=sales-inbox&key={world.quarantined_key}")
        shots.append(_shot(page, out / "quarantine-item.png"))
    return shots


def _shot(page: Page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "console"
    for shot in screenshots(target):
        print(shot)
