"""A small email world for the Celery end-to-end tests: Dovecot mailboxes, an SMTP sink, a file CRM.

:class:`ClusterWorld` writes the router's XML configuration (audited IMAP instances on the
session's Dovecot, optional SMTP outgoing instances, the SQLite :class:`FileCrm`, state and
broker on a private Redis), fills mailboxes and seeds pending outbound emails, and answers the
questions the tests ask: how many activities, how many duplicates, what is still staged, did
two polls of one mailbox ever overlap.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from router.models import Address, LedgerState, OutboundEmail
from router.state.factory import open_store
from tests.servers.celery_procs import CeleryProcs
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.support.audited import overlaps
from tests.support.filecrm import CrmFile

OWNER = "owner-1"
PASSWORD_VAR = "E2E_IMAP_PASSWORD"


@dataclass
class Instance:
    name: str
    user: str = ""
    enabled: bool = True
    outgoing_port: int | None = None
    password_var: str = PASSWORD_VAR


@dataclass
class ClusterWorld:
    """Configuration, mail and CRM of one end-to-end test."""

    workdir: Path
    dovecot: Dovecot
    broker_url: str
    state_url: str
    procs: CeleryProcs
    poll_ms: int = 700
    refresh_ms: int = 1000
    lease_ms: int = 10_000
    #: Seconds each incoming session stays open (AuditedImapProvider's ``hold``).
    hold: float = 0.0
    instances: list[Instance] = field(default_factory=list)
    sent_subjects: list[str] = field(default_factory=list)
    #: ``<Deployment Name="test">`` of another CRM (the Dataverse simulator); default: FileCrm.
    deployment_xml: str | None = None

    def __post_init__(self) -> None:
        self.config_path = self.workdir / "router.xml"
        self.audit = self.workdir / "audit.db"
        self.crm = CrmFile(self.workdir / "crm.db")
        self.procs.env.update(
            ROUTER_CONFIG=str(self.config_path),
            ROUTER_BROKER_URL=self.broker_url,
            ROUTER_STATE_URL=self.state_url,
            **{PASSWORD_VAR: PASSWORD},
        )

    # -- building the world ---------------------------------------------------------------------
    def add_mailboxes(self, count: int, messages: int) -> list[Instance]:
        """``count`` incoming instances, each with a mailbox holding ``messages`` messages."""
        added = []
        for _ in range(count):
            inst = Instance(f"in{len(self.instances)}", self.dovecot.new_user())
            self.fill(inst, messages)
            self.instances.append(inst)
            added.append(inst)
        return added

    def fill(self, inst: Instance, messages: int, start: int = 0) -> None:
        raws = [message(start + n, sender=f"s{n}@example.org") for n in range(messages)]
        self.dovecot.append_many(inst.user, raws)

    def add_outgoing(self, port: int, pending: int) -> Instance:
        """An SMTP instance for OWNER, with ``pending`` emails waiting in the file CRM."""
        inst = Instance(f"out{len(self.instances)}", outgoing_port=port)
        self.instances.append(inst)
        for n in range(pending):
            subject = f"outbound {inst.name} {n} {uuid.uuid4().hex[:6]}"
            self.crm.add_outbound(
                OutboundEmail(
                    email_id=f"email-{inst.name}-{n}",
                    subject=subject,
                    body_html=f"<p>hello {n}</p>",
                    sender=Address("sales@example.com", "Sales"),
                    to=(Address(f"customer{n}@example.net"),),
                ),
                owner=OWNER,
            )
            self.sent_subjects.append(subject)
        return inst

    def write_config(self) -> None:
        blocks = "".join(self._block(i) for i in self.instances)
        text = f"""<?xml version="1.0" encoding="utf-8"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreadExecution>{self.lease_ms}</MaxThreadExecution>
    <ConfigRefreshPeriod>{self.refresh_ms}</ConfigRefreshPeriod>
    <LogLevel>INFO</LogLevel>
    <StateStore>{self.state_url}</StateStore>
  </SystemConfiguration>
  {self.deployment_xml or self._file_crm_xml()}{blocks}
</Configuration>
"""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)  # atomic, as a config-management tool would do

    def _file_crm_xml(self) -> str:
        return f"""<Deployment Name="test">
    <Adapter>tests.support.filecrm:FileCrm</Adapter>
    <CrmServerUrl>{self.crm.url}</CrmServerUrl>
  </Deployment>"""

    def _block(self, inst: Instance) -> str:
        if inst.outgoing_port is not None:
            return f"""
  <ProviderConfiguration Name="{inst.name}">
    <ProviderClass>smtp</ProviderClass>
    <Direction>Outgoing</Direction>
    <Deployment>test</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{inst.outgoing_port}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailAuthMode>none</EmailAuthMode>
    <EmailAddress>sales@example.com</EmailAddress>
    <UserId>{OWNER}</UserId>
    <PollingPeriod>{self.poll_ms}</PollingPeriod>
    <Enabled>{str(inst.enabled).lower()}</Enabled>
  </ProviderConfiguration>"""
        return f"""
  <ProviderConfiguration Name="{inst.name}">
    <ProviderClass>tests.support.audited:AuditedImapProvider</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>test</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{self.dovecot.ports["imap"]}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{inst.user}</EmailUser>
    <EmailPassword Env="{inst.password_var}"/>
    <EmailAddress>{inst.user}</EmailAddress>
    <PollingPeriod>{self.poll_ms}</PollingPeriod>
    <MaxMessageCount>100</MaxMessageCount>
    <AfterProcessing>seen</AfterProcessing>
    <Enabled>{str(inst.enabled).lower()}</Enabled>
    <Parameters><Parameter Name="audit">{self.audit}</Parameter>
      <Parameter Name="hold">{self.hold}</Parameter></Parameters>
  </ProviderConfiguration>"""

    # -- questions --------------------------------------------------------------------------------
    def activities(self) -> int:
        return self.crm.activity_count()

    def ledger(self, instance: str) -> dict[LedgerState, int]:
        store = open_store(self.state_url, prefix=self.procs.env["ROUTER_KEY_PREFIX"])
        try:
            return store.count_entries(instance)
        finally:
            store.close()

    def last_error(self, instance: str) -> str | None:
        store = open_store(self.state_url, prefix=self.procs.env["ROUTER_KEY_PREFIX"])
        try:
            return store.get_stats(instance).last_error
        finally:
            store.close()

    def incoming(self) -> list[Instance]:
        return [i for i in self.instances if i.outgoing_port is None]

    def overlaps(self) -> list[str]:
        return overlaps(self.audit, unclosed=self.lease_ms / 1000.0)

    def sessions_of(self, instance: str) -> int:
        from tests.support.audited import sessions

        return len(sessions(self.audit).get(instance, []))
