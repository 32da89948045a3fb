"""The XML configuration file bound to frozen typed models (pydantic-xml), and env settings.

The file follows the original router's Microsoft.Crm.Tools.EmailAgent.xml in spirit::

    <Configuration>
      <SystemConfiguration>...</SystemConfiguration>
      <Deployment Name="contoso">...</Deployment>
      <ProviderConfiguration Name="sales-imap">...</ProviderConfiguration>
    </Configuration>

Times are milliseconds, as in the original file. A secret element may carry its value inline, or
``Env="VAR"`` / ``File="/run/secrets/x"``; secrets are read when used and masked in every repr.
:func:`load_config` parses a file safely (no DTDs, no entities) and reports every problem as
``FILE:LINE: <Element>: what is wrong``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, field_serializer, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_xml import BaseXmlModel, attr, element

from router.errors import ConfigError
from router.models import Direction

Security = Literal["ssl", "starttls", "none"]
AuthMode = Literal["password", "xoauth2", "none"]
Policy = Literal["skip", "deliver", "quarantine"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STATE_SCHEMES = ("sqlite", "redis", "rediss", "unix", "memory")


class Secret(BaseXmlModel, frozen=True, search_mode="unordered"):
    """A secret value: inline text, an environment variable (``Env``) or a file (``File``)."""

    env: str | None = attr(name="Env", default=None)
    file: str | None = attr(name="File", default=None)
    value: str | None = None

    def __repr__(self) -> str:
        where = f"Env={self.env}" if self.env else f"File={self.file}" if self.file else "inline"
        return f"Secret({where}, ***)"

    __str__ = __repr__

    @field_serializer("value")
    def _mask_value(self, value: str | None) -> str | None:
        # model_dump()/model_dump_json() must never carry an inline secret.
        return None if value is None else "***"

    def get_secret_value(self) -> str:
        """Return the secret; raises KeyError/OSError when its source is missing."""
        if self.env:
            return os.environ[self.env]
        if self.file:
            return Path(self.file).read_text(encoding="utf-8").strip()
        return (self.value or "").strip()


class SystemConfiguration(
    BaseXmlModel, tag="SystemConfiguration", frozen=True, search_mode="unordered"
):
    """Service-wide settings (times in milliseconds)."""

    max_threads: int = element(tag="MaxThreads", default=50, ge=1, le=1000)
    max_thread_execution: int = element(tag="MaxThreadExecution", default=600_000, ge=1000)
    scheduling_period: int = element(tag="SchedulingPeriod", default=1000, ge=10)
    config_refresh_period: int = element(tag="ConfigRefreshPeriod", default=5000, ge=100)
    log_level: str = element(tag="LogLevel", default="INFO")
    state_store: str = element(tag="StateStore", default="sqlite:///email-router-state.db")
    #: How long finished ledger entries (delivered, sent, failed, skipped) are kept, in ms.
    ledger_retention: int = element(tag="LedgerRetention", default=30 * 24 * 3600 * 1000, ge=60_000)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().upper()
        if value in LOG_LEVELS:
            return value
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")

    @field_validator("state_store")
    @classmethod
    def _check_state_store(cls, value: str) -> str:
        return check_state_url(value)


def check_state_url(value: str) -> str:
    """Return the stripped state store URL; ValueError when its scheme is not supported."""
    value = value.strip()
    scheme = value.split(":", 1)[0].lower()
    if scheme == "sqlite" and not value.startswith("sqlite:///"):
        raise ValueError("must be sqlite:///path (three slashes)")
    if scheme not in STATE_SCHEMES:
        raise ValueError(f"must be a {', '.join(STATE_SCHEMES)} URL")
    return value


class Deployment(BaseXmlModel, tag="Deployment", frozen=True, search_mode="unordered"):
    """One CRM organisation and the credentials to reach it."""

    name: str = attr(name="Name", min_length=1)
    adapter: str = element(tag="Adapter", default="dataverse")
    crm_server_url: str = element(tag="CrmServerUrl")
    crm_auth_mode: Literal["ClientCredentials"] = element(
        tag="CrmAuthMode", default="ClientCredentials"
    )
    tenant_id: str | None = element(tag="TenantId", default=None)
    client_id: str | None = element(tag="ClientId", default=None)
    client_secret: Secret | None = element(tag="ClientSecret", default=None)
    authority: str | None = element(tag="Authority", default=None)
    api_version: str = element(tag="ApiVersion", default="9.2")
    ca_bundle: str | None = element(tag="CaBundle", default=None)
    #: Dataverse adapter tuning: activities per $batch request, requests in flight (Dataverse
    #: allows 52 per user) and whether attachments go inline or as records after the email.
    batch_size: int = element(tag="BatchSize", default=10, ge=1, le=1000)
    max_connections: int = element(tag="MaxConnections", default=16, ge=1, le=50)
    attachment_mode: Literal["inline", "separate"] = element(tag="AttachmentMode", default="inline")


class Parameter(BaseXmlModel, tag="Parameter", frozen=True, search_mode="unordered"):
    """One provider-specific option, validated by the provider's options model."""

    name: str = attr(name="Name", min_length=1)
    value: str = ""


