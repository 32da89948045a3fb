"""Helpers of the outgoing tests: configurations, sample CRM emails, a file-backed CRM.

:class:`SqliteCrm` is a CRM adapter whose outbound emails live in a SQLite file, so a send
cycle running in a subprocess that gets SIGKILLed leaves a state the next process (and the test)
can read. :func:`run_sender` is the entry point of that subprocess.

Every email :func:`sample_email` makes is declared to the SMTP test servers
(:func:`tests.servers.smtp.declare_crm_email`), and :func:`expect_dataverse_recipients` declares
the emails of a simulator organisation: the servers' teardown then checks each message's
envelope against the recipients of its CRM email, Bcc included.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from router.config import (
    Configuration,
    Deployment,
    Parameter,
    Parameters,
    ProviderConfiguration,
    Secret,
    SystemConfiguration,
)
from router.context import Context
from router.crm.base import CrmAdapter, DeliveryTarget, Owners
from router.crm.memory import MemoryCrm
from router.errors import CrmRejected
from router.mail.compose import message_id_for
from router.models import Activity, Address, Attachment, DeliveryResult, Direction, OutboundEmail
from router.state.base import StateStore
from router.state.memory import MemoryStore
from tests.servers.smtp import SmtpSink, declare_crm_email

OWNER = "user-1"
#: An en dash: non-ASCII punctuation in subjects and file names.
DASH = "\u2013"


def outgoing_cfg(
    port: int,
    *,
    name: str = "out",
    security: str = "none",
    auth: str = "none",
    user: str | None = None,
    password: str | None = None,
    params: dict[str, str] | None = None,
    max_count: int = 1000,
    max_attempts: int = 3,
    owner: str = OWNER,
) -> ProviderConfiguration:
    return ProviderConfiguration(
        name=name,
        provider_class="smtp",
        direction=Direction.OUTGOING,
        deployment="crm",
        email_server="localhost" if security != "none" else "127.0.0.1",
        email_port=port,
        email_security=security,
        email_auth_mode=auth,
        email_user=user,
        email_password=Secret(value=password) if password is not None else None,
        email_address="sales@example.com",
        user_ids=(owner,),
        max_message_count=max_count,
        maximum_delivery_attempts=max_attempts,
        parameters=Parameters(
            items=tuple(Parameter(name=k, value=v) for k, v in (params or {}).items())
        ),
    )


def configuration(*providers: ProviderConfiguration, lease_ms: int = 60_000) -> Configuration:
    return Configuration(
        system=SystemConfiguration(max_thread_execution=lease_ms),
        deployments=(Deployment(name="crm", adapter="memory", crm_server_url="memory://"),),
        providers=providers,
    )


def make_context(
    config: Configuration, crm: CrmAdapter | None = None, store: StateStore | None = None
) -> tuple[Context, Any]:
    """A Context over ``store`` (memory by default) with ``crm`` (a new MemoryCrm) for "crm"."""
    crm = crm if crm is not None else MemoryCrm()
    ctx = Context(config, store if store is not None else MemoryStore())
    ctx._crms["crm"] = crm
    return ctx, crm


def sample_email(i: int, *, attachments: bool = True, prefix: str = "e") -> OutboundEmail:
    """A CRM email with non-ASCII names, Cc, Bcc and (optionally) two attachments."""
    files = (
        (
            Attachment(
                f"Angebot Nr. {i} {DASH} Müller.pdf",
                "application/pdf",
                b"%PDF-1.4 " + bytes([i % 256]) * 64,
            ),
            Attachment(
                "logo.png", "image/png", b"\x89PNG\r\n\x1a\n", content_id=f"logo{i}", inline=True
            ),
        )
        if attachments
        else ()
    )
    return declared(
        OutboundEmail(
            email_id=f"{prefix}{i:05d}",
            subject=f"Grüße Nr. {i} {DASH} Ihr Angebot",
            body_html=(
                f"<p>Hallo Jürgen,</p><p>Angebot <b>{i}</b> anbei. <img src='cid:logo{i}'></p>"
            ),
            sender=Address("sales@example.com", "Vertrieb Köln"),
            to=(Address(f"to{i}@example.com", "Jürgen Größ"),),
            cc=(Address(f"cc{i}@example.com", "Zoë Ångström"),),
            bcc=(Address(f"bcc{i}@example.com", "Geheim"),),
            attachments=files,
            tracking_token=f"CRM:{i:07d}",
        )
    )


def declared(email: OutboundEmail) -> OutboundEmail:
    """``email``, after telling the SMTP test servers whom it names (To+Cc and Bcc)."""
    visible = [a.email for a in (*email.to, *email.cc)]
    declare_crm_email(
        message_id_for(email, email.sender.email), visible, [a.email for a in email.bcc]
    )
    return email


def expect_dataverse_recipients(sink: SmtpSink, simulator: Any) -> None:
    """Declare to ``sink`` the parties of every email of ``simulator``'s org that has an id."""
    for row in simulator.emails():
        if not row.get("messageid"):
            continue
        masks: dict[int, list[str]] = {2: [], 3: [], 4: []}
        for party in row.get("parties", []):
            if party.get("participationtypemask") in masks and party.get("addressused"):
                masks[party["participationtypemask"]].append(party["addressused"])
        sink.expect(row["messageid"], masks[2] + masks[3], masks[4])


