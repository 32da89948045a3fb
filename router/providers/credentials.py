"""Credentials of mail providers: the password, or an OAuth2 access token for XOAUTH2.

Use :class:`Credentials` in a provider's constructor; it checks the configuration up front
(a ConfigError at start-up, not a failure at the first poll) and hands out the secret only when
the provider logs in. For ``<EmailAuthMode>xoauth2</EmailAuthMode>`` the access token comes from:

* ``<Parameter Name="token_provider">package.module:function</Parameter>`` - called with the
  instance's :class:`~router.config.ProviderConfiguration` at every login, returns a fresh token
  (the function caches and refreshes tokens itself, e.g. with MSAL);
* otherwise the ``<EmailPassword>`` secret, read as the token.
"""

from __future__ import annotations

import base64
import importlib
from collections.abc import Callable

from router.config import ProviderConfiguration
from router.errors import ConfigError, ProviderAuthError

TokenProvider = Callable[[ProviderConfiguration], str]


class Credentials:
    """The login of one instance: user name plus password or XOAUTH2 token source."""

    def __init__(
        self,
        config: ProviderConfiguration,
        token_provider: str | None = None,
        *,
        modes: tuple[str, ...] = ("password", "xoauth2"),
    ) -> None:
        self.config, self.mode = config, config.email_auth_mode
        if self.mode not in modes:
            raise ConfigError(
                f"{config.name}: <EmailAuthMode> {self.mode!r} is not supported here "
                f"(use {' or '.join(modes)})"
            )
        if not config.email_user:
            raise ConfigError(f"{config.name}: <EmailUser> is required")
        self.user = config.email_user
        self._provider = (
            load_token_provider(config.name, token_provider) if token_provider else None
        )
        if self._provider is None and config.email_password is None:
            raise ConfigError(f"{config.name}: <EmailPassword> is required")

    def secret(self) -> str:
        """The password (or token); raises ProviderAuthError if its source cannot be read."""
        try:
            if self._provider is not None:
                return self._provider(self.config)
            assert self.config.email_password is not None  # checked in __init__
            return self.config.email_password.get_secret_value()
        except (KeyError, OSError) as exc:
            raise ProviderAuthError(
                f"{self.config.name}: cannot read the credential: {type(exc).__name__}"
            ) from None

    def xoauth2_string(self) -> str:
        """The base64 SASL XOAUTH2 initial response (for POP3/SMTP ``AUTH XOAUTH2 ...``)."""
        raw = f"user={self.user}\x01auth=Bearer {self.secret()}\x01\x01"
        return base64.b64encode(raw.encode()).decode("ascii")


def load_token_provider(instance: str, path: str) -> TokenProvider:
    """Import ``package.module:function``; ConfigError when it is missing or not callable."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{instance}: token_provider {path!r} must be package.module:function")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{instance}: token_provider {path!r}: {exc}") from None
    if not callable(func):
        raise ConfigError(f"{instance}: token_provider {path!r} is not callable")
    return func


__all__ = ["Credentials", "TokenProvider", "load_token_provider"]
