"""At DEBUG, `email-router poll`/`run`/`send` log no message body and no secret.

Each test runs the command as a user would (a fresh interpreter with ``ROUTER_LOG_LEVEL=DEBUG``)
against a real Dovecot (a mailbox with its own password), the aiosmtpd test server with AUTH and
the Dataverse simulator (OAuth client credentials), in text and JSON log formats. The values that
must stay out of the logs are distinctive (see tests/support/log_probe.py); the logs must still
show the cycle's ordinary lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.dovecot import Dovecot
from tests.servers.simulator import SimulatorServer
from tests.servers.smtp import SmtpSink
from tests.support.log_probe import (
    OWNER_ID,
    Secrets,
    config_xml,
    delivered_bodies,
    hostile_message,
    imap_xml,
    log_messages,
    smtp_xml,
)

pytestmark = [
    pytest.mark.dovecot,
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

ROOT = Path(__file__).resolve().parents[2]


def email_router(args: list[str], secrets: Secrets, fmt: str) -> subprocess.CompletedProcess[str]:
    """Run ``email-router ARGS`` at DEBUG in a fresh interpreter, as a user would."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env = {**clean, **secrets.env(), "ROUTER_LOG_LEVEL": "DEBUG", "ROUTER_LOG_FORMAT": fmt}
    command = [sys.executable, "-m", "router.cli", *args]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False
    )


def write_config(tmp_path: Path, sim: SimulatorServer, instance: str) -> str:
    path = tmp_path / "router.xml"
    path.write_text(config_xml(f"sqlite:///{tmp_path / 'state.db'}", sim, instance))
    return str(path)


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    "command", [["poll", "inbox"], ["run", "--duration", "2.5"]], ids=["poll", "run"]
)
def test_a_debug_poll_logs_neither_the_body_nor_the_password_nor_the_crm_secret(
    command: list[str], fmt: str, tmp_path: Path, dovecot: Dovecot, simulator: SimulatorServer
) -> None:
    # Given a mailbox with its own password holding a message with a distinctive body
    secrets = Secrets.fresh()
    user = dovecot.add_user(f"nolog{uuid.uuid4().hex[:8]}@example.com", secrets.mail_password)
    dovecot.append(user, hostile_message(secrets.body))
    config = write_config(tmp_path, simulator, imap_xml(dovecot, user))
    # When `email-router poll` (or `run`, which polls at once) runs at DEBUG
    done = email_router([*command, "--config", config], secrets, fmt)
    # Then the message reached the CRM, and the logs show the cycle but no body and no secret
    assert done.returncode == 0, done.stderr[-3000:]
    assert delivered_bodies(simulator, secrets.body) == 1
    assert secrets.leaked_in(done.stdout + done.stderr) == []
    messages = log_messages(done.stderr, fmt)
    assert "imapclient.imaplib: > " in messages and " UID FETCH " in messages
    assert "acquired a token from" in messages


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_debug_send_logs_neither_the_body_nor_the_smtp_password_nor_the_crm_secret(
    fmt: str,
    tmp_path: Path,
    simulator: SimulatorServer,
    smtp_server: Callable[..., SmtpSink],
) -> None:
    # Given an SMTP server with AUTH and a pending CRM email with a distinctive body
    secrets = Secrets.fresh()
    sink = smtp_server(users={"sender": secrets.mail_password})
    simulator.seed_pending(1, owner_id=OWNER_ID, body=f"<p>{secrets.body}</p>")
    config = write_config(tmp_path, simulator, smtp_xml(sink.port, "sender"))
    # When `email-router send` runs at DEBUG
    done = email_router(["send", "outbox", "--config", config], secrets, fmt)
    # Then the email went out, and the logs show the cycle but no body and no secret
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(sink.messages) == 1 and secrets.body.encode() in sink.messages[0].data
    assert secrets.leaked_in(done.stdout + done.stderr) == []
    assert "acquired a token from" in log_messages(done.stderr, fmt)
