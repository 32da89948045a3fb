"""The console's settings from the environment (``ROUTER_CONSOLE_*``) and its credential rule.

Use :func:`load_console_settings` once at start and :func:`credentials` to get the one user
who may sign in. The rule is Flower's (``workers.flower``): without a user name and a password
the console refuses to start, because it can replay, drop and pause.

* ``ROUTER_CONSOLE_USER`` and ``ROUTER_CONSOLE_PASSWORD`` (or ``ROUTER_CONSOLE_PASSWORD_FILE``,
  whose text is the password: a Kubernetes or Docker secret);
* ``ROUTER_CONSOLE_SECRET_KEY``: signs the session cookie; when unset, a random key is made at
  every start (everyone signs in again after a restart, and several replicas need one key);
* ``ROUTER_CONSOLE_AUDIT_LOG``: the audit log file (see :func:`router.console.audit.default_path`);
* ``ROUTER_CONSOLE_SECURE_COOKIE``: send the session cookie over HTTPS only (set it when TLS is
  terminated in front of the console).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from router.config import read_secret_file
from router.errors import ConfigError

#: What an operator reads when the console refuses to start.
NO_CREDENTIALS = (
    "refusing to start the console without credentials: set ROUTER_CONSOLE_USER and "
    "ROUTER_CONSOLE_PASSWORD (or ROUTER_CONSOLE_PASSWORD_FILE)"
)


class ConsoleSettings(BaseSettings):
    """``ROUTER_CONSOLE_*`` variables; the only place the console reads the environment."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_CONSOLE_", frozen=True)

    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    secret_key: SecretStr | None = None
    audit_log: Path | None = None
    secure_cookie: bool = False


@dataclass(frozen=True, slots=True)
class Credentials:
    """The one user who may sign in (the password is never shown in a repr)."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=***)"


def load_console_settings() -> ConsoleSettings:
    """Read :class:`ConsoleSettings`; ConfigError names a bad variable (never its value)."""
    try:
        return ConsoleSettings()
    except ValidationError as exc:
        names = sorted({f"ROUTER_CONSOLE_{str(e['loc'][0]).upper()}" for e in exc.errors()})
        raise ConfigError(f"environment: invalid {', '.join(names)}") from None


def credentials(settings: ConsoleSettings) -> Credentials:
    """The user and password; ConfigError (:data:`NO_CREDENTIALS`) when either is missing."""
    password = settings.password.get_secret_value() if settings.password else ""
    if not password and settings.password_file is not None:
        password = _password_file(settings.password_file)
    user = (settings.user or "").strip()
    if not user or not password.strip():
        raise ConfigError(NO_CREDENTIALS)
    return Credentials(user, password)


def _password_file(path: Path) -> str:
    try:
        return read_secret_file(str(path))
    except OSError as exc:
        raise ConfigError(
            f"ROUTER_CONSOLE_PASSWORD_FILE: cannot read {path}: {exc.strerror or exc}"
        ) from None


def session_key(settings: ConsoleSettings) -> bytes:
    """The key that signs session cookies: ``ROUTER_CONSOLE_SECRET_KEY``, else a new random one."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value().encode()
    return secrets.token_bytes(32)
