"""`email-router run` with a custom provider whose ``_fetch`` raises for one message of 50.

Real parts: the runtime as a subprocess (SQLite state), the Dataverse simulator, and a custom
provider named by dotted path (tests/support/poison_provider.py). Before per-message isolation
the ValueError ended every cycle ("cycle crashed (a bug)"), the messages after it were never
delivered and it was never quarantined.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.servers.common import wait_for
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer
from tests.support.poison_provider import fill

ROOT = Path(__file__).resolve().parents[2]
COUNT, POISONED = 50, 17

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
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
  <ProviderConfiguration Name="in-folder">
    <ProviderClass>tests.support.poison_provider:PoisonedFolderProvider</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailAddress>inbox@example.com</EmailAddress>
    <PollingPeriod>300</PollingPeriod>
    <MaxMessageAttempts>3</MaxMessageAttempts>
    <Parameters>
      <Parameter Name="folder">{folder}</Parameter>
      <Parameter Name="poison">{poison}</Parameter>
    </Parameters>
  </ProviderConfiguration>
</Configuration>
"""


def router_env() -> dict[str, str]:
    env = {**os.environ, "TEST_CRM_SECRET": CLIENT_SECRET, "PYTHONPATH": str(ROOT)}
    env.pop("ROUTER_STATE_URL", None)
    return env


def cli(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", *args, "--config", str(config)],
        capture_output=True, text=True, env=router_env(), cwd=config.parent, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def incoming_subjects(sim: SimulatorServer) -> Counter[str]:
    return Counter(e["subject"] for e in sim.emails() if not e.get("directioncode"))


def test_one_poisoned_message_of_50_is_quarantined_after_3_cycles_and_49_are_delivered(
    tmp_path: Path, simulator: SimulatorServer
) -> None:
    # Given a folder of 50 messages, the 18th of which the provider's _fetch cannot read
    poison = fill(tmp_path / "mail", COUNT, POISONED)
    config = tmp_path / "router.xml"
    config.write_text(
        CONFIG.format(
            db=tmp_path / "state.db",
            crm_url=simulator.org_url,
            tenant=TENANT,
            client_id=CLIENT_ID,
            authority=simulator.authority,
            ca=simulator.ca_path,
            folder=tmp_path / "mail",
            poison=poison,
        )
    )
    log = tmp_path / "run.log"
    # When `email-router run` polls it for a while
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=router_env(), cwd=tmp_path,
        )  # fmt: skip
    try:
        quarantined = wait_for(
            # quarantine list never creates the store: wait for `run` to have made it
            lambda: (config.parent / "state.db").exists()
            and "1 quarantined message(s)" in cli(config, "quarantine", "list"),
            timeout=60, interval=0.5,
        )  # fmt: skip
        assert quarantined, log.read_text()[-3000:]
        wait_for(lambda: sum(incoming_subjects(simulator).values()) >= COUNT - 1, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    # Then the 49 others are activities, once each, and the poisoned one is quarantined
    subjects = incoming_subjects(simulator)
    assert len(subjects) == COUNT - 1 and set(subjects.values()) == {1}
    assert f"message {POISONED}" not in subjects
    listing = cli(config, "quarantine", "list")
    reason = f"fetch failed 3 times: ValueError: cannot decode {poison}: bad header block"
    assert reason in listing, listing
    # And the provider's traceback was logged once, not every cycle
    text = log.read_text()
    assert text.count('raise ValueError(f"cannot decode') == 1, text[-3000:]
    assert "cycle crashed" not in text, text[-3000:]
    print(f"\nrun: {len(subjects)} delivered, 1 quarantined: {reason}")
