"""Probes for the "no bodies and no secrets in logs" tests (CLI commands and Celery workers).

:class:`Secrets` holds distinctive values (a fresh uuid each) that must never reach a log line,
and finds them - or an unmasked bearer token / ``access_token`` - in captured logs. The
``*_xml`` helpers write the pieces of a router configuration that reads those values from the
environment (``NOLOG_MAIL_PASSWORD``, ``NOLOG_CLIENT_SECRET``), so they are never in the file.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from tests.servers.dovecot import Dovecot
from tests.servers.simulator import CLIENT_ID, TENANT, SimulatorServer

#: A bearer token or Basic credentials that were not masked.
UNMASKED_AUTH = re.compile(r"\b(Bearer|Basic)\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}")
UNMASKED_TOKEN = re.compile(r"access_token[\"']?\s*[:=]\s*[\"']?(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}")
OWNER_ID = "5e0d1a8c-0000-4000-8000-00000000d0d0"


@dataclass(frozen=True)
class Secrets:
    """Distinctive values that must never reach a log line."""

    body: str
    mail_password: str
    client_secret: str

    @classmethod
    def fresh(cls) -> Secrets:
        tag = uuid.uuid4().hex
        return cls(f"BODYMARK{tag[:12]}", f"pw-{tag[12:24]}", f"cs-{tag[20:]}")

    def env(self) -> dict[str, str]:
        """The environment the configuration written by :func:`config_xml` reads."""
        return {
            "NOLOG_MAIL_PASSWORD": self.mail_password,
            "NOLOG_CLIENT_SECRET": self.client_secret,
        }

    def leaked_in(self, logs: str) -> list[str]:
        """Names of the secrets found in ``logs``, and the start of any unmasked token."""
        found = [name for name, value in vars(self).items() if value in logs]
        found += ["body in capitals"] if self.body.upper() in logs else []
        found += [m.group(0)[:20] for m in UNMASKED_AUTH.finditer(logs)]
        return found + [m.group(0)[:20] for m in UNMASKED_TOKEN.finditer(logs)]


def config_xml(state_url: str, sim: SimulatorServer, instance: str, poll_ms: int = 60_000) -> str:
    """A whole configuration: one Deployment on the simulator and ``instance``."""
    return f"""<Configuration>
  <SystemConfiguration><StateStore>{state_url}</StateStore></SystemConfiguration>
  <Deployment Name="crm">
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <TenantId>{TENANT}</TenantId>
    <ClientId>{CLIENT_ID}</ClientId>
    <ClientSecret Env="NOLOG_CLIENT_SECRET"/>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{sim.ca_path}</CaBundle>
  </Deployment>
  {instance.replace("{poll_ms}", str(poll_ms))}
</Configuration>
"""


def imap_xml(dovecot: Dovecot, user: str) -> str:
    """An incoming ``inbox`` instance reading ``user``'s INBOX on the plain IMAP port."""
    return f"""<ProviderConfiguration Name="inbox">
    <ProviderClass>imap</ProviderClass> <Direction>Incoming</Direction>
    <Deployment>crm</Deployment> <PollingPeriod>{{poll_ms}}</PollingPeriod>
    <EmailServer>127.0.0.1</EmailServer> <EmailPort>{dovecot.ports["imap"]}</EmailPort>
    <EmailSecurity>none</EmailSecurity> <EmailUser>{user}</EmailUser>
    <EmailPassword Env="NOLOG_MAIL_PASSWORD"/> <EmailAddress>{user}</EmailAddress>
  </ProviderConfiguration>"""


def smtp_xml(port: int, user: str) -> str:
    """An outgoing ``outbox`` instance sending :data:`OWNER_ID`'s emails with AUTH."""
    return f"""<ProviderConfiguration Name="outbox">
    <ProviderClass>smtp</ProviderClass> <Direction>Outgoing</Direction>
    <Deployment>crm</Deployment> <PollingPeriod>{{poll_ms}}</PollingPeriod>
    <EmailServer>127.0.0.1</EmailServer> <EmailPort>{port}</EmailPort>
    <EmailSecurity>none</EmailSecurity> <EmailAuthMode>password</EmailAuthMode>
    <EmailUser>{user}</EmailUser> <EmailPassword Env="NOLOG_MAIL_PASSWORD"/>
    <EmailAddress>sales@example.com</EmailAddress> <UserId>{OWNER_ID}</UserId>
  </ProviderConfiguration>"""


def hostile_message(body: str) -> bytes:
    """A small message whose body (both lines) carries the marker ``body``."""
    return (
        "From: Hostile <h@example.org>\r\nTo: inbox@example.com\r\nSubject: quiet please\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n{body.upper()}\r\n"
    ).encode()


def log_messages(text: str, fmt: str, *, strict: bool = True) -> str:
    """``logger: message`` per record (text lines as they are).

    In JSON format every line must be one JSON object; ``strict=False`` skips other lines (a
    Celery worker prints its banner and Python warnings before logging is set up).
    """
    if fmt == "text":
        return _CONTEXT.sub(":", text)
    lines = [line for line in text.splitlines() if strict or line.startswith("{")]
    docs = [json.loads(line) for line in lines if line.strip()]
    return "\n".join(f"{doc['logger']}: {doc['message']}" for doc in docs)


#: The `` [instance=... message_id=...]:`` context of a text line, dropped for simple matching.
_CONTEXT = re.compile(r" \[instance=[^\]]*\]:")


def delivered_bodies(sim: SimulatorServer, marker: str) -> int:
    """How many email activities in the simulator carry ``marker`` in their description."""
    return sum(marker in str(e.get("description") or "") for e in sim.emails())
