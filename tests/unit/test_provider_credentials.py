"""Credentials of the mail providers: configuration checks and the XOAUTH2 token source."""

from __future__ import annotations

import base64

import pytest

from router.config import ProviderConfiguration, Secret
from router.errors import ConfigError, ProviderAuthError
from router.models import Direction
from router.providers.credentials import Credentials


def config(**kw: object) -> ProviderConfiguration:
    fields: dict[str, object] = {
        "name": "box",
        "provider_class": "imap",
        "direction": Direction.INCOMING,
        "email_server": "mail.example.com",
        "email_user": "alice@example.com",
        "email_password": Secret(value="pw"),
    }
    fields.update(kw)
    return ProviderConfiguration(**fields)  # type: ignore[arg-type]


def issued_token(cfg: ProviderConfiguration) -> str:
    return f"token-for-{cfg.email_user}"


def test_password_comes_from_the_secret() -> None:
    assert Credentials(config()).secret() == "pw"


def test_token_provider_is_called_at_each_login() -> None:
    creds = Credentials(config(email_auth_mode="xoauth2"), f"{__name__}:issued_token")
    assert creds.secret() == "token-for-alice@example.com"


def test_xoauth2_string_is_the_sasl_initial_response() -> None:
    creds = Credentials(config(email_auth_mode="xoauth2"))
    decoded = base64.b64decode(creds.xoauth2_string())
    assert decoded == b"user=alice@example.com\x01auth=Bearer pw\x01\x01"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("nocolon", "package.module:function"),
        ("no_such_module_x:f", "No module named"),
        (f"{__name__}:missing", "has no attribute"),
        (f"{__name__}:__doc__", "not callable"),
    ],
)
def test_bad_token_provider_is_a_config_error(path: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Credentials(config(email_auth_mode="xoauth2"), path)


def test_missing_user_or_password_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="EmailUser"):
        Credentials(config(email_user=None))
    with pytest.raises(ConfigError, match="EmailPassword"):
        Credentials(config(email_password=None))


def test_auth_mode_none_is_refused_for_mailbox_providers() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        Credentials(config(email_auth_mode="none"))


def test_unreadable_secret_is_an_auth_error_without_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_ROUTER_SECRET", raising=False)
    creds = Credentials(config(email_password=Secret(env="NO_SUCH_ROUTER_SECRET")))
    with pytest.raises(ProviderAuthError, match="KeyError"):
        creds.secret()
