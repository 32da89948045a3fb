"""A console app over a memory state store and a memory CRM, for the console's unit tests."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from router.config import Settings
from router.configcheck import load_config
from router.console.app import create_app
from router.console.audit import AuditLog
from router.console.hub import ConsoleHub
from router.console.settings import Credentials
from router.state.memory import MemoryStore

USER, PASSWORD = "ops", "correct horse battery"
MAIL_SECRET, CRM_SECRET = "mail-pw-7f3a9", "crm-secret-b81c"
CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration><StateStore>memory://</StateStore></SystemConfiguration>
  <Deployment Name="mem">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.invalid</CrmServerUrl>
    <ClientSecret Env="CONSOLE_TEST_CRM_SECRET"/>
  </Deployment>
  <ProviderConfiguration Name="inbox">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>mem</Deployment>
    <EmailAddress>console-inbox@example.org</EmailAddress>
    <EmailPassword Env="CONSOLE_TEST_MAIL_SECRET"/>
  </ProviderConfiguration>
  <ProviderConfiguration Name="outbox">
    <ProviderClass>memory-out</ProviderClass>
    <Direction>Outgoing</Direction>
    <Deployment>mem</Deployment>
    <EmailAddress>console-out@example.org</EmailAddress>
  </ProviderConfiguration>
</Configuration>
"""
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def build(tmp_path: Path) -> tuple[Flask, ConsoleHub]:
    """The app and its hub; the audit log is ``tmp_path/audit.jsonl``."""
    path = tmp_path / "router.xml"
    path.write_text(CONFIG)
    path.chmod(0o600)
    store = MemoryStore()
    hub = ConsoleHub(path, load_config(path), store, Settings(), AuditLog(tmp_path / "audit.jsonl"))
    app = create_app(hub, Credentials(USER, PASSWORD), b"k" * 32)
    app.config["TESTING"] = True
    return app, hub


def token(client: FlaskClient, path: str = "/login") -> str:
    """The CSRF token of the form on ``path``."""
    match = TOKEN.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client: FlaskClient) -> str:
    """Sign in as the console user; return the session's CSRF token."""
    answer = client.post(
        "/login", data={"csrf_token": token(client), "username": USER, "password": PASSWORD}
    )
    assert answer.status_code == 302
    return token(client, "/")
