"""The world of the CRM-defined mailbox tests: a configuration with ``<LoadMailboxes>`` and an
IMAP profile on the private Dovecot, and mailbox records seeded in the Dataverse simulator.

Used by tests/integration/test_crm_mailboxes.py (``email-router run``) and
tests/e2e/test_crm_mailboxes_celery.py (the Celery cluster).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.servers.dovecot import Dovecot
from tests.servers.simulator import CLIENT_ID, TENANT, SimulatorServer

CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <SchedulingPeriod>50</SchedulingPeriod>
    <ConfigRefreshPeriod>200</ConfigRefreshPeriod>
    <ConfigUpdatePeriod>{update}</ConfigUpdatePeriod>
    <MaxThreads>16</MaxThreads>
    <StateStore>sqlite:///{db}</StateStore>
  </SystemConfiguration>
  <Deployment Name="sim">
    <CrmServerUrl>{crm_url}</CrmServerUrl>
    <TenantId>{tenant}</TenantId>
    <ClientId>{client_id}</ClientId>
    <ClientSecret Env="TEST_CRM_SECRET"/>
    <Authority>{authority}</Authority>
    <CaBundle>{ca}</CaBundle>
    <LoadMailboxes Profile="dovecot" Direction="Incoming"
                   FailureReasonColumn="new_emailrouterfailurereason"/>
  </Deployment>
  <EmailServerProfile Name="dovecot">
    <IncomingProviderClass>imap</IncomingProviderClass>
    <IncomingServer>127.0.0.1</IncomingServer>
    <IncomingPort>{imap}</IncomingPort>
    <IncomingSecurity>none</IncomingSecurity>
    <CredentialSource>PerMailbox</CredentialSource>
    <MailboxCredentials File="{credentials}"/>
    <PollingPeriod>{poll}</PollingPeriod>
  </EmailServerProfile>
</Configuration>
"""


def write_config(
    tmp_path: Path,
    simulator: SimulatorServer,
    dovecot: Dovecot,
    passwords: dict[str, str],
    update_ms: int = 2000,
    poll_ms: int = 500,
) -> Path:
    """``router.xml`` (and its ``mailboxes.json``) in ``tmp_path``: the simulator's mailboxes
    loaded through one IMAP profile on the private Dovecot (SQLite state unless
    ``ROUTER_STATE_URL`` says otherwise)."""
    credentials = tmp_path / "mailboxes.json"
    credentials.write_text(json.dumps(passwords))
    credentials.chmod(0o600)
    path = tmp_path / "router.xml"
    path.write_text(CONFIG.format(
        update=update_ms, poll=poll_ms, db=tmp_path / "state.db", crm_url=simulator.org_url,
        tenant=TENANT, client_id=CLIENT_ID, authority=simulator.authority, ca=simulator.ca_path,
        imap=dovecot.ports["imap"], credentials=credentials,
    ))  # fmt: skip
    path.chmod(0o600)
    return path


def add_mailboxes(simulator: SimulatorServer, addresses: list[str], **fields: Any) -> list[str]:
    """One user and one mailbox (regarding that user) per address; the mailbox ids."""
    users = simulator.add_rows("systemusers", [
        {"fullname": a.split("@")[0], "internalemailaddress": a} for a in addresses
    ])  # fmt: skip
    return simulator.add_rows("mailboxes", [
        {"name": a, "emailaddress": a, "_regardingobjectid_value": u, **fields}
        for a, u in zip(addresses, users, strict=True)
    ])  # fmt: skip


def owners_by_address(simulator: SimulatorServer) -> dict[str, str]:
    return {m["emailaddress"]: m["_regardingobjectid_value"] for m in simulator.rows("mailboxes")}


def incoming(simulator: SimulatorServer) -> list[dict[str, Any]]:
    return [e for e in simulator.emails() if not e.get("directioncode")]
