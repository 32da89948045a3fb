"""``email-router run`` picks up configuration changes without a restart (real servers).

One long-running router process (SQLite state) against the private Dovecot and the Dataverse
simulator; the test edits the configuration file while it runs: an instance is added, the file
is broken (the old configuration keeps running and the log says FILE:LINE), an instance is
removed. SIGTERM ends it with exit code 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers.common import wait_for
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

HEAD = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <SchedulingPeriod>50</SchedulingPeriod>
    <ConfigRefreshPeriod>200</ConfigRefreshPeriod>
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
"""
INSTANCE = """
  <ProviderConfiguration Name="{name}">
    <ProviderClass>{kind}</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{port}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{user}</EmailUser>
    <EmailPassword Env="TEST_MAIL_PASSWORD"/>
    <EmailAddress>{user}</EmailAddress>
    <PollingPeriod>{period}</PollingPeriod>
  </ProviderConfiguration>
"""


def test_instances_come_and_go_with_the_file_and_a_broken_file_changes_nothing(
    tmp_path: Path, dovecot: Dovecot, simulator: SimulatorServer
) -> None:
    user_a, user_b = dovecot.new_user(), dovecot.new_user()
    head = HEAD.format(
        db=tmp_path / "state.db", crm_url=simulator.org_url, tenant=TENANT, client_id=CLIENT_ID,
        authority=simulator.authority, ca=simulator.ca_path,
    )  # fmt: skip

    def instance(name: str, kind: str, user: str, period: str = "200") -> str:
        port = dovecot.ports[kind]
        return INSTANCE.format(name=name, kind=kind, port=port, user=user, period=period)

    def write(*parts: str) -> None:
        # write-then-rename: the router never reads a half-written file
        tmp = tmp_path / "router.xml.new"
        tmp.write_text(head + "".join(parts) + "</Configuration>\n")
        tmp.replace(config)

    def activities() -> int:
        return sum(1 for e in simulator.emails() if not e.get("directioncode"))

    config, log = tmp_path / "router.xml", tmp_path / "router.log"
    write(instance("a", "imap", user_a))
    dovecot.append_many(user_a, [message(n) for n in range(3)])
    env = {**os.environ, "TEST_CRM_SECRET": CLIENT_SECRET, "TEST_MAIL_PASSWORD": PASSWORD}
    env.pop("ROUTER_STATE_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        # Given the router delivering instance a
        assert wait_for(lambda: activities() == 3, 30), log.read_text()
        # When instance b (POP3) is added to the file, it starts without a restart
        dovecot.append_many(user_b, [message(100 + n) for n in range(2)])
        write(instance("a", "imap", user_a), instance("b", "pop3", user_b))
        assert wait_for(lambda: activities() == 5, 30), log.read_text()
        assert "b: added" in log.read_text()
        # When the file is broken, the log says where, and both instances keep running
        write(instance("a", "imap", user_a, period="soon"), instance("b", "pop3", user_b))
        assert wait_for(lambda: f"{config}:" in log.read_text(), 15), log.read_text()
        assert "PollingPeriod" in log.read_text()
        dovecot.append_many(user_a, [message(10 + n) for n in range(2)])
        assert wait_for(lambda: activities() == 7, 30), log.read_text()
        # When instance a is removed, its new mail is left alone
        write(instance("b", "pop3", user_b))
        assert wait_for(lambda: "a: removed from the configuration" in log.read_text(), 15)
        dovecot.append(user_a, message(20))
        time.sleep(1.5)  # several polling periods of the instance that is gone
        assert activities() == 7
        # And SIGTERM stops it cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