class Parameters(BaseXmlModel, tag="Parameters", frozen=True, search_mode="unordered"):
    """The ``<Parameters>`` block of a provider instance."""

    items: tuple[Parameter, ...] = element(tag="Parameter", default=())


class ProviderConfiguration(
    BaseXmlModel, tag="ProviderConfiguration", frozen=True, search_mode="unordered"
):
    """One provider instance: a mailbox and a direction."""

    name: str = attr(name="Name", min_length=1)
    provider_class: str = element(tag="ProviderClass")
    direction: Direction = element(tag="Direction")
    deployment: str | None = element(tag="Deployment", default=None)
    email_server: str | None = element(tag="EmailServer", default=None)
    email_port: int | None = element(tag="EmailPort", default=None, ge=1, le=65535)
    email_security: Security = element(tag="EmailSecurity", default="ssl")
    email_auth_mode: AuthMode = element(tag="EmailAuthMode", default="password")
    email_user: str | None = element(tag="EmailUser", default=None)
    email_password: Secret | None = element(tag="EmailPassword", default=None)
    email_address: str | None = element(tag="EmailAddress", default=None)
    user_ids: tuple[str, ...] = element(tag="UserId", default=())
    queue_ids: tuple[str, ...] = element(tag="QueueId", default=())
    polling_period: int = element(tag="PollingPeriod", default=60_000, ge=100)
    max_message_count: int = element(tag="MaxMessageCount", default=100, ge=1, le=100_000)
    after_processing: str = element(tag="AfterProcessing", default="leave")
    maximum_delivery_attempts: int = element(
        tag="MaximumDeliveryAttempts", default=10, ge=1, le=1000
    )
    enabled: bool = element(tag="Enabled", default=True)
    #: Messages larger than this many bytes are quarantined instead of delivered (25 MiB).
    max_message_size: int = element(tag="MaxMessageSize", default=26_214_400, ge=1024)
    #: What to do with automatic replies (out-of-office...): skip, deliver or quarantine.
    auto_reply_policy: Policy = element(tag="AutoReplyPolicy", default="skip")
    #: What to do with non-delivery reports (bounces).
    bounce_policy: Policy = element(tag="BouncePolicy", default="skip")
    #: What to do with read receipts (message disposition notifications).
    read_receipt_policy: Policy = element(tag="ReadReceiptPolicy", default="skip")
    #: What to do with feedback/abuse reports (ARF).
    feedback_report_policy: Policy = element(tag="FeedbackReportPolicy", default="skip")
    parameters: Parameters = element(tag="Parameters", default_factory=Parameters)

    @field_validator("after_processing")
    @classmethod
    def _check_after_processing(cls, value: str) -> str:
        value = value.strip()
        if value in ("leave", "seen", "delete") or (
            value.startswith("move:") and value[5:].strip()
        ):
            return value
        raise ValueError("must be leave, seen, delete or move:Folder")

    @property
    def polling_seconds(self) -> float:
        return self.polling_period / 1000.0

    @property
    def parameter_dict(self) -> dict[str, str]:
        return {p.name: p.value for p in self.parameters.items}


