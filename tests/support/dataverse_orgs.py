"""XML blocks and checks for the end-to-end tests that run organisations on the Dataverse simulator.

Use these when a test writes a configuration of several Deployments (each an organisation of the
session's simulator) with plain-IMAP/POP3 and SMTP instances on the test servers: secrets come
from the environment (``E2E_CRM_SECRET``, ``E2E_MAIL_PASSWORD``), never inline.
"""

from __future__ import annotations

from collections import Counter

from tests.servers.simulator import CLIENT_ID, TENANT, SimulatorServer

SENT, RECEIVED = 3, 4  # Dataverse email statuscode values


def deployment(org: str, sim: SimulatorServer) -> str:
    """A ``<Deployment>`` named ``org`` for the simulator organisation ``sim``."""
    return f"""
  <Deployment Name="{org}">
    <Adapter>dataverse</Adapter>
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <TenantId>{TENANT}</TenantId>
    <ClientId>{CLIENT_ID}</ClientId>
    <ClientSecret Env="E2E_CRM_SECRET"/>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{sim.ca_path}</CaBundle>
  </Deployment>"""


def incoming(name: str, kind: str, org: str, user: str, port: int) -> str:
    """An IMAP (marks read) or POP3 (deletes) instance on a plain local port."""
    after = "seen" if kind == "imap" else "delete"
    return f"""
  <ProviderConfiguration Name="{name}">
    <ProviderClass>{kind}</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>{org}</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{port}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{user}</EmailUser>
    <EmailPassword Env="E2E_MAIL_PASSWORD"/>
    <EmailAddress>{user}</EmailAddress>
    <PollingPeriod>700</PollingPeriod>
    <AfterProcessing>{after}</AfterProcessing>
  </ProviderConfiguration>"""


def smtp_outgoing(name: str, org: str, port: int) -> str:
    """An SMTP instance sending the emails of ``owner-<org>`` to a local sink."""
    return f"""
  <ProviderConfiguration Name="{name}">
    <ProviderClass>smtp</ProviderClass>
    <Direction>Outgoing</Direction>
    <Deployment>{org}</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{port}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailAuthMode>none</EmailAuthMode>
    <EmailAddress>{org}@example.com</EmailAddress>
    <UserId>owner-{org}</UserId>
    <PollingPeriod>700</PollingPeriod>
  </ProviderConfiguration>"""


def received(sim: SimulatorServer) -> Counter[str]:
    """How many Received activities ``sim`` holds per Message-ID."""
    return Counter(str(e["messageid"]) for e in sim.emails() if e["statuscode"] == RECEIVED)


def message_id(raw: bytes) -> str:
    """The Message-ID of a raw test message (CRLF or LF line ends)."""
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("message without Message-ID")