# -- a CRM whose state survives a SIGKILL ---------------------------------------------------------
class SqliteCrm(CrmAdapter):
    """Outbound emails in a SQLite file (status pending/sent/failed, marks counted)."""

    name = "sqlite-test-crm"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbound (email_id TEXT PRIMARY KEY, owner TEXT,"
            " payload TEXT, status TEXT, reason TEXT, attempts INT, message_id TEXT,"
            " sent_marks INT DEFAULT 0)"
        )

    def add_outbound(self, emails: Iterable[OutboundEmail], owner: str = OWNER) -> None:
        rows = [(e.email_id, owner, _dump(e), "pending", None, 0, None) for e in emails]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO outbound VALUES (?,?,?,?,?,?,?,0)", rows)

    def status(self) -> dict[str, tuple[str, str | None, int, str | None]]:
        rows = self.db.execute(
            "SELECT email_id, status, reason, sent_marks, message_id FROM outbound"
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def list_pending(self, owners: Owners, limit: int) -> list[OutboundEmail]:
        rows = self.db.execute(
            "SELECT payload, attempts FROM outbound WHERE status='pending'"
            " ORDER BY email_id LIMIT ?",
            (limit,),
        )
        return [_load(payload, attempts) for payload, attempts in rows]

    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        self._update(
            "UPDATE outbound SET status='sent', message_id=?, sent_marks=sent_marks+1"
            " WHERE email_id=?",
            (message_id, email_id),
        )

    def mark_failed(self, email_id: str, reason: str) -> None:
        self._update(
            "UPDATE outbound SET status='failed', reason=? WHERE email_id=?", (reason, email_id)
        )

    def record_attempt(self, email_id: str, attempts: int) -> None:
        self._update("UPDATE outbound SET attempts=? WHERE email_id=?", (attempts, email_id))

    def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        if self.db.execute(sql, args).rowcount == 0:
            raise CrmRejected(f"no email with id {args[-1]}")

    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        return True

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        raise CrmRejected("this test CRM only knows outbound emails")

    def close(self) -> None:
        self.db.close()


def _dump(email: OutboundEmail) -> str:
    return json.dumps(
        {
            "email_id": email.email_id,
            "subject": email.subject,
            "body_html": email.body_html,
            "sender": [email.sender.email, email.sender.name],
            "to": [[a.email, a.name] for a in email.to],
            "cc": [[a.email, a.name] for a in email.cc],
            "bcc": [[a.email, a.name] for a in email.bcc],
            "tracking_token": email.tracking_token,
        }
    )


def _load(payload: str, attempts: int) -> OutboundEmail:
    d = json.loads(payload)
    return OutboundEmail(
        email_id=d["email_id"],
        subject=d["subject"],
        body_html=d["body_html"],
        sender=Address(*d["sender"]),
        to=tuple(Address(*a) for a in d["to"]),
        cc=tuple(Address(*a) for a in d["cc"]),
        bcc=tuple(Address(*a) for a in d["bcc"]),
        tracking_token=d["tracking_token"],
        delivery_attempts=attempts,
    )


def run_sender(port: int, crm_path: str, state_path: str, rounds: int) -> None:
    """Subprocess body: send cycles against the sink until nothing is pending (or ``rounds``)."""
    from router.errors import RouterError
    from router.outgoing import send_cycle
    from router.state.sqlite import SqliteStore

    cfg = outgoing_cfg(
        port, params={"retry_backoff": "0.05", "timeout": "5"}, max_count=50, max_attempts=1000
    )
    ctx, _ = make_context(
        configuration(cfg, lease_ms=1000),
        SqliteCrm(Path(crm_path)),
        SqliteStore(state_path, synchronous="NORMAL"),  # a process crash loses no WAL commit
    )
    for _ in range(rounds):
        try:
            report = send_cycle(ctx, cfg.name)
        except RouterError:
            time.sleep(0.05)
            continue
        if report.busy:
            time.sleep(0.1)
        elif report.pending == 0:
            return
    sys.exit(3)


if __name__ == "__main__":
    run_sender(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
