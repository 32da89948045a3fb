"""A Celery worker with a custom provider whose ``_fetch`` raises for one message of 50.

Real parts: a private Redis (broker and state), a Celery worker and beat as subprocesses, the
Dataverse simulator through the ``dataverse`` adapter, and a custom provider named by dotted
path (tests/support/poison_provider.py). Before per-message isolation every poll task failed on
the ValueError, nothing after the bad message was delivered and nothing was quarantined.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from router.ledger import InboundLedger
from router.models import LedgerState
from router.state.factory import open_store
from tests.servers.celery_procs import CeleryProcs, wait_until
from tests.servers.redis_server import PrivateRedis
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer
from tests.support.poison_provider import fill

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

COUNT, POISONED = 50, 17
INSTANCE = "in-folder"


def config_xml(sim: SimulatorServer, state_url: str, folder: Path, poison: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Configuration>
  <SystemConfiguration>
    <LogLevel>INFO</LogLevel>
    <StateStore>{state_url}</StateStore>
  </SystemConfiguration>
  <Deployment Name="test">
    <Adapter>dataverse</Adapter>
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <TenantId>{TENANT}</TenantId>
    <ClientId>{CLIENT_ID}</ClientId>
    <ClientSecret Env="E2E_CRM_SECRET"/>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{sim.ca_path}</CaBundle>
  </Deployment>
  <ProviderConfiguration Name="{INSTANCE}">
    <ProviderClass>tests.support.poison_provider:PoisonedFolderProvider</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>test</Deployment>
    <EmailAddress>inbox@example.com</EmailAddress>
    <PollingPeriod>700</PollingPeriod>
    <MaxMessageAttempts>3</MaxMessageAttempts>
    <Parameters>
      <Parameter Name="folder">{folder}</Parameter>
      <Parameter Name="poison">{poison}</Parameter>
    </Parameters>
  </ProviderConfiguration>
</Configuration>
"""


def quarantined(state_url: str, prefix: str) -> dict[str, str]:
    store = open_store(state_url, prefix=prefix)
    try:
        entries = InboundLedger(store, INSTANCE).entries(LedgerState.QUARANTINED)
        return {e.key: e.reason or "" for e in entries}
    finally:
        store.close()


def test_a_worker_quarantines_one_poisoned_message_of_50_after_3_polls_and_delivers_49(
    tmp_path: Path,
    private_redis: PrivateRedis,
    celery_procs: CeleryProcs,
    simulator: SimulatorServer,
) -> None:
    # Given a folder of 50 messages, the 18th of which the provider's _fetch cannot read
    base = private_redis.url.rsplit("/", 1)[0]
    broker_url, state_url = f"{base}/0", f"{base}/1"
    poison = fill(tmp_path / "mail", COUNT, POISONED)
    config = tmp_path / "router.xml"
    config.write_text(config_xml(simulator, state_url, tmp_path / "mail", poison))
    celery_procs.env.update(
        ROUTER_CONFIG=str(config),
        ROUTER_BROKER_URL=broker_url,
        ROUTER_STATE_URL=state_url,
        E2E_CRM_SECRET=CLIENT_SECRET,
    )
    prefix = celery_procs.env["ROUTER_KEY_PREFIX"]
    # When a worker and beat run
    worker = celery_procs.worker("w1")
    celery_procs.beat()
    wait_until(lambda: bool(quarantined(state_url, prefix)), 90, "the quarantine", celery_procs)
    wait_until(lambda: len(simulator.emails()) >= COUNT - 1, 60, "the deliveries", celery_procs)
    # Then the 49 others are activities, once each, and the poisoned one is quarantined
    subjects = Counter(str(e["subject"]) for e in simulator.emails())
    assert len(subjects) == COUNT - 1 and set(subjects.values()) == {1}
    assert f"message {POISONED}" not in subjects
    reason = f"fetch failed 3 times: ValueError: cannot decode {poison}: bad header block"
    assert quarantined(state_url, prefix) == {poison: reason}
    # And the provider's traceback was logged once, not on every poll
    log = worker.log_text()
    assert log.count('raise ValueError(f"cannot decode') == 1, log[-3000:]
    print(f"\ncelery: {len(subjects)} delivered, 1 quarantined: {reason}")
