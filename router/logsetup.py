"""Logging for the entry points: handlers, secret redaction and per-message context.

Library code only does ``log = logging.getLogger(__name__)`` with lazy ``%s`` arguments; the CLI,
the single-process runtime and the Celery worker call :func:`configure_logging` once.

* :class:`RedactingFilter` masks secrets in every record that reaches a handler (passwords,
  bearer tokens, ``AUTH``/``LOGIN``/``PASS`` protocol lines, ``client_secret=`` form fields, URL
  passwords), in the message, its arguments and the formatted traceback, so a password logged by
  mistake never reaches the output. It also stamps ``instance`` and ``message_id`` from
  :func:`log_context` onto the record.
  Records of the protocol libraries (:data:`WIRE_LOGGERS`: imaplib's traffic as imapclient logs
  it, and any poplib/smtplib/aiosmtpd logger) are protocol payload, not prose: whatever their
  content, they are reduced by :func:`wire_summary` to their leading protocol words (tag, verb,
  numbers, literal sizes) and the number of characters withheld, so a fetched body, an ``AUTH``
  line or an XOAUTH2 string never reaches a handler, whichever pattern it would have needed.
* :class:`JsonFormatter` writes one JSON object per line for log collectors.

Redaction lives here, in the logging layer, not at each call site (see STYLE.md, lesson 10).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

from router.errors import ConfigError

MASK = "***"
#: The level that lets nothing through (the original router's ``<LogLevel>0``), and its name.
OFF, OFF_NAME = logging.CRITICAL + 1, "OFF"

_INSTANCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)
_MESSAGE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("message_id", default=None)

_KEYS = (
    r"password|passwd|pwd|secret|client_secret|client_assertion|access_token|refresh_token|"
    r"id_token|api_key|apikey|authtoken|token"
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
    # an XOAUTH2 string in base64 on its own ("user=..." encodes to "dXNlcj...")
    (re.compile(r"\bdXNlcj[A-Za-z0-9+/]{8,}={0,2}"), MASK),
)

#: Loggers that carry protocol traffic: imapclient routes every line imaplib sends and receives
#: (fetched bodies included) to ``imapclient.imaplib``; the others are here so that enabling a
#: library's debug output through logging can never bypass :func:`wire_summary`.
WIRE_LOGGERS = ("imapclient", "imaplib", "poplib", "smtplib", "mail.log")
#: Verbs after which the rest of a line is a credential (IMAP, POP3, SMTP).
_CREDENTIAL_VERBS = frozenset({"LOGIN", "AUTHENTICATE", "AUTH", "PASS", "APOP"})
#: A protocol word: marker, tag or verb in capitals, number or UID set, literal size ``{123}``.
_PROTOCOL_WORD = re.compile(r"[<>*+]|[A-Z][A-Z0-9.=-]{0,31}|[0-9][0-9:,*]{0,63}|\{[0-9]{1,12}\+?\}")
_WORD_LIMIT, _SCAN_LIMIT = 10, 300


def wire_summary(text: str) -> str:
    """Reduce one protocol-traffic record to its leading protocol words and its size.

    ``> b'A1 UID FETCH 1:3 (BODY.PEEK[])'`` stays whole (``> A1 UID FETCH 1:3 BODY.PEEK``); a
    quoted string, a mailbox name, a lower-case word or anything after ``LOGIN``/``AUTH``/``PASS``
    ends the summary and the rest is only counted. The first word may be a plain identifier, so
    ``untagged_responses[FETCH] 0 += [...]`` keeps its name. Cost: the first 300 characters.
    """
    tokens = _BYTES_REPR.sub(r"\1\3", text[:_SCAN_LIMIT], count=1).split()
    words = _wire_words(tokens)
    complete = len(words) == len(tokens) and len(text) <= _SCAN_LIMIT
    return " ".join(words) if complete else f"{' '.join(words)} [{len(text)} chars, withheld]"


def _wire_words(tokens: list[str]) -> list[str]:
    words: list[str] = []
    for token in tokens[:_WORD_LIMIT]:
        word = token.strip("()[]")
        first = not words and _IDENTIFIER.fullmatch(token)
        if not (first or _PROTOCOL_WORD.fullmatch(word)):
            break
        words.append(token if first else word)
        if word in _CREDENTIAL_VERBS:
            break
    return words


#: ``> b'...'`` as imaplib logs a line: the marker, then the bytes' repr (unwrapped to its text).
_BYTES_REPR = re.compile(r"^(\s*[<>]?\s*)b(['\"])(.*?)(?:\\r\\n)?\2?$", re.S)
_IDENTIFIER = re.compile(r"[A-Za-z_]{1,40}(\[[A-Z0-9.-]{0,32}\])?")


def is_wire_logger(name: str) -> bool:
    """True for a logger in (or under) :data:`WIRE_LOGGERS`."""
    return any(name == w or name.startswith(w + ".") for w in WIRE_LOGGERS)


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
            text = record.getMessage()
            record.msg = wire_summary(text) if is_wire_logger(record.name) else redact(text)
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
    log_file: str | None = None,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr), redacted, as text or JSON.

    ``level`` is a level name or ``OFF`` (the original router's ``<LogLevel>0``: nothing at
    all). With ``log_file`` (``<LogFile>``, an absolute path) the same records also go to that
    file, appended, reopened when logrotate moves it. Calling it again replaces the handlers it
    installed before (idempotent for tests and re-configuration); handlers installed by others
    are left alone. Returns the stream handler.
    """
    numeric = _level(level)  # before touching anything: a bad level changes nothing
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_router_handler", False)]:
        root.removeHandler(old)
        if isinstance(old, logging.FileHandler):
            old.close()
    handler: logging.Handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    handlers = [handler]
    if log_file:
        handlers.append(logging.handlers.WatchedFileHandler(log_file, encoding="utf-8"))
    for each in handlers:
        each.addFilter(RedactingFilter())
        each.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
        setattr(each, "_router_handler", True)  # noqa: B010 - marks the handlers we own
        root.addHandler(each)
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
    name = level.strip().upper()
    if name == OFF_NAME:
        return OFF
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ConfigError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING, ERROR or OFF)")
    return value
