"""The built-in incoming providers pass the provider kit: memory, IMAP and POP3 (Dovecot).

The contract itself lives in the installed package (:mod:`router.testing`), so that third
parties run the same tests against their providers; this module only supplies the mailboxes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from router.config import ProviderConfiguration
from router.models import Direction
from router.providers import memory
from router.testing import IncomingProviderContract, MailboxBackend
from tests.servers.dovecot import Dovecot


class MemoryMailbox:
    """A mailbox of the in-memory provider (``router.providers.memory``)."""

    def __init__(self) -> None:
        self.key = f"contract-{uuid.uuid4().hex}"

    def config(self, **overrides: Any) -> ProviderConfiguration:
        return ProviderConfiguration(
            name=self.key,
            provider_class="memory",
            direction=Direction.INCOMING,
            email_address=self.key,
            **overrides,
        )

    def put(self, raws: Sequence[bytes]) -> None:
        for raw in raws:
            memory.mailbox(self.key).append(raw)

    def count(self) -> int:
        return len(memory.mailbox(self.key).messages)


class DovecotMailbox:
    """The INBOX of one Dovecot user, read over IMAP or POP3."""

    def __init__(self, dovecot: Dovecot, user: str, kind: str) -> None:
        self.dovecot, self.user, self.kind = dovecot, user, kind

    def config(self, **overrides: Any) -> ProviderConfiguration:
        return self.dovecot.provider_config(self.user, self.kind, **overrides)

    def put(self, raws: Sequence[bytes]) -> None:
        self.dovecot.append_many(self.user, list(raws))

    def count(self) -> int:
        return len(self.dovecot.list_uids(self.user))


class TestMemoryProvider(IncomingProviderContract):
    @pytest.fixture
    def mailbox(self) -> Iterator[MailboxBackend]:
        box = MemoryMailbox()
        yield box
        memory.MAILBOXES.pop(box.key, None)


@pytest.mark.dovecot
class TestImapProvider(IncomingProviderContract):
    @pytest.fixture
    def mailbox(self, dovecot: Dovecot, dovecot_user: str) -> MailboxBackend:
        return DovecotMailbox(dovecot, dovecot_user, "imap")


@pytest.mark.dovecot
class TestPop3Provider(IncomingProviderContract):
    @pytest.fixture
    def mailbox(self, dovecot: Dovecot, dovecot_user: str) -> MailboxBackend:
        return DovecotMailbox(dovecot, dovecot_user, "pop3")
