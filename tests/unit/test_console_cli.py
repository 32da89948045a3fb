"""The CLI leftovers of the console's issue: ``quarantine show`` prints the headers the console
shows (never the body), and ``validate`` warns about a relative ``sqlite:///`` state path."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main
from router.ledger import InboundLedger
from router.state.factory import open_store

CONFIG = """<?xml version="1.0"?>
<Configuration>
  <SystemConfiguration>
    <StateStore>{state}</StateStore>
  </SystemConfiguration>
  <Deployment Name="mem">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.invalid</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="inbox">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>mem</Deployment>
  </ProviderConfiguration>
</Configuration>
"""
RAW = (
    b"From: ada@customer.example\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n"
    b"Message-ID: <x1@customer.example>\r\n\r\nthe secret body\r\n"
)


def write(tmp_path: Path, state: str) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(CONFIG.format(state=state))
    return path


def test_quarantine_show_prints_reason_and_headers_but_not_the_body(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(state)
    ledger = InboundLedger(store, "inbox")
    ledger.stage("1:1", RAW)
    ledger.quarantine("1:1", "CrmRejected: no")
    store.close()
    code = main(["quarantine", "show", "inbox", "1:1", "--config", str(write(tmp_path, state))])
    out = capsys.readouterr().out
    assert code == 0
    assert "reason: CrmRejected: no" in out
    assert "Subject: Café" in out and "From: ada@customer.example" in out
    assert "secret body" not in out


def test_validate_warns_about_a_relative_sqlite_state_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write(tmp_path, "sqlite:///var/lib/er/state.db"))]) == 0
    err = capsys.readouterr().err
    assert ":4: <StateStore>: warning: 'var/lib/er/state.db' is relative" in err


def test_validate_says_nothing_about_an_absolute_sqlite_state_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write(tmp_path, f"sqlite:///{tmp_path}/state.db"))]) == 0
    assert "<StateStore>" not in capsys.readouterr().err
