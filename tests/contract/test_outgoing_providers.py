"""The outgoing providers pass the provider kit: SMTP (aiosmtpd) and a ``_submit``-only one.

The contract lives in the installed package (:mod:`router.testing`); this module supplies the
servers the providers send to. ``FileDropProvider`` (tests/contract/filedrop.py) is written as a
third party would write it, with ``_submit`` alone: it gets the base class's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from router.config import Parameter, Parameters, ProviderConfiguration
from router.models import Direction
from router.testing import OutgoingProviderContract, SentMailBackend
from tests.contract import filedrop
from tests.servers.smtp import SmtpSink


class SmtpServer:
    """The aiosmtpd test server (tests/servers/smtp.py), in this process."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    def config(self, **overrides: Any) -> ProviderConfiguration:
        fields: dict[str, Any] = {
            "name": "smtp-kit",
            "provider_class": "smtp",
            "direction": Direction.OUTGOING,
            "email_server": "127.0.0.1",
            "email_port": self.sink.port,
            "email_security": "none",
            "email_auth_mode": "none",
            "email_address": "sender@example.com",
        }
        return ProviderConfiguration(**{**fields, **overrides})

    def sent(self) -> list[tuple[tuple[str, ...], bytes]]:
        return [(tuple(m.rcpt_tos), m.data) for m in self.sink.messages]

    def refuse_for_now(self, address: str) -> bool:
        self.sink.handler.rcpt_replies[address.lower()] = ["451 4.7.1 try later"]
        return True


class DropDirectory:
    """The directory FileDropProvider writes to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()

    def config(self, **overrides: Any) -> ProviderConfiguration:
        params = Parameters(items=(Parameter(name="directory", value=str(self.directory)),))
        fields: dict[str, Any] = {
            "name": "drop-kit",
            "provider_class": "tests.contract.filedrop:FileDropProvider",
            "direction": Direction.OUTGOING,
            "email_address": "sender@example.com",
            "parameters": params,
        }
        return ProviderConfiguration(**{**fields, **overrides})

    def sent(self) -> list[tuple[tuple[str, ...], bytes]]:
        return filedrop.sent(self.directory)

    def refuse_for_now(self, address: str) -> bool:
        (self.directory / f"refuse-{address.lower()}").touch()
        return True


class TestSmtpProvider(OutgoingProviderContract):
    @pytest.fixture
    def sent_mail(self, smtp_server: Callable[..., SmtpSink]) -> SentMailBackend:
        return SmtpServer(smtp_server())


class TestSubmitOnlyProvider(OutgoingProviderContract):
    @pytest.fixture
    def sent_mail(self, tmp_path: Path) -> SentMailBackend:
        return DropDirectory(tmp_path / "drop")
