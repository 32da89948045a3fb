"""Credentials of mail providers: the password, or an OAuth2 access token for XOAUTH2.

Use :class:`Credentials` in a provider's constructor; it checks the configuration up front
(a ConfigError at start-up, not a failure at the first poll) and hands out the secret only when
the provider logs in. For ``<EmailAuthMode>xoauth2</EmailAuthMode>`` the access token comes from,
in this order:

* client credentials (Microsoft 365): ``<Parameter Name="tenant_id">`` and ``client_id`` (and
  optionally ``authority``, default ``https://login.microsoftonline.com/<tenant_id>``) with the
  app's client secret in ``<EmailPassword>``. The token (scope
  ``https://outlook.office365.com/.default``) is acquired through :class:`router.oauth.TokenSource`,
  cached for the whole process (providers are built per cycle; the token outlives them) and
  renewed before it expires; a token the mail server refuses is replaced once
  (:meth:`Credentials.login_with_token`);
* ``<Parameter Name="token_provider">package.module:function</Parameter>`` - called with the
  instance's :class:`~router.config.ProviderConfiguration` at every login, returns a fresh token
  (the function caches and refreshes tokens itself);
* otherwise the ``<EmailPassword>`` secret, read as the token (a token made by hand).

Provider options models inherit :class:`OAuthOptions` to accept ``tenant_id``, ``client_id`` and
``authority``; a half-given set (a tenant without a client id, ...) is refused at the
``<Parameter>`` line by ``email-router validate``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import threading
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from router.config import ProviderConfiguration
from router.errors import ConfigError, ProviderAuthError, ProviderUnavailable, RouterError
from router.oauth import OUTLOOK_SCOPE, TokenSource, default_authority

TokenProvider = Callable[[ProviderConfiguration], str]


class OAuthOptions(BaseModel):
    """``<Parameters>`` of XOAUTH2 client credentials: ``tenant_id``, ``authority``,
    ``client_id``; a provider's options model inherits it (IMAP, POP3, SMTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str | None = Field(default=None, min_length=1)
    authority: str | None = Field(default=None, min_length=1)
    #: Checked last and even when absent: it must come with a tenant (or authority) and back.
    client_id: str | None = Field(default=None, min_length=1, validate_default=True)

    @field_validator("authority")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().lower().startswith("https://"):
            raise ValueError("must be an https:// URL (the client secret is sent there)")
        return value

    @field_validator("client_id")
    @classmethod
    def _complete(cls, value: str | None, info: ValidationInfo) -> str | None:
        where = info.data.get("tenant_id") or info.data.get("authority")
        if value is None and where:
            raise ValueError("is required with tenant_id / authority (the app's client id)")
        if value is not None and not where and "authority" in info.data:
            raise ValueError("needs tenant_id (or authority) to know where to get tokens")
        return value

    @property
    def client_credentials(self) -> bool:
        """True when a client id is configured: tokens come from the token endpoint."""
        return self.client_id is not None

    def authority_url(self) -> str:
        """``authority``, or the public cloud's authority of ``tenant_id``."""
        return (self.authority or default_authority(self.tenant_id)).strip()


class MailTokenSource(TokenSource):
    """A :class:`~router.oauth.TokenSource` whose errors are provider errors (mail terms)."""

    auth_error: ClassVar[type[RouterError]] = ProviderAuthError
    unavailable_error: ClassVar[type[RouterError]] = ProviderUnavailable
    hints: ClassVar[dict[str, str]] = {
        "invalid_client": "check client_id and the client secret in <EmailPassword> (expired?)",
        "unauthorized_client": "the app registration is not enabled in this tenant",
        "invalid_scope": "the app has no Exchange Online permission (IMAP/POP/SMTP.AccessAsApp)",
        "invalid_request": "check tenant_id / authority",
    }
    ca_hint: ClassVar[str] = "check <Parameter Name='ca_bundle'>"


#: Builds a token source: (authority, client_id, secret, scopes, ca_bundle) -> source.
SourceFactory = Callable[[str, str, str, list[str], str | None], TokenSource]


