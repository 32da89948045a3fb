"""The XML configuration file bound to frozen typed models (pydantic-xml), and env settings.

The file follows the original router's Microsoft.Crm.Tools.EmailAgent.xml in spirit::

    <Configuration>
      <SystemConfiguration>...</SystemConfiguration>
      <Deployment Name="contoso">...</Deployment>
      <ProviderConfiguration Name="sales-imap">...</ProviderConfiguration>
    </Configuration>

Times are milliseconds, as in the original file. A secret element may carry its value inline, or
``Env="VAR"`` / ``File="/run/secrets/x"``; secrets are read when used (files with a size bound)
and masked in every repr. Read a file with :func:`router.configcheck.load_config`: it parses it
safely (no DTDs, no entities) and reports every problem as ``FILE:LINE: <Element>: what is
wrong``. This module sits below the providers (they take its models), so it never loads a file:
checking one needs the provider registry.

The models also hold the rules no file may break, whoever builds them: names that state keys and
leases can carry (:func:`name_problem`), HTTPS to the CRM, and no password in clear text to a
remote mail server unless ``<AllowCleartextPassword>`` says so (:func:`cleartext_problem`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_xml import BaseXmlModel, attr, element

from router.errors import ConfigError
from router.models import Direction

Security = Literal["ssl", "starttls", "none"]
AuthMode = Literal["password", "xoauth2", "none"]
Policy = Literal["skip", "deliver", "quarantine"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF")
#: The original router's numeric ``<LogLevel>`` and the level each means here: 0 nothing,
#: 1 errors, 2 a line per mailbox cycle, 3 a line per message.
ORIGINAL_LOG_LEVELS = {"0": "OFF", "1": "ERROR", "2": "INFO", "3": "DEBUG"}
STATE_SCHEMES = ("sqlite", "redis", "rediss", "unix", "memory")

#: Largest secret file read, in bytes: a password, token or key is far smaller, and a bound
#: keeps ``File="/dev/urandom"`` or a wrong path from eating the memory.
SECRET_FILE_LIMIT = 64 * 1024

#: What an instance or Deployment name may be (it becomes part of state keys and lease names).
NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
_NAME_RULE = (
    f"must match {NAME_PATTERN} (a letter or digit, then letters, digits, '.', '_', '-' or '@'; "
    "at most 128 characters)"
)


def log_level_name(value: str) -> str:
    """The level name ``value`` stands for: a name (any case) or the original's 0-3.

    Raises ValueError naming what is allowed.
    """
    value = value.strip().upper()
    value = ORIGINAL_LOG_LEVELS.get(value, value)
    if value in LOG_LEVELS:
        return value
    raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, or 0-3 as in the original router")


def is_internal_name(name: str) -> bool:
    """Whether a state-store name is the router's own (``X#deliver`` lease, ``_outbound``)."""
    return name.startswith("_") or "#" in name


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an instance or a Deployment (with the allowed pattern), or None."""
    if _NAME.fullmatch(name):
        return None
    return f"{_NAME_RULE}: {_name_reason(name)}"


def _name_reason(name: str) -> str:
    checks = (
        ("#" in name, "'#' is reserved for the router's own leases (NAME#deliver)"),
        (
            name.startswith("_"),
            "a leading '_' is reserved for the router's own records (_outbound)",
        ),
        (any(c.isspace() or not c.isprintable() for c in name), "no spaces or control characters"),
        (
            any(c in ":/%" for c in name),
            "':', '/' and '%' separate or escape the parts of state keys",
        ),
        (len(name) > 128, f"{len(name)} characters is too long"),
        (not name[:1].isalnum(), "start with a letter or digit"),
    )
    bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "._@-"))), "")
    return next((why for failed, why in checks if failed), f"{bad!r} is not allowed")


def read_secret_file(path: str) -> str:
    """The stripped text of the secret file ``path``.

    Raises OSError when it cannot be opened, ConfigError when it is not a regular file, is
    larger than :data:`SECRET_FILE_LIMIT` or is not UTF-8 (the message never holds the content).
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(_secret_file_text(path, "is not a regular file"))
        data = file.read(SECRET_FILE_LIMIT + 1)
    if len(data) > SECRET_FILE_LIMIT:
        raise ConfigError(
            _secret_file_text(path, f"is larger than {SECRET_FILE_LIMIT // 1024} KiB")
        )
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(_secret_file_text(path, "is not UTF-8 text")) from None