class Configuration(BaseXmlModel, tag="Configuration", frozen=True, search_mode="unordered"):
    """The whole configuration file."""

    system: SystemConfiguration = element(
        tag="SystemConfiguration", default_factory=SystemConfiguration
    )
    deployments: tuple[Deployment, ...] = element(tag="Deployment", default=())
    providers: tuple[ProviderConfiguration, ...] = element(tag="ProviderConfiguration", default=())

    def provider(self, name: str) -> ProviderConfiguration:
        """Return the instance called ``name``; KeyError lists the known names."""
        for p in self.providers:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.providers) or "none"
        raise KeyError(f"no ProviderConfiguration named {name!r} (known: {known})")

    def deployment(self, name: str) -> Deployment:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(f"no Deployment named {name!r}")


class Settings(BaseSettings):
    """Settings from the environment (prefix ``ROUTER_``); the one place env vars are read.

    Precedence: an explicit argument (e.g. ``--config``) wins over these, and these win over the
    configuration file (``ROUTER_STATE_URL`` over ``<StateStore>``, ``ROUTER_LOG_LEVEL`` over
    ``<LogLevel>``). Build it with :func:`load_settings` to get a ConfigError on bad values.
    """

    model_config = SettingsConfigDict(env_prefix="ROUTER_", frozen=True)

    #: ``ROUTER_CONFIG``: the XML configuration file.
    config: Path = Path("router.xml")
    #: ``ROUTER_BROKER_URL``: the Celery broker (Redis).
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: ``ROUTER_STATE_URL``: the state store (``redis://...`` or ``sqlite:///...``); overrides
    #: the file's ``<StateStore>``.
    state_url: str | None = None
    #: ``ROUTER_LOG_FORMAT``: ``text`` for people, ``json`` (one object per line) for collectors.
    log_format: Literal["text", "json"] = "text"
    #: ``ROUTER_LOG_LEVEL``: overrides the file's ``<LogLevel>`` when set.
    log_level: str | None = None
    #: ``ROUTER_KEY_PREFIX``: prefix of every key the router writes to Redis.
    key_prefix: str = "er"
    #: ``ROUTER_FLOWER_BASIC_AUTH``: ``user:password`` protecting Flower (masked in reprs).
    flower_basic_auth: str | None = None
    #: ``ROUTER_METRICS_PORT``: serve Prometheus metrics on this port when set.
    metrics_port: int | None = None

    @field_validator("state_url")
    @classmethod
    def _check_state_url(cls, value: str | None) -> str | None:
        return None if value is None else check_state_url(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "flower_basic_auth" and value:
                yield name, "***"
            elif isinstance(value, str):
                yield name, mask_url(value)
            else:
                yield name, value


def mask_url(url: str) -> str:
    """Replace the password of a ``scheme://user:password@host`` URL with ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", url)


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")


def load_settings() -> Settings:
    """Read :class:`Settings` from the environment; ConfigError lists every bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"environment: ROUTER_{str(e['loc'][0]).upper()}: "
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise ConfigError("invalid ROUTER_* environment variables", problems) from None


def load_config(path: Path) -> Configuration:
    """Parse and check the configuration file at ``path``.

    Refuses DTDs and entities, checks every element, value, reference, provider class, provider
    ``<Parameters>`` and secret source, and raises :class:`~router.errors.ConfigError` whose
    ``problems`` lists all of them as ``FILE:LINE: <Element>: what is wrong``.
    """
    from router.configcheck import check_file  # it needs the provider registry, which needs us

    return check_file(Path(path))
