"""Mailboxes loaded from the CRM are visible to the administrator, against real servers.

``email-router run`` (a subprocess) loads three mailboxes from the Dataverse simulator and
delivers their mail from the private Dovecot; it records the list it read in its SQLite state
store. Then, with the runtime stopped: ``email-router status --json`` lists the loaded
instances with their state without a single request to the CRM, ``email-router poll <loaded
name>`` runs a cycle of one of them, and the console (Flask test client) lists and shows them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from router.cli import main
from router.config import Settings
from router.configcheck import load_config
from router.console.app import create_app
from router.console.audit import AuditLog
from router.console.hub import ConsoleHub
from router.console.settings import Credentials
from router.state.sqlite import SqliteStore
from tests.servers.common import wait_for
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.simulator import CLIENT_SECRET, SimulatorServer
from tests.support.crm_mailboxes import add_mailboxes, incoming, owners_by_address, write_config
from tests.unit.console_world import PASSWORD as CONSOLE_PASSWORD
from tests.unit.console_world import USER, sign_in

pytestmark = [pytest.mark.dovecot]


def run_until_delivered(config: Path, simulator: SimulatorServer, count: int) -> None:
    """Run ``email-router run`` until ``count`` emails reached the CRM, then stop it (SIGTERM)."""
    log = config.parent / "router.log"
    env = {**os.environ, "TEST_CRM_SECRET": CLIENT_SECRET}
    env.pop("ROUTER_STATE_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=config.parent,
        )  # fmt: skip
    try:
        assert wait_for(lambda: len(incoming(simulator)) >= count, 60), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_after_a_run_loaded_mailboxes_show_in_status_poll_by_name_and_the_console(
    tmp_path: Path,
    dovecot: Dovecot,
    simulator: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given three CRM mailboxes, each with one message, run until their mail is in the CRM
    monkeypatch.setenv("TEST_CRM_SECRET", CLIENT_SECRET)
    monkeypatch.delenv("ROUTER_STATE_URL", raising=False)
    addresses = [dovecot.new_user() for _ in range(3)]
    add_mailboxes(simulator, addresses)
    for n, address in enumerate(addresses):
        dovecot.append(address, message(n, sender="customer@example.net"))
    config = write_config(tmp_path, simulator, dovecot, {a: PASSWORD for a in addresses})
    run_until_delivered(config, simulator, 3)
    names = [f"{a}.in" for a in addresses]

    # When status runs, the runtime stopped: the CRM is not asked
    before = len(simulator.request_log())
    assert main(["status", "--json", "--config", str(config)]) == 0
    out = capsys.readouterr()
    # Then it lists the loaded mailboxes with their state
    rows = {r["name"]: r for r in json.loads(out.out)}
    assert set(names) <= set(rows), out
    for name in names:
        assert rows[name]["source"] == "crm" and rows[name]["configured"]
        assert rows[name]["processed"] == 1 and rows[name]["last_success"] is not None
        assert rows[name]["backlog"] == 0 and rows[name]["direction"] == "Incoming"
    assert "<LoadMailboxes> of sim: list read from the CRM at" in out.err
    assert "3 instance(s) run from it" in out.err
    assert len(simulator.request_log()) == before
    assert PASSWORD not in out.out + out.err

    # When new mail arrives for one of them, `poll <loaded name>` delivers it for its owner
    dovecot.append(addresses[0], message(7, sender="customer@example.net"))
    assert main(["poll", names[0], "--config", str(config)]) == 0, capsys.readouterr()
    newest = [e for e in incoming(simulator) if e["subject"].endswith(" 7")]
    assert len(newest) == 1
    assert newest[0]["ownerid"] == owners_by_address(simulator)[addresses[0]]

    # And the console lists and shows them
    store = SqliteStore(tmp_path / "state.db")
    hub = ConsoleHub(config, load_config(config), store, Settings(), AuditLog(tmp_path / "a.jsonl"))
    try:
        app = create_app(hub, Credentials(USER, CONSOLE_PASSWORD), b"k" * 32)
        app.config["TESTING"] = True
        client = app.test_client()
        sign_in(client)
        table = client.get("/").get_data(as_text=True)
        assert all(name in table for name in names)
        page = client.get(f"/instances/{names[1]}")
        assert page.status_code == 200 and addresses[1] in page.get_data(as_text=True)
        assert PASSWORD not in table + page.get_data(as_text=True)
    finally:
        hub.close()