def _secret_file_text(path: str, problem: str) -> str:
    return f"secret file {path!r} {problem}: give a file that holds only the secret"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine (127.0.0.0/8, ::1, localhost), without asking DNS."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def https_problem(url: str, what: str, fix: str) -> str | None:
    """Why ``url`` may not carry ``what`` (an http:// URL), or None; ``fix`` says what to do."""
    if url.strip().lower().startswith("http://"):
        return f"must be an https:// URL (http:// would send the {what} in clear text): {fix}"
    return None


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
        """Return the secret; raises KeyError/OSError when its source is missing.

        A file source is read with a bound: ConfigError when it is not a regular file, larger
        than :data:`SECRET_FILE_LIMIT` or not UTF-8.
        """
        if self.env:
            return os.environ[self.env]
        if self.file:
            return read_secret_file(self.file)
        return (self.value or "").strip()


def secret_problem(secret: Secret) -> str | None:
    """What is wrong with where ``secret`` comes from, or None; never includes the value.

    The configuration check asks it for every secret element, so a missing variable or file is
    reported at load time rather than at the first connection.
    """
    if secret.env and secret.file:
        return "use Env= or File=, not both"
    if (secret.env or secret.file) and (secret.value or "").strip():
        return "has both inline text and Env=/File=: use one"
    if secret.env:
        if secret.env not in os.environ:
            return f"environment variable {secret.env} is not set (export {secret.env}=...)"
        return (
            None
            if os.environ[secret.env].strip()
            else f"environment variable {secret.env} is empty"
        )
    if secret.file:
        return _file_problem(secret.file)
    return None if (secret.value or "").strip() else "is empty (give the secret, Env= or File=)"


def _file_problem(path: str) -> str | None:
    try:
        content = read_secret_file(path)  # bounded: /dev/urandom or a FIFO is refused at once
    except OSError as exc:
        return f"cannot read secret file {path!r}: {exc.strerror or type(exc).__name__}"
    except ConfigError as exc:
        return str(exc)
    return None if content else f"secret file {path!r} is empty"


class SystemConfiguration(
    BaseXmlModel, tag="SystemConfiguration", frozen=True, search_mode="unordered"
):
    """Service-wide settings (times in milliseconds)."""

    max_threads: int = element(tag="MaxThreads", default=50, ge=1, le=1000)
    max_thread_execution: int = element(tag="MaxThreadExecution", default=600_000, ge=1000)
    scheduling_period: int = element(tag="SchedulingPeriod", default=1000, ge=10)
    config_refresh_period: int = element(tag="ConfigRefreshPeriod", default=5000, ge=100)
    #: The original router's period (ms) of refreshing the users and queues it serves from the
    #: CRM: how often the mailboxes of ``<LoadMailboxes>`` are read again (:mod:`router.mailboxes`)
    #: - this file itself is re-read every ``ConfigRefreshPeriod``.
    config_update_period: int = element(tag="ConfigUpdatePeriod", default=300_000, ge=1000)
    #: A level name, or the original's 0-3 (:data:`ORIGINAL_LOG_LEVELS`); kept as the name.
    log_level: str = element(tag="LogLevel", default="INFO")
    #: Also write the log to this file (a path relative to the configuration file is read
    #: beside it: :func:`router.configcheck.load_config` makes it absolute).
    log_file: str | None = element(tag="LogFile", default=None)
    state_store: str = element(tag="StateStore", default="sqlite:///email-router-state.db")
    #: How long finished ledger entries (delivered, sent, failed, skipped) are kept, in ms.
    ledger_retention: int = element(tag="LedgerRetention", default=30 * 24 * 3600 * 1000, ge=60_000)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        return log_level_name(value)

    @field_validator("log_file")
    @classmethod
    def _check_log_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a file path (leave <LogFile> out to log to stderr only)")
        return None if value is None else value.strip()

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


LoadDirection = Literal["Incoming", "Outgoing", "Both"]
CredentialSource = Literal["ServiceAccount", "PerMailbox"]


