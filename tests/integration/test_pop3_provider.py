"""The pop3 provider against a real Dovecot: deletion at commit, bounded cursor, TLS, failures."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import cast

import pytest

from router.config import ProviderConfiguration
from router.errors import ConfigError, ProviderAuthError, ProviderUnavailable
from router.models import InboundMessage, MessageRef
from router.providers.base import InstanceState
from router.providers.pop3 import Pop3Provider
from tests.servers.common import free_port
from tests.servers.dovecot import Dovecot, DroppingProxy, message, oauth_token

pytestmark = pytest.mark.dovecot


@pytest.fixture
def user_with_mail(dovecot: Dovecot, dovecot_user: str) -> str:
    dovecot.append_many(dovecot_user, [message(i) for i in range(1, 6)])
    return dovecot_user


@pytest.fixture
def pop3_proxy(dovecot: Dovecot) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(dovecot.ports["pop3"])
    yield proxy
    proxy.close()


def opened(cfg: ProviderConfiguration) -> Pop3Provider:
    provider = Pop3Provider(cfg)
    provider.open()
    return provider


def list_all(cfg: ProviderConfiguration, cursor: dict[str, list[str]] | None = None) -> list[str]:
    provider = opened(cfg)
    try:
        return [r.key for r in provider.list_new(InstanceState(cursor, {}), 1000)]
    finally:
        provider.close()


@pytest.mark.parametrize("action", ["seen", "move:Archive"])
def test_seen_and_move_are_refused_at_start(
    dovecot: Dovecot, dovecot_user: str, action: str
) -> None:
    with pytest.raises(ConfigError, match="not possible with POP3"):
        Pop3Provider(dovecot.provider_config(dovecot_user, "pop3", after_processing=action))


def test_deletions_happen_only_at_commit(dovecot: Dovecot, user_with_mail: str) -> None:
    provider = opened(dovecot.provider_config(user_with_mail, "pop3", after_processing="delete"))
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        provider.post_process(refs[:2], "delete")
        assert len(dovecot.list_uids(user_with_mail)) == 5  # still there before QUIT
        provider.commit()
        assert dovecot.list_uids(user_with_mail) == [3, 4, 5]
        # the provider opens a new session for what comes after the commit
        assert [r.key for r in provider.list_new(InstanceState(None, {}), 10)] == [
            r.key for r in refs[2:]
        ]
    finally:
        provider.close()


def test_delete_of_an_already_deleted_message_is_harmless(
    dovecot: Dovecot, user_with_mail: str
) -> None:
    cfg = dovecot.provider_config(user_with_mail, "pop3", after_processing="delete")
    refs = [MessageRef(k) for k in list_all(cfg)[:1]]
    for _ in range(2):
        provider = opened(cfg)
        try:
            provider.post_process(refs, "delete")
            provider.commit()
        finally:
            provider.close()
    assert dovecot.list_uids(user_with_mail) == [2, 3, 4, 5]


def test_cursor_forgets_uidls_no_longer_on_the_server(
    dovecot: Dovecot, user_with_mail: str
) -> None:
    cfg = dovecot.provider_config(user_with_mail, "pop3")
    provider = opened(cfg)
    try:
        state = InstanceState(None, {})
        refs = provider.list_new(state, 10)
        state.cursor = provider.advance(state, refs)
        provider.post_process(refs[:3], "delete")
        provider.commit()
        provider.list_new(state, 10)
        cursor = provider.advance(state, [])
    finally:
        provider.close()
    assert cursor == {"seen": [r.key for r in refs[3:]]}


def test_long_lines_are_accepted(dovecot: Dovecot, dovecot_user: str) -> None:
    raw = message(1).replace(b"Body of", b"y" * 10_000 + b" Body of")
    dovecot.append(dovecot_user, raw)
    provider = opened(dovecot.provider_config(dovecot_user, "pop3"))
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        assert provider.fetch(refs[0]).raw == raw
        assert refs[0].size == len(raw)
    finally:
        provider.close()


def test_connection_dropped_mid_retr_is_unavailable_and_nothing_is_lost(
    dovecot: Dovecot, dovecot_user: str, pop3_proxy: DroppingProxy
) -> None:
    dovecot.append_many(dovecot_user, [message(i, size=3000) for i in range(10)])
    provider = opened(dovecot.provider_config(dovecot_user, "pop3", port=pop3_proxy.port))
    state = InstanceState(None, {})
    staged: list[MessageRef] = []
    try:
        refs = provider.list_new(state, 100)
        pop3_proxy.arm(15_000)
        with pytest.raises(ProviderUnavailable):
            for msg in provider.fetch_many(refs):
                staged.append(msg.ref)
        state.cursor = provider.advance(state, staged)
    finally:
        provider.close()
    assert 0 < len(staged) < 10
    rest = list_all(dovecot.provider_config(dovecot_user, "pop3"), state.cursor)
    assert [r.key for r in staged] + rest == [r.key for r in refs]


def test_wrong_password_is_an_auth_error(dovecot: Dovecot, dovecot_user: str) -> None:
    with pytest.raises(ProviderAuthError) as caught:
        opened(dovecot.provider_config(dovecot_user, "pop3", password="wrong"))
    assert "wrong" not in str(caught.value)


def test_unreachable_server_is_unavailable(dovecot: Dovecot, dovecot_user: str) -> None:
    with pytest.raises(ProviderUnavailable):
        opened(dovecot.provider_config(dovecot_user, "pop3", port=free_port(), timeout=2))


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_with_the_test_ca_works(dovecot: Dovecot, user_with_mail: str, security: str) -> None:
    cfg = dovecot.provider_config(
        user_with_mail,
        "pop3",
        security,
        ca_bundle=str(dovecot.ca_path),
    )
    assert len(list_all(cfg)) == 5


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_untrusted_certificate_is_refused_by_default(
    dovecot: Dovecot, dovecot_user: str, security: str
) -> None:
    cfg = dovecot.provider_config(dovecot_user, "pop3", security)
    with pytest.raises(ProviderAuthError, match="SSLCertVerificationError"):
        opened(cfg)


def test_xoauth2_login(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail, "pop3", password=oauth_token(user_with_mail))
    cfg = cfg.model_copy(update={"email_auth_mode": "xoauth2"})
    assert len(list_all(cfg)) == 5


def test_refused_xoauth2_token_is_an_auth_error(dovecot: Dovecot, dovecot_user: str) -> None:
    cfg = dovecot.provider_config(dovecot_user, "pop3", password="expired")
    with pytest.raises(ProviderAuthError):
        opened(cfg.model_copy(update={"email_auth_mode": "xoauth2"}))


@pytest.mark.parametrize("batch", [1, 3, 50])
def test_pipelined_retr_returns_every_message_in_order(
    dovecot: Dovecot, dovecot_user: str, batch: int
) -> None:
    raws = [message(i, size=i * 500) for i in range(7)]
    dovecot.append_many(dovecot_user, raws)
    provider = opened(dovecot.provider_config(dovecot_user, "pop3", fetch_batch=batch))
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        assert [m.raw for m in provider.fetch_many(refs)] == raws
    finally:
        provider.close()


def test_abandoning_a_pipelined_batch_leaves_the_provider_usable(
    dovecot: Dovecot, user_with_mail: str
) -> None:
    provider = opened(dovecot.provider_config(user_with_mail, "pop3"))
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        fetching = cast(Generator[InboundMessage, None, None], provider.fetch_many(refs))
        next(fetching)
        fetching.close()  # four RETR answers were never read
        assert [m.ref for m in provider.fetch_many(refs[1:])] == refs[1:]
    finally:
        provider.close()
