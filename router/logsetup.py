"""Logging for the entry points: handlers, secret redaction and per-message context.

Library code only does ``log = logging.getLogger(__name__)`` with lazy ``%s`` arguments; the CLI,
the single-process runtime and the Celery worker call :func:`configure_logging` once.

* :class:`RedactingFilter` masks secrets in every record that reaches a handler (passwords,
  bearer tokens, ``AUTH``/``LOGIN``/``PASS`` protocol lines, ``client_secret=`` form fields, URL
  passwords), in the message, its arguments and the formatted traceback, so a password logged by
  mistake never reaches the output. It also stamps ``instance`` and ``message_id`` from
  :func:`log_context` onto the record.
* :class:`JsonFormatter` writes one JSON object per line for log collectors.

Redaction lives here, in the logging layer, not at each call site (see STYLE.md, lesson 10).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

from router.errors import ConfigError

MASK = "***"

_INSTANCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)
_MESSAGE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("message_id", default=None)

_KEYS = (
    r"password|passwd|pwd|secret|client_secret|client_assertion|access_token|refresh_token|"
    r"id_token|api_key|apikey|token"
)

#: (pattern, replacement): each keeps the label and masks only the secret part.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer/Basic <credentials>; "Bearer eyJ..." anywhere
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{4,}", re.I), rf"\1 {MASK}"),
    # IMAP: a1 LOGIN user password   (user and password may be quoted)
    (re.compile(r"\b(LOGIN\s+(?:\"[^\"]*\"|\S+)\s+)(?:\"(?:[^\"\\]|\\.)*\"|\S+)"), rf"\1{MASK}"),
    # SMTP AUTH PLAIN <b64>, IMAP AUTHENTICATE XOAUTH2 <b64>
    (re.compile(r"\b(AUTH(?:ENTICATE)?\s+[A-Za-z0-9_-]+\s+)\S+", re.I), rf"\1{MASK}"),
    # POP3: PASS secret / APOP user digest
    (re.compile(r"\b(PASS\s+)\S+"), rf"\1{MASK}"),
    (re.compile(r"\b(APOP\s+\S+\s+)\S+"), rf"\1{MASK}"),
    # form fields and query strings: client_secret=...&
    (re.compile(rf"\b({_KEYS})=[^&\s'\"]+", re.I), rf"\1={MASK}"),
    # JSON / repr / YAML-ish: "password": "x", 'client_secret': 'x', password: x
    (
        re.compile(rf"([\"']?\b(?:{_KEYS})\b[\"']?\s*:\s*)(?:\"[^\"]*\"|'[^']*'|[^\s,}}]+)", re.I),
        rf"\1{MASK}",
    ),
    # scheme://user:password@host
    (re.compile(r"(://[^/@:\s]*:)[^/@\s]+@"), rf"\1{MASK}@"),
)


def redact(text: str) -> str:
    """Return ``text`` with every secret the rules recognise replaced by ``***``."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def log_context(instance: str | None = None, message_id: str | None = None) -> Iterator[None]:
    """Within the block, records carry ``instance`` / ``message_id`` (unset ones are kept)."""
    tokens = []
    if instance is not None:
        tokens.append((_INSTANCE, _INSTANCE.set(instance)))
    if message_id is not None:
        tokens.append((_MESSAGE_ID, _MESSAGE_ID.set(message_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class RedactingFilter(logging.Filter):
    """Put on every handler: masks secrets and adds ``instance``/``message_id`` to records.

    Attached to handlers (not loggers) so records propagated from any library logger pass
    through it. The record is rewritten in place, so other handlers see the masked text too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_redacted", False):
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
            setattr(record, "_redacted", True)  # noqa: B010 - LogRecord has no such slot
        _stamp_context(record)
        return True


def _stamp_context(record: logging.LogRecord) -> None:
    # extra={"instance": ...} given at the call site wins over the context.
    for key, var in (("instance", _INSTANCE), ("message_id", _MESSAGE_ID)):
        if getattr(record, key, None) is None:
            setattr(record, key, var.get())
    parts = [f"{k}={v}" for k in ("instance", "message_id") if (v := getattr(record, k))]
    setattr(record, "context", f" [{' '.join(parts)}]" if parts else "")  # noqa: B010


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(context)s: %(message)s"

# Attributes every LogRecord has; anything else was passed with extra= and goes into JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "context",
    "_redacted",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, instance, message_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "instance": getattr(record, "instance", None),
            "message_id": getattr(record, "message_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = redact(value) if isinstance(value, str) else _plain(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def configure_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr), redacted, as text or JSON.

    Calling it again replaces the handler it installed before (idempotent for tests and
    re-configuration); handlers installed by others are left alone. Returns the handler.
    """
    numeric = _level(level)  # before touching anything: a bad level changes nothing
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_router_handler", False)]:
        root.removeHandler(old)
    handler: logging.Handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    setattr(handler, "_router_handler", True)  # noqa: B010 - marks the handler we own
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def ensure_logging(level: str | None, fmt: Literal["text", "json"] = "text") -> None:
    """Configure logging for a command unless the host process already did (pytest, Celery).

    ``level`` None means WARNING: one-shot commands stay quiet unless asked.
    """
    if not logging.getLogger().handlers:
        configure_logging(level or "WARNING", fmt)


class _StderrHandler(logging.StreamHandler[IO[str]]):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest and daemons swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def _level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ConfigError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING or ERROR)")
    return value