class LoadMailboxes(BaseXmlModel, tag="LoadMailboxes", frozen=True, search_mode="unordered"):
    """``<LoadMailboxes Profile=… Direction=…/>`` in a Deployment: run the CRM's own mailboxes.

    The router reads the organisation's active, approved mailboxes whose delivery method is
    "Server-Side Synchronization or Email Router" every ``<ConfigUpdatePeriod>`` and runs one
    instance per mailbox and direction with the named :class:`EmailServerProfile`
    (:mod:`router.mailboxes`).
    """

    profile: str = attr(name="Profile", min_length=1)
    direction: LoadDirection = attr(name="Direction", default="Both")
    #: A custom text column of the mailbox table that ``mailboxes test`` fills with the reason
    #: of a failure (Dataverse has none of its own); unset: the reason is only printed.
    failure_reason_column: str | None = attr(name="FailureReasonColumn", default=None)

    @property
    def directions(self) -> tuple[Direction, ...]:
        """The directions loaded, incoming first."""
        if self.direction == "Both":
            return (Direction.INCOMING, Direction.OUTGOING)
        return (Direction(self.direction),)


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
    #: Run the organisation's own mailboxes through a profile (:class:`LoadMailboxes`).
    load_mailboxes: tuple[LoadMailboxes, ...] = element(tag="LoadMailboxes", default=())

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _refuse(name_problem(value), value)

    @field_validator("crm_server_url")
    @classmethod
    def _check_crm_server_url(cls, value: str) -> str:
        fix = "use the organisation's https:// address"
        return _refuse(https_problem(value, "bearer token", fix), value)

    @field_validator("authority")
    @classmethod
    def _check_authority(cls, value: str | None) -> str | None:
        fix = "use https://login.microsoftonline.com/<TenantId> or leave <Authority> out"
        return None if value is None else _refuse(https_problem(value, "client secret", fix), value)


def _refuse(problem: str | None, value: str) -> str:
    if problem:
        raise ValueError(problem)
    return value


class Parameter(BaseXmlModel, tag="Parameter", frozen=True, search_mode="unordered"):
    """One provider-specific option, validated by the provider's options model."""

    name: str = attr(name="Name", min_length=1)
    value: str = ""


class Parameters(BaseXmlModel, tag="Parameters", frozen=True, search_mode="unordered"):
    """The ``<Parameters>`` block of a provider instance."""

    items: tuple[Parameter, ...] = element(tag="Parameter", default=())


class ProviderOverrides(
    BaseXmlModel, tag="ProviderOverrides", frozen=True, search_mode="unordered"
):
    """The original router's ``<ProviderOverrides>`` block of a provider instance.

    Accepted so that a file carried over from the original keeps working. Two elements map to
    this router's settings (:data:`OVERRIDE_SETTINGS`, applied by
    :func:`router.configcheck.load_config`); the others have no effect here and each gets one
    warning saying why (:data:`OVERRIDE_NO_EFFECT`). Times are milliseconds.
    """

    maximum_delivery_attempts: int | None = element(
        tag="MaximumDeliveryAttempts", default=None, ge=1, le=1000
    )
    batch_size: int | None = element(tag="BatchSize", default=None, ge=1, le=100_000)
    pending_status_delay: int | None = element(tag="PendingStatusDelay", default=None, ge=0)
    sending_status_delay: int | None = element(tag="SendingStatusDelay", default=None, ge=0)
    request_batch_size: int | None = element(tag="RequestBatchSize", default=None, ge=0)
    cache_capacity: int | None = element(tag="CacheCapacity", default=None, ge=0)
    ews_retrieve_message_count: int | None = element(
        tag="EWSRetrieveMessageCount", default=None, ge=0
    )


#: ``<ProviderOverrides>`` elements that set one of this router's settings: element ->
#: (ProviderOverrides field, ProviderConfiguration field it sets, that field's element).
OVERRIDE_SETTINGS: dict[str, tuple[str, str, str]] = {
    "MaximumDeliveryAttempts": (
        "maximum_delivery_attempts",
        "maximum_delivery_attempts",
        "MaximumDeliveryAttempts",
    ),
    "BatchSize": ("batch_size", "max_message_count", "MaxMessageCount"),
}
#: ``<ProviderOverrides>`` elements accepted without effect, and why (one warning each).
OVERRIDE_NO_EFFECT: dict[str, str] = {
    "PendingStatusDelay": (
        "each pending email is claimed in the router's ledger when it is picked up, and a "
        "failed send is retried with backoff up to <MaximumDeliveryAttempts>"
    ),
    "SendingStatusDelay": (
        "an email left sending by a crash is recovered from the router's ledger, which "
        "records whether it was submitted, not after a delay"
    ),
    "RequestBatchSize": "requests per Web API $batch are the Deployment's <BatchSize>",
    "CacheCapacity": "the router keeps no cache of CRM users and queues",
    "EWSRetrieveMessageCount": (
        "there is no Exchange Web Services provider; <MaxMessageCount> bounds each poll"
    ),
}