class _Sources:
    """Token sources of the process, one per (authority, client, scope, CA, secret, kind).

    Providers are built per cycle; their tokens must outlive them, or every cycle would ask
    the identity provider for a new one. The secret is part of the key (as a hash) so that a
    rotated secret gets a new source at once, while every cycle of an instance - and every
    instance of the same app - shares one cached token.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[object, ...], TokenSource] = {}
        #: The default kind of source: the seam unit tests replace.
        self.factory: SourceFactory = MailTokenSource

    def get(
        self,
        authority: str,
        client_id: str,
        secret: str,
        ca_bundle: str | None,
        *,
        scope: str = OUTLOOK_SCOPE,
        factory: SourceFactory | None = None,
    ) -> TokenSource:
        """The shared source of these credentials (built by ``factory`` the first time)."""
        build = factory or self.factory
        digest = hashlib.sha256(secret.encode()).hexdigest()
        key = (authority, client_id, scope, ca_bundle or "", digest, build)
        with self._lock:
            source = self._by_key.get(key)
            if source is None:
                source = build(authority, client_id, secret, [scope], ca_bundle)
                self._by_key[key] = source
            return source

    def clear(self) -> None:
        """Forget every source (tests; a process that reloads its configuration)."""
        with self._lock:
            self._by_key.clear()


#: The process's token sources (see :class:`_Sources`).
SOURCES = _Sources()


class Credentials:
    """The login of one instance: user name plus password or XOAUTH2 token source.

    ``oauth`` holds the instance's client-credentials options and ``ca_bundle`` the CA of the
    token endpoint (the provider's own ``ca_bundle`` option: a PEM file may hold several CAs).
    """

    def __init__(
        self,
        config: ProviderConfiguration,
        token_provider: str | None = None,
        *,
        modes: tuple[str, ...] = ("password", "xoauth2"),
        oauth: OAuthOptions | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        self.config, self.mode = config, config.email_auth_mode
        self.oauth = oauth if oauth is not None and oauth.client_credentials else None
        self._check_oauth(token_provider)
        if self.mode not in modes:
            raise ConfigError(
                f"{config.name}: <EmailAuthMode> {self.mode!r} is not supported here "
                f"(use {' or '.join(modes)})"
            )
        if not config.email_user:
            raise ConfigError(f"{config.name}: <EmailUser> is required")
        self.user = config.email_user
        self.ca_bundle = ca_bundle
        self._provider = (
            load_token_provider(config.name, token_provider) if token_provider else None
        )
        if self._provider is None and config.email_password is None:
            raise ConfigError(f"{config.name}: <EmailPassword> is required")

    def _check_oauth(self, token_provider: str | None) -> None:
        if self.oauth is None:
            return
        if self.mode != "xoauth2":
            raise ConfigError(
                f"{self.config.name}: <EmailAuthMode> must be xoauth2 when client_id / "
                f"tenant_id are given (it is {self.mode!r})"
            )
        if token_provider:
            raise ConfigError(
                f"{self.config.name}: give either token_provider or client_id / tenant_id, not both"
            )

    def secret(self) -> str:
        """The password (or token); raises ProviderAuthError if its source cannot be read.

        With client credentials this is a cached access token, acquired when none is valid.
        """
        if self.oauth is not None:
            return self.token_source().token()
        try:
            if self._provider is not None:
                return self._provider(self.config)
            return self._password()
        except (KeyError, OSError) as exc:
            raise ProviderAuthError(
                f"{self.config.name}: cannot read the credential: {type(exc).__name__}"
            ) from None

    def token_source(self) -> TokenSource:
        """The process-wide token source of this instance's app (client credentials only)."""
        if self.oauth is None:
            raise ConfigError(f"{self.config.name}: no client_id / tenant_id configured")
        try:
            secret = self._password()
        except (KeyError, OSError) as exc:
            raise ProviderAuthError(
                f"{self.config.name}: cannot read the client secret: {type(exc).__name__}"
            ) from None
        oauth = self.oauth
        return SOURCES.get(oauth.authority_url(), oauth.client_id or "", secret, self.ca_bundle)

    def login_with_token(
        self, login: Callable[[str], None], refused: tuple[type[BaseException], ...]
    ) -> None:
        """Run ``login(token)``; when the server refuses an acquired token, renew it once.

        A token can be revoked or expire early (a clock skew, a policy change): one fresh token
        tells that apart from a real credential problem. Only for client credentials; a token
        given by hand or by a token_provider is tried once.
        """
        token = self.secret()
        try:
            login(token)
        except refused:
            if self.oauth is None:
                raise
            login(self.token_source().refresh(token))

    def xoauth2_string(self, token: str | None = None) -> str:
        """The base64 SASL XOAUTH2 initial response (for POP3/SMTP ``AUTH XOAUTH2 ...``)."""
        bearer = token if token is not None else self.secret()
        raw = f"user={self.user}\x01auth=Bearer {bearer}\x01\x01"
        return base64.b64encode(raw.encode()).decode("ascii")

    def _password(self) -> str:
        assert self.config.email_password is not None  # checked in __init__
        return self.config.email_password.get_secret_value()


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
    provider: TokenProvider = func  # its signature is the plug-in's promise, checked when called
    return provider


__all__ = [
    "SOURCES",
    "Credentials",
    "MailTokenSource",
    "OAuthOptions",
    "TokenProvider",
    "load_token_provider",
]
