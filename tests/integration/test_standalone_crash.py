"""`email-router run` SIGKILLed mid-work and started again: nothing lost, nothing doubled.

An outgoing email the kill cuts off between recording "submitted" and the final dot leaving is
set aside as ambiguous (Failed, "may or may not have been sent"), never resent and never marked
Sent: at most one, since there is one kill.

Real parts: the private Dovecot (an IMAP and a POP3 mailbox), the Dataverse simulator, an
aiosmtpd sink, SQLite state, and the runtime as a subprocess. Small batches (MaxMessageCount)
and a little CRM latency make the work span several cycles, so the kill lands mid-stream.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.servers.common import wait_for
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer

ROOT = Path(__file__).resolve().parents[2]
OWNER = "00000000-0000-0000-0000-00000000c0de"
IMAP_COUNT, POP3_COUNT, OUTBOUND_COUNT = 60, 30, 12

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreads>4</MaxThreads>
    <MaxThreadExecution>20000</MaxThreadExecution>
    <SchedulingPeriod>100</SchedulingPeriod>
    <StateStore>sqlite:///{db}</StateStore>
  </SystemConfiguration>
  <Deployment Name="sim">
    <CrmServerUrl>{crm_url}</CrmServerUrl>
    <TenantId>{tenant}</TenantId>
    <ClientId>{client_id}</ClientId>
    <ClientSecret Env="TEST_CRM_SECRET"/>
    <Authority>{authority}</Authority>
    <CaBundle>{ca}</CaBundle>
  </Deployment>
  <ProviderConfiguration Name="in-imap">
    <ProviderClass>imap</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{imap}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{imap_user}</EmailUser>
    <EmailPassword Env="TEST_MAIL_PASSWORD"/>
    <EmailAddress>{imap_user}</EmailAddress>
    <PollingPeriod>200</PollingPeriod>
    <MaxMessageCount>7</MaxMessageCount>
    <AfterProcessing>seen</AfterProcessing>
  </ProviderConfiguration>
  <ProviderConfiguration Name="in-pop3">
    <ProviderClass>pop3</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{pop3}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{pop3_user}</EmailUser>
    <EmailPassword Env="TEST_MAIL_PASSWORD"/>
    <EmailAddress>{pop3_user}</EmailAddress>
    <PollingPeriod>200</PollingPeriod>
    <MaxMessageCount>4</MaxMessageCount>
    <AfterProcessing>delete</AfterProcessing>
  </ProviderConfiguration>
  <ProviderConfiguration Name="out-smtp">
    <ProviderClass>smtp</ProviderClass>
    <Direction>Outgoing</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{smtp}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailAuthMode>none</EmailAuthMode>
    <UserId>{owner}</UserId>
    <PollingPeriod>200</PollingPeriod>
    <MaxMessageCount>3</MaxMessageCount>
  </ProviderConfiguration>
</Configuration>
"""


class Router:
    """``email-router run`` as a subprocess writing its log to a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "TEST_CRM_SECRET": CLIENT_SECRET,
            "TEST_MAIL_PASSWORD": PASSWORD,
            "PYTHONPATH": str(ROOT),
        }
        env.pop("ROUTER_STATE_URL", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.config.parent,
            )  # fmt: skip

    def signal(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def diagnose(router: Router, sim: SimulatorServer) -> str:
    """The router's log tail and the simulator's last requests, for a failed wait."""
    requests = [
        f"{r.get('id')} {r.get('method')} {r.get('path')} -> {r.get('status')}"
        for r in sim.request_log()[-15:]
    ]
    return router.log.read_text()[-3000:] + "\nlast CRM requests:\n" + "\n".join(requests)


def incoming_subjects(sim: SimulatorServer) -> Counter[str]:
    return Counter(e["subject"] for e in sim.emails() if not e.get("directioncode"))


def sent_status(sim: SimulatorServer) -> list[Any]:
    return [e["statuscode"] for e in sim.emails() if e.get("directioncode")]


def outbound_subjects(sim: SimulatorServer, statuscode: int) -> set[str]:
    return {e["subject"] for e in sim.emails() if e.get("directioncode") and
            e["statuscode"] == statuscode}  # fmt: skip


def test_sigkill_and_restart_lose_and_duplicate_nothing(
    tmp_path: Path,
    dovecot: Dovecot,
    simulator: SimulatorServer,
    smtp_server: Any,
) -> None:
    # Given an IMAP and a POP3 mailbox with mail, pending CRM emails, and a slowish CRM
    imap_user, pop3_user = dovecot.new_user(), dovecot.new_user()
    dovecot.append_many(imap_user, [message(n) for n in range(IMAP_COUNT)])
    dovecot.append_many(pop3_user, [message(1000 + n) for n in range(POP3_COUNT)])
    simulator.seed_pending(OUTBOUND_COUNT, owner_id=OWNER, to=["customer@example.net"])
    simulator.set_faults(latency_ms=15)
    sink = smtp_server()
    config = tmp_path / "router.xml"
    config.write_text(CONFIG.format(
        db=tmp_path / "state.db", crm_url=simulator.org_url, tenant=TENANT, client_id=CLIENT_ID,
        authority=simulator.authority, ca=simulator.ca_path, imap=dovecot.ports["imap"],
        pop3=dovecot.ports["pop3"], smtp=sink.port, imap_user=imap_user, pop3_user=pop3_user,
        owner=OWNER,
    ))  # fmt: skip
    router = Router(config, tmp_path / "router.log")
    total = IMAP_COUNT + POP3_COUNT
    try:
        # When the router is killed with SIGKILL while it is part-way through the mail
        router.start()
        assert wait_for(lambda: sum(incoming_subjects(simulator).values()) >= 10, 60, 0.1), (
            router.log.read_text()
        )
        assert router.signal(signal.SIGKILL) == -signal.SIGKILL
        done_at_kill = sum(incoming_subjects(simulator).values())
        # And started again on the same state
        router.start()

        def finished() -> bool:
            return (
                sum(incoming_subjects(simulator).values()) >= total
                and sent_status(simulator).count(6) == 0  # none left Pending Send
            )

        assert wait_for(finished, 120, 0.25), diagnose(router, simulator)
        time.sleep(1.0)  # a few more cycles: anything doubled would show now
        assert router.signal(signal.SIGTERM) == 0
    finally:
        router.stop()
    # Then every message is exactly one activity
    subjects = incoming_subjects(simulator)
    assert done_at_kill < total, "the kill came too late to prove anything"
    assert set(subjects) == {f"message {n}" for n in range(IMAP_COUNT)} | {
        f"message {1000 + n}" for n in range(POP3_COUNT)
    }
    assert max(subjects.values()) == 1
    # And no pending email went out twice, every one marked Sent went out, and the rest (at
    # most the one the kill cut off mid-hand-over) is Failed as ambiguous, not lost
    received = Counter(r.message()["Subject"] for r in sink.messages)
    assert max(received.values()) == 1, f"an email was sent twice: {received}"
    sent, failed = outbound_subjects(simulator, 3), outbound_subjects(simulator, 8)
    assert sent <= set(received), f"marked Sent, never sent: {sent - set(received)}"
    assert len(sent) + len(failed) == OUTBOUND_COUNT and len(failed) <= 1, sent_status(simulator)
    # And the mailboxes were post-processed: IMAP messages seen, POP3 mailbox emptied
    assert all("\\Seen" in dovecot.flags(imap_user, uid) for uid in dovecot.list_uids(imap_user))
    assert dovecot.list_uids(pop3_user) == []