def apply_overrides(cfg: ProviderConfiguration) -> ProviderConfiguration:
    """``cfg`` with the settings its ``<ProviderOverrides>`` maps (:data:`OVERRIDE_SETTINGS`)."""
    overrides = cfg.provider_overrides
    if overrides is None:
        return cfg
    update = {
        target: value
        for source, target, _ in OVERRIDE_SETTINGS.values()
        if (value := getattr(overrides, source)) is not None
    }
    return cfg.model_copy(update=update) if update else cfg


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
    #: Let ``EmailSecurity none`` send the password (or token) to a non-loopback server: only
    #: for a network the operator trusts end to end (see :func:`cleartext_problem`).
    allow_cleartext_password: bool = element(tag="AllowCleartextPassword", default=False)
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
    #: Failures of one message (fetch, parse or CRM call raising) before it is quarantined.
    max_message_attempts: int = element(tag="MaxMessageAttempts", default=3, ge=1, le=1000)
    #: What to do with automatic replies (out-of-office...): skip, deliver or quarantine.
    auto_reply_policy: Policy = element(tag="AutoReplyPolicy", default="skip")
    #: What to do with non-delivery reports (bounces).
    bounce_policy: Policy = element(tag="BouncePolicy", default="skip")
    #: What to do with read receipts (message disposition notifications).
    read_receipt_policy: Policy = element(tag="ReadReceiptPolicy", default="skip")
    #: What to do with feedback/abuse reports (ARF).
    feedback_report_policy: Policy = element(tag="FeedbackReportPolicy", default="skip")
    #: What to do with messages that are not emails: faxes, voice mail, missed calls, InfoPath
    #: forms, meeting requests / cancellations / responses (router.mail.classify).
    non_email_policy: Policy = element(tag="NonEmailPolicy", default="skip")
    parameters: Parameters = element(tag="Parameters", default_factory=Parameters)
    #: The original router's overrides (see :class:`ProviderOverrides`).
    provider_overrides: ProviderOverrides | None = element(tag="ProviderOverrides", default=None)
    #: ``idle``: also watch the mailbox with IMAP IDLE and poll as soon as mail arrives
    #: (``email-router watch`` / ``run``, :mod:`router.push`); polling stays the safety net.
    push: Literal["none", "idle"] = element(tag="Push", default="none")
    #: ``true``: each message is a carrier of forwarded originals (users' rules forward to this
    #: mailbox); each original is delivered for the user or queue it was for
    #: (:mod:`router.forwarding`).
    forward_mailbox: bool = element(tag="ForwardMailbox", default=False)
    #: What to do with a forwarded original whose CRM user or queue cannot be found.
    forward_unknown_policy: Literal["skip", "quarantine"] = element(
        tag="ForwardUnknownPolicy", default="quarantine"
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _refuse(name_problem(value), value)

    @model_validator(mode="after")
    def _check_cleartext(self) -> ProviderConfiguration:
        problem = cleartext_problem(self)
        if problem:
            raise ValueError(problem)
        return self

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
        """``<PollingPeriod>`` in seconds, as schedulers take it."""
        return self.polling_period / 1000.0

    @property
    def parameter_dict(self) -> dict[str, str]:
        """``<Parameters>`` as a dict, for the provider's options model."""
        return {p.name: p.value for p in self.parameters.items}


def cleartext_problem(cfg: ProviderConfiguration) -> str | None:
    """Why ``cfg`` would send its password or token in clear text to another machine, or None.

    The text starts with ``<EmailSecurity>`` so that ``validate`` points at that element.
    """
    server = (cfg.email_server or "").strip()
    if (
        cfg.email_security != "none"
        or cfg.email_auth_mode == "none"
        or cfg.allow_cleartext_password
        or not server
        or is_loopback_host(server)
    ):
        return None
    what = "token" if cfg.email_auth_mode == "xoauth2" else "password"
    return (
        f"<EmailSecurity> none would send the {what} in clear text to {server[:100]}, which is "
        "not a loopback address: use ssl or starttls, or add "
        "<AllowCleartextPassword>true</AllowCleartextPassword> if the network to the server is "
        "trusted"
    )


class EmailServerProfile(
    BaseXmlModel, tag="EmailServerProfile", frozen=True, search_mode="unordered"
):
    """The mail servers and credentials shared by every mailbox loaded through it.

    Credentials come from one service account with access to every mailbox
    (``<CredentialSource>ServiceAccount``: ``<EmailUser>`` - ``{address}`` in it is replaced
    by the mailbox's address, e.g. ``{address}*router`` for a Dovecot master user - and
    ``<EmailPassword>``), or per mailbox (``PerMailbox``: ``<MailboxCredentials File=…/>``, a
    JSON object keyed by address whose values are a password or ``{"User": …, "Password": …}``).
    """

    name: str = attr(name="Name", min_length=1)
    incoming_provider_class: str = element(tag="IncomingProviderClass", default="imap")
    incoming_server: str | None = element(tag="IncomingServer", default=None)
    incoming_port: int | None = element(tag="IncomingPort", default=None, ge=1, le=65535)
    incoming_security: Security = element(tag="IncomingSecurity", default="ssl")
    incoming_parameters: Parameters = element(tag="IncomingParameters", default_factory=Parameters)
    outgoing_provider_class: str = element(tag="OutgoingProviderClass", default="smtp")
    outgoing_server: str | None = element(tag="OutgoingServer", default=None)
    outgoing_port: int | None = element(tag="OutgoingPort", default=None, ge=1, le=65535)
    outgoing_security: Security = element(tag="OutgoingSecurity", default="starttls")
    outgoing_parameters: Parameters = element(tag="OutgoingParameters", default_factory=Parameters)
    email_auth_mode: AuthMode = element(tag="EmailAuthMode", default="password")
    allow_cleartext_password: bool = element(tag="AllowCleartextPassword", default=False)
    credential_source: CredentialSource = element(tag="CredentialSource", default="ServiceAccount")
    email_user: str | None = element(tag="EmailUser", default=None)
    email_password: Secret | None = element(tag="EmailPassword", default=None)
    mailbox_credentials: Secret | None = element(tag="MailboxCredentials", default=None)
    polling_period: int = element(tag="PollingPeriod", default=60_000, ge=100)
    max_message_count: int = element(tag="MaxMessageCount", default=100, ge=1, le=100_000)
    after_processing: str = element(tag="AfterProcessing", default="leave")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _refuse(name_problem(value), value)

    @model_validator(mode="after")
    def _check_credentials(self) -> EmailServerProfile:
        if self.email_auth_mode == "none":
            return self
        if self.credential_source == "PerMailbox" and self.mailbox_credentials is None:
            raise ValueError("<MailboxCredentials> is required with CredentialSource PerMailbox")
        if self.credential_source == "ServiceAccount" and not (
            self.email_user and self.email_password
        ):
            raise ValueError(
                "<EmailUser> and <EmailPassword> are required with CredentialSource "
                "ServiceAccount (the account with access to every mailbox of the profile)"
            )
        return self


class Configuration(BaseXmlModel, tag="Configuration", frozen=True, search_mode="unordered"):
    """The whole configuration file."""

    system: SystemConfiguration = element(
        tag="SystemConfiguration", default_factory=SystemConfiguration
    )
    deployments: tuple[Deployment, ...] = element(tag="Deployment", default=())
    providers: tuple[ProviderConfiguration, ...] = element(tag="ProviderConfiguration", default=())
    profiles: tuple[EmailServerProfile, ...] = element(tag="EmailServerProfile", default=())

    def profile(self, name: str) -> EmailServerProfile:
        """Return the EmailServerProfile called ``name``; KeyError when there is none."""
        for p in self.profiles:
            if p.name == name:
                return p
        raise KeyError(f"no EmailServerProfile named {name!r}")

    def provider(self, name: str) -> ProviderConfiguration:
        """Return the instance called ``name``; KeyError lists the known names."""
        for p in self.providers:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.providers) or "none"
        raise KeyError(f"no ProviderConfiguration named {name!r} (known: {known})")

    def deployment(self, name: str) -> Deployment:
        """Return the Deployment called ``name``; KeyError when there is none."""
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
    #: ``ROUTER_BROKER_CA_FILE``: CA bundle that signs a ``rediss://`` broker's certificate
    #: (default: the system's). The certificate and host name are always verified.
    broker_ca_file: Path | None = None
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
    #: ``ROUTER_METRICS_ADDR``: address of the metrics server (``0.0.0.0`` in containers).
    metrics_addr: str = "127.0.0.1"
    #: ``ROUTER_METRICS_TOKEN`` / ``ROUTER_METRICS_TOKEN_FILE``: the bearer token a scraper must
    #: send; metrics are never served without one (masked in reprs).
    metrics_token: str | None = None
    metrics_token_file: Path | None = None

    @field_validator("state_url")
    @classmethod
    def _check_state_url(cls, value: str | None) -> str | None:
        return None if value is None else check_state_url(value)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str | None) -> str | None:
        return None if value is None else log_level_name(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("flower_basic_auth", "metrics_token") and value:
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
