"""The imap provider against a real Dovecot: flags, post-processing, UIDVALIDITY, TLS, failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from router.config import ProviderConfiguration
from router.errors import ConfigError, ProviderAuthError, ProviderUnavailable
from router.models import MessageRef
from router.providers.base import InstanceState
from router.providers.imap import ImapProvider, parse_key, uid_set
from tests.servers.common import free_port
from tests.servers.dovecot import Dovecot, DroppingProxy, message, oauth_token

pytestmark = pytest.mark.dovecot


@pytest.fixture
def user_with_mail(dovecot: Dovecot, dovecot_user: str) -> str:
    dovecot.append_many(dovecot_user, [message(i) for i in range(1, 6)])
    return dovecot_user


def opened(cfg: ProviderConfiguration) -> ImapProvider:
    provider = ImapProvider(cfg)
    provider.open()
    return provider


def list_all(cfg: ProviderConfiguration, cursor: dict[str, Any] | None = None) -> list[MessageRef]:
    provider = opened(cfg)
    try:
        return provider.list_new(InstanceState(cursor, {}), 1000)
    finally:
        provider.close()


def post_process(cfg: ProviderConfiguration, refs: list[MessageRef], action: str) -> None:
    provider = opened(cfg)
    try:
        provider.post_process(refs, action)
        provider.commit()
    finally:
        provider.close()


class CountingProvider(ImapProvider):
    """Counts FETCH commands that download bodies (through the _create_client seam)."""

    body_fetches = 0

    def _create_client(self) -> Any:
        client = super()._create_client()
        original = client.fetch

        def fetch(messages: Any, data: Any, modifiers: Any = None) -> Any:
            if "BODY.PEEK[]" in data:
                type(self).body_fetches += 1
            return original(messages, data, modifiers)

        client.fetch = fetch
        return client


# -- reading leaves the mailbox alone ---------------------------------------------------------


def test_fetching_does_not_mark_messages_seen(dovecot: Dovecot, user_with_mail: str) -> None:
    provider = opened(dovecot.provider_config(user_with_mail))
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        assert len(list(provider.fetch_many(refs))) == 5
        provider.fetch(refs[0])
    finally:
        provider.close()
    assert all("\\Seen" not in dovecot.flags(user_with_mail, uid) for uid in range(1, 6))


def test_keys_carry_uidvalidity_and_uid(dovecot: Dovecot, user_with_mail: str) -> None:
    refs = list_all(dovecot.provider_config(user_with_mail))
    validity = dovecot.uidvalidity(user_with_mail)
    assert [parse_key(r.key) for r in refs] == [(validity, uid) for uid in range(1, 6)]


def test_fetch_many_sends_one_fetch_per_batch(dovecot: Dovecot, dovecot_user: str) -> None:
    dovecot.append_many(dovecot_user, [message(i) for i in range(25)])
    provider = CountingProvider(dovecot.provider_config(dovecot_user, fetch_batch=10))
    provider.open()
    try:
        refs = provider.list_new(InstanceState(None, {}), 100)
        got = [m.ref.key for m in provider.fetch_many(refs)]
    finally:
        provider.close()
    assert got == [r.key for r in refs]
    assert CountingProvider.body_fetches == 3


def test_large_messages_are_fetched_in_smaller_batches(dovecot: Dovecot, dovecot_user: str) -> None:
    dovecot.append_many(dovecot_user, [message(i, size=20_000) for i in range(4)])
    CountingProvider.body_fetches = 0
    provider = CountingProvider(dovecot.provider_config(dovecot_user, fetch_batch_bytes=45_000))
    provider.open()
    try:
        refs = provider.list_new(InstanceState(None, {}), 100)
        assert len(list(provider.fetch_many(refs))) == 4
    finally:
        provider.close()
    assert CountingProvider.body_fetches == 2


# -- post-processing ---------------------------------------------------------------------------


def test_seen_flags_only_the_given_messages(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    refs = list_all(cfg)
    post_process(cfg, refs[:2], "seen")
    seen = [uid for uid in range(1, 6) if "\\Seen" in dovecot.flags(user_with_mail, uid)]
    assert seen == [1, 2]


def test_delete_expunges_only_the_given_messages(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    refs = list_all(cfg)
    post_process(cfg, [refs[0], refs[3]], "delete")
    assert dovecot.list_uids(user_with_mail) == [2, 3, 5]


def test_move_creates_the_missing_folder(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    refs = list_all(cfg)
    post_process(cfg, refs[:3], "move:Processed/CRM")
    assert dovecot.list_uids(user_with_mail) == [4, 5]
    assert len(dovecot.list_uids(user_with_mail, "Processed.CRM")) == 3  # Dovecot uses "."


def test_move_into_an_existing_folder(dovecot: Dovecot, user_with_mail: str) -> None:
    dovecot.append(user_with_mail, message(99), folder="Archive")
    cfg = dovecot.provider_config(user_with_mail)
    post_process(cfg, list_all(cfg), "move: Archive")
    assert dovecot.list_uids(user_with_mail) == []
    assert len(dovecot.list_uids(user_with_mail, "Archive")) == 6


def test_post_processing_twice_is_harmless(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    refs = list_all(cfg)
    post_process(cfg, refs[:2], "move:Done")
    post_process(cfg, refs[:2], "move:Done")  # a retry after a crash before "done"
    post_process(cfg, refs[2:3], "delete")
    post_process(cfg, refs[2:3], "delete")
    assert dovecot.list_uids(user_with_mail) == [4, 5]
    assert len(dovecot.list_uids(user_with_mail, "Done")) == 2


def test_refs_of_an_old_uidvalidity_are_not_touched(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    refs = list_all(cfg)
    dovecot.change_uidvalidity(user_with_mail)
    post_process(cfg, refs, "delete")
    assert dovecot.list_uids(user_with_mail) == [1, 2, 3, 4, 5]


# -- UIDVALIDITY -------------------------------------------------------------------------------


def test_changed_uidvalidity_lists_the_folder_again(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    provider = opened(cfg)
    try:
        state = InstanceState(None, {})
        state.cursor = provider.advance(state, provider.list_new(state, 100))
    finally:
        provider.close()
    assert list_all(cfg, state.cursor) == []
    new_validity = dovecot.change_uidvalidity(user_with_mail)
    again = list_all(cfg, state.cursor)
    assert [parse_key(r.key) for r in again] == [(new_validity, u) for u in range(1, 6)]


def test_recreated_folder_is_read_from_the_start(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = dovecot.provider_config(user_with_mail)
    cursor = {"uidvalidity": dovecot.uidvalidity(user_with_mail), "last_uid": 5}
    dovecot.recreate_folder(user_with_mail)
    dovecot.append_many(user_with_mail, [message(10), message(11)])
    refs = list_all(cfg, cursor)
    assert len(refs) == 2
    provider = opened(cfg)
    try:
        new_cursor = provider.advance(InstanceState(cursor, {}), refs)
    finally:
        provider.close()
    assert new_cursor == {
        "uidvalidity": dovecot.uidvalidity(user_with_mail),
        "last_uid": parse_key(refs[-1].key)[1],
    }


# -- failures ----------------------------------------------------------------------------------


def test_connection_dropped_mid_fetch_loses_nothing(
    dovecot: Dovecot, dovecot_user: str, dropping_proxy: DroppingProxy
) -> None:
    dovecot.append_many(dovecot_user, [message(i, size=3000) for i in range(20)])
    cfg = dovecot.provider_config(dovecot_user, port=dropping_proxy.port, fetch_batch=5)
    provider = opened(cfg)
    state = InstanceState(None, {})
    staged: list[MessageRef] = []
    try:
        refs = provider.list_new(state, 100)
        dropping_proxy.arm(30_000)  # about ten messages, then the connection dies
        with pytest.raises(ProviderUnavailable):
            for msg in provider.fetch_many(refs):
                staged.append(msg.ref)
        state.cursor = provider.advance(state, staged)
    finally:
        provider.close()
    assert 0 < len(staged) < 20
    rest, raws, _ = _list_and_fetch(dovecot.provider_config(dovecot_user), state.cursor)
    assert [r.key for r in staged + rest] == [r.key for r in refs]
    assert len(raws) == 20 - len(staged)


def _list_and_fetch(
    cfg: ProviderConfiguration, cursor: dict[str, Any] | None
) -> tuple[list[MessageRef], list[bytes], dict[str, Any]]:
    provider = opened(cfg)
    try:
        state = InstanceState(cursor, {})
        refs = provider.list_new(state, 100)
        return refs, [m.raw for m in provider.fetch_many(refs)], provider.advance(state, refs)
    finally:
        provider.close()


def test_wrong_password_is_an_auth_error(dovecot: Dovecot, dovecot_user: str) -> None:
    with pytest.raises(ProviderAuthError) as caught:
        opened(dovecot.provider_config(dovecot_user, password="wrong"))
    assert "wrong" not in str(caught.value)


def test_unreachable_server_is_unavailable(dovecot: Dovecot, dovecot_user: str) -> None:
    with pytest.raises(ProviderUnavailable):
        opened(dovecot.provider_config(dovecot_user, port=free_port(), timeout=2))


def test_unknown_parameter_is_a_config_error(dovecot: Dovecot, dovecot_user: str) -> None:
    with pytest.raises(ConfigError, match="fetch_bach"):
        ImapProvider(dovecot.provider_config(dovecot_user, fetch_bach=5))


# -- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_with_the_test_ca_works(dovecot: Dovecot, user_with_mail: str, security: str) -> None:
    cfg = dovecot.provider_config(
        user_with_mail,
        security=security,
        ca_bundle=str(dovecot.ca_path),
    )
    assert len(list_all(cfg)) == 5


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_untrusted_certificate_is_refused_by_default(
    dovecot: Dovecot, dovecot_user: str, security: str
) -> None:
    cfg = dovecot.provider_config(dovecot_user, security=security)
    with pytest.raises(ProviderAuthError, match="SSLCertVerificationError"):
        opened(cfg)


def test_disabled_verification_accepts_any_certificate(
    dovecot: Dovecot, user_with_mail: str
) -> None:
    cfg = dovecot.provider_config(user_with_mail, security="ssl", tls_verify="false")
    assert len(list_all(cfg)) == 5


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([1], "1"), ([3, 1, 2, 5], "1:3,5"), ([1, 3, 5], "1,3,5"), ([7, 8, 9, 10], "7:10")],
)
def test_uid_set_is_compact(uids: list[int], expected: str) -> None:
    assert uid_set(uids) == expected


@pytest.fixture(autouse=True)
def _reset_counter() -> Iterator[None]:
    CountingProvider.body_fetches = 0
    yield


def test_xoauth2_login_with_a_token_provider(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = _xoauth2_config(dovecot, user_with_mail, token_provider=f"{__name__}:good_token")
    assert len(list_all(cfg)) == 5


def test_xoauth2_token_from_the_password_element(dovecot: Dovecot, user_with_mail: str) -> None:
    cfg = _xoauth2_config(dovecot, user_with_mail, password=oauth_token(user_with_mail))
    assert len(list_all(cfg)) == 5


def test_refused_xoauth2_token_is_an_auth_error(dovecot: Dovecot, dovecot_user: str) -> None:
    with pytest.raises(ProviderAuthError):
        opened(_xoauth2_config(dovecot, dovecot_user, password="expired"))


def good_token(cfg: ProviderConfiguration) -> str:
    """token_provider used above: called with the instance's configuration at each login."""
    return oauth_token(cfg.email_user or "")


def _xoauth2_config(
    dovecot: Dovecot, user: str, password: str = "unused", **params: Any
) -> ProviderConfiguration:
    cfg = dovecot.provider_config(user, password=password, **params)
    return cfg.model_copy(update={"email_auth_mode": "xoauth2"})


def test_cursor_at_the_last_message_lists_nothing_even_after_expunges(
    dovecot: Dovecot, user_with_mail: str
) -> None:
    # UID 6 arrives and is expunged: UIDNEXT is 7, and "UID SEARCH 6:*" still answers UID 5
    dovecot.append(user_with_mail, message(6))
    cfg = dovecot.provider_config(user_with_mail)
    post_process(cfg, [MessageRef(f"{dovecot.uidvalidity(user_with_mail)}:6")], "delete")
    cursor = {"uidvalidity": dovecot.uidvalidity(user_with_mail), "last_uid": 5}
    assert list_all(cfg, cursor) == []
