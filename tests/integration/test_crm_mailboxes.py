"""Mailboxes defined in the CRM, against the Dataverse simulator and the private Dovecot.

* Many mailbox records in the simulator, one profile, one Dovecot, ``email-router run`` as a
  subprocess: each mailbox's mail becomes one activity owned by the mailbox's own user; then
  some mailboxes are unapproved and as many added in the simulator, and the running router
  follows within one ``ConfigUpdatePeriod`` + one polling period. ``ER_CRM_MAILBOXES=300``
  runs the issue's size (20 unapproved, 20 added); the default keeps CI quick.
* ``mailboxes load`` reads the records page by page and says why each skipped one is skipped;
  ``mailboxes test`` writes Success / Failure and the reason into the simulator's records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from router.cli import main
from router.crm import dataverse_mailboxes
from tests.servers.common import wait_for
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.simulator import CLIENT_SECRET, SimulatorServer
from tests.support.crm_mailboxes import add_mailboxes, incoming, owners_by_address, write_config

pytestmark = [pytest.mark.dovecot]

#: Mailboxes of the first test (the issue's 300 with ER_CRM_MAILBOXES=300).
MAILBOXES = int(os.environ.get("ER_CRM_MAILBOXES", "30"))
CHURN = max(3, MAILBOXES // 15)  # 20 of 300 unapproved, and as many added
UPDATE_MS = 2000
POLL_MS = max(500, MAILBOXES * 4)  # 300 mailboxes: 1.2 s, so Dovecot's logins stay modest


def test_each_crm_mailbox_gets_its_own_mail_once_and_run_follows_approval_changes(
    tmp_path: Path, dovecot: Dovecot, simulator: SimulatorServer
) -> None:
    # Given MAILBOXES approved mailbox records, each with one message waiting in Dovecot
    addresses = [dovecot.new_user() for _ in range(MAILBOXES + CHURN)]
    first, later = addresses[:MAILBOXES], addresses[MAILBOXES:]
    ids = dict(zip(first, add_mailboxes(simulator, first), strict=True))
    for n, address in enumerate(addresses):
        dovecot.append(address, message(n, sender="customer@example.net"))
    passwords = {a: PASSWORD for a in addresses}
    config = write_config(tmp_path, simulator, dovecot, passwords, UPDATE_MS, POLL_MS)
    log = tmp_path / "router.log"
    env = {**os.environ, "TEST_CRM_SECRET": CLIENT_SECRET}
    env.pop("ROUTER_STATE_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        # When the router runs, each mailbox's message lands once, for the mailbox's own user
        started = time.monotonic()
        assert wait_for(lambda: len(incoming(simulator)) >= MAILBOXES, 60), log.read_text()[-3000:]
        first_round = time.monotonic() - started
        owners = owners_by_address(simulator)
        delivered = incoming(simulator)
        assert len(delivered) == MAILBOXES
        for email in delivered:
            n = int(email["subject"].split()[-1])
            assert email["ownerid"] == owners[addresses[n]], email["subject"]
        # When CHURN mailboxes are unapproved and CHURN new ones added in the CRM
        gone = first[:CHURN]
        changed = time.monotonic()
        for address in gone:
            simulator.change_row("mailboxes", ids[address], emailrouteraccessapproval=2)
        add_mailboxes(simulator, later)
        # Then within one ConfigUpdatePeriod + one polling period (+ CI slack) the new ones run
        limit = (UPDATE_MS + POLL_MS) / 1000 + 8
        total = MAILBOXES + CHURN
        assert wait_for(lambda: len(incoming(simulator)) >= total, limit), log.read_text()[-3000:]
        followed = time.monotonic() - changed
        # and the unapproved ones stopped: mail arriving now stays where it is
        removed = "removed from the configuration"
        assert wait_for(lambda: log.read_text().count(removed) >= CHURN, limit), log.read_text()
        time.sleep(POLL_MS / 1000)  # a cycle running at the removal may still list new mail
        for n, address in enumerate(gone):
            dovecot.append(address, message(10_000 + n))
        time.sleep(3 * POLL_MS / 1000)
        final = incoming(simulator)
        assert len(final) == total, [e["subject"] for e in final if "1000" in e["subject"]]
        assert Counter(e["messageid"] for e in final).most_common(1)[0][1] == 1
        owners = owners_by_address(simulator)
        for email in final:
            n = int(email["subject"].split()[-1])
            assert email["ownerid"] == owners[addresses[n]]
        # When one of them is approved again, it resumes from its kept state: only the new mail
        simulator.change_row("mailboxes", ids[gone[0]], emailrouteraccessapproval=1)
        assert wait_for(lambda: len(incoming(simulator)) >= total + 1, limit), log.read_text()
        time.sleep(2 * POLL_MS / 1000)
        again = incoming(simulator)
        assert len(again) == total + 1
        assert Counter(e["messageid"] for e in again).most_common(1)[0][1] == 1
        print(f"\n{MAILBOXES} CRM mailboxes: first round {first_round:.1f}s; {CHURN} unapproved "
              f"+ {CHURN} added followed in {followed:.1f}s (limit {limit:.1f}s)")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_mailboxes_load_reads_every_page_and_says_why_a_record_is_skipped(
    tmp_path: Path,
    dovecot: Dovecot,
    simulator: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TEST_CRM_SECRET", CLIENT_SECRET)
    monkeypatch.setattr(dataverse_mailboxes, "PAGE_SIZE", 2)
    running = [dovecot.new_user() for _ in range(3)]
    add_mailboxes(simulator, running[:2])
    (queue,) = simulator.add_rows("queues", [{"name": "Support", "emailaddress": running[2]}])
    simulator.add_rows("mailboxes", [{"emailaddress": running[2], "regardingobjecttype": "queue",
                                      "_regardingobjectid_value": queue}])  # fmt: skip
    add_mailboxes(simulator, ["off@example.com"], statecode=1)
    add_mailboxes(simulator, ["pending@example.com"], emailrouteraccessapproval=2)
    add_mailboxes(simulator, ["outlook@example.com"], incomingemaildeliverymethod=1)
    add_mailboxes(simulator, ["nocreds@example.com"])
    config = write_config(tmp_path, simulator, dovecot, {a: PASSWORD for a in running})
    assert main(["mailboxes", "load", "--json", "--config", str(config)]) == 0
    by_address = {d["address"]: d for d in json.loads(capsys.readouterr().out)}
    assert len(by_address) == 7
    assert all(by_address[a]["runs"] for a in running)
    assert (by_address[running[2]]["owner_type"], by_address[running[2]]["owner_id"]) == (
        "queue", queue,
    )  # fmt: skip
    assert by_address[running[0]]["owner_type"] == "systemuser"
    assert by_address["off@example.com"]["skipped"] == "inactive"
    assert by_address["pending@example.com"]["skipped"].startswith("not approved")
    assert by_address["outlook@example.com"]["skipped"].startswith("other Incoming delivery")
    assert by_address["nocreds@example.com"]["skipped"].startswith("no credentials")
    pages = [r for r in simulator.request_log() if r["path"].endswith("/mailboxes")]
    assert len(pages) == 4  # 7 records, 2 a page


def test_mailboxes_test_writes_success_and_failure_with_the_reason_into_the_records(
    tmp_path: Path,
    dovecot: Dovecot,
    simulator: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TEST_CRM_SECRET", CLIENT_SECRET)
    good, bad = dovecot.new_user(), dovecot.new_user()
    good_id, bad_id, none_id = add_mailboxes(simulator, [good, bad, "nocreds@example.com"])
    config = write_config(tmp_path, simulator, dovecot, {good: PASSWORD, bad: "wrong-password"})
    assert main(["mailboxes", "test", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"{good}.in: ok" in out and f"{bad}.in: FAILED" in out
    assert "0 of" not in out and "1 of 3 mailbox test(s) passed" in out
    assert "wrong-password" not in out
    rows = {r["mailboxid"]: r for r in simulator.rows("mailboxes")}
    assert rows[good_id]["incomingemailstatus"] == 1
    assert rows[good_id]["testmailboxaccesscompletedon"]
    assert rows[bad_id]["incomingemailstatus"] == 2
    assert "AUTHENTICATIONFAILED" in rows[bad_id]["new_emailrouterfailurereason"]
    assert rows[none_id]["incomingemailstatus"] == 2
    assert rows[none_id]["new_emailrouterfailurereason"].startswith("no credentials")
    assert rows[good_id]["outgoingemailstatus"] == 0  # Direction Incoming: outgoing not tested
    # and one mailbox named on the command line is tested alone
    assert main(["mailboxes", "test", good, "--json", "--config", str(config)]) == 0
    assert [r["instance"] for r in json.loads(capsys.readouterr().out)] == [f"{good}.in"]
