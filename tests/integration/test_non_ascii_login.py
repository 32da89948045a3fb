"""Non-ASCII passwords against the real Dovecot.

IMAP ``LOGIN`` can only carry ASCII (imaplib raised UnicodeEncodeError, a "cycle crashed (a bug)"
every period); the imap provider then uses ``AUTHENTICATE PLAIN``, whose strings are UTF-8.
POP3 ``USER``/``PASS`` go out in UTF-8. A refused non-ASCII password is a credentials error
(ProviderAuthError: the instance stops), never a crash.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from router.errors import ProviderAuthError
from router.providers.base import IncomingProvider, InstanceState
from router.providers.imap import ImapProvider
from router.providers.pop3 import Pop3Provider
from tests.servers.dovecot import Dovecot, message

pytestmark = pytest.mark.dovecot

NON_ASCII_PASSWORD = "pässwörd-€-日本"


@pytest.fixture
def non_ascii_user(dovecot: Dovecot) -> str:
    """A passwd-file user whose password is not ASCII, with two messages.

    The user name stays ASCII: Dovecot's default ``auth_username_chars`` refuses anything else.
    """
    name = dovecot.add_user(f"jose-{uuid.uuid4().hex[:8]}@example.com", NON_ASCII_PASSWORD)
    dovecot.append_many(name, [message(1), message(2)])  # the static passdb's ASCII password
    return name


def read_all(provider: IncomingProvider) -> list[bytes]:
    provider.open()
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        return [provider.fetch(ref).raw for ref in refs]
    finally:
        provider.close()


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_a_mailbox_with_a_non_ascii_password_is_read(
    kind: str, dovecot: Dovecot, non_ascii_user: str
) -> None:
    cfg = dovecot.provider_config(non_ascii_user, kind, password=NON_ASCII_PASSWORD, name=kind)
    provider: IncomingProvider = ImapProvider(cfg) if kind == "imap" else Pop3Provider(cfg)

    raws = read_all(provider)

    assert [b"Subject: message 1" in r for r in raws] == [True, False]
    assert b"Subject: message 2" in raws[1]


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_a_wrong_non_ascii_password_is_a_credentials_error_not_a_crash(
    kind: str, dovecot: Dovecot, non_ascii_user: str
) -> None:
    cfg = dovecot.provider_config(non_ascii_user, kind, password="wröng-€", name=kind)
    provider: IncomingProvider = ImapProvider(cfg) if kind == "imap" else Pop3Provider(cfg)

    with pytest.raises(ProviderAuthError):
        provider.open()


class NoPlainImap(ImapProvider):
    """A server that offers no AUTHENTICATE PLAIN (capabilities filtered at the client seam)."""

    def _create_client(self) -> Any:
        client = super()._create_client()
        offered = client.capabilities()
        client.capabilities = lambda: tuple(c for c in offered if c != b"AUTH=PLAIN")
        return client


def test_without_authenticate_plain_a_non_ascii_password_stops_the_instance_saying_why(
    dovecot: Dovecot, non_ascii_user: str
) -> None:
    cfg = dovecot.provider_config(non_ascii_user, password=NON_ASCII_PASSWORD, name="box")

    with pytest.raises(ProviderAuthError) as caught:
        NoPlainImap(cfg).open()

    text = str(caught.value)
    assert "non-ASCII" in text and "AUTHENTICATE PLAIN" in text
    assert NON_ASCII_PASSWORD not in text
