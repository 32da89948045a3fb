"""Base classes of email providers: they own the flow, backends fill in small primitives.

Use :class:`IncomingProvider` for a source of mail (IMAP, POP3, a feed, ...) and
:class:`OutgoingProvider` for a way to send (SMTP, ...). A backend:

* declares ``alias``, an ``options_model`` (pydantic) for its ``<Parameters>``, the library
  exceptions it treats as passing faults (``retryable_errors``) and as credential problems
  (``auth_errors``);
* implements a handful of ``_underscore`` primitives (connect, list after a cursor, fetch one,
  apply the post-processing action, close / submit one).

The base class wraps every primitive: a library exception becomes a router error
(:class:`~router.errors.ProviderUnavailable`, :class:`~router.errors.ProviderAuthError`,
:class:`~router.errors.ProviderProtocolError`), so the core and the runtimes never see ``imaplib``
or ``smtplib`` exceptions. Error messages name the instance and the operation, never a secret.

Leases, the ledger and cursors are not the provider's business: ``router.service`` drives the
cycle. A provider that needs its own persistent state (e.g. the timestamp of the last item of a
feed) reads and writes it through :class:`InstanceState`, which the service saves atomically with
the cursor.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from router.config import ProviderConfiguration
from router.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
    ProviderUnavailable,
    RouterError,
)
from router.models import Direction, InboundMessage, MessageRef, OutboundEmail

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]


class NoOptions(BaseModel):
    """Options model of a provider that takes no ``<Parameters>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class InstanceState:
    """The persistent run-time state of one instance, handed to its provider each cycle.

    ``cursor`` marks how far the mailbox has been read (the provider defines its shape);
    ``data`` is free provider-defined JSON. Both are saved by the service with the instance's
    lease token, atomically, and survive restarts.
    """

    cursor: JsonDict | None
    data: JsonDict


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """Outcome of handing one email to the mail server.

    ``refused`` maps each refused recipient to the server's reply (code, text). An email whose
    recipients were all refused, or that the server refused with a 5xx, raises
    :class:`~router.errors.MessageRejected` instead.
    """

    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]]
    temporary: bool = False


class Provider(abc.ABC):
    """What every provider has: its configuration, validated options and error wrapping."""

    alias: ClassVar[str] = ""
    direction: ClassVar[Direction]
    options_model: ClassVar[type[BaseModel]] = NoOptions
    capabilities: ClassVar[frozenset[str]] = frozenset()
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (
        socket.timeout,
        ConnectionError,
        TimeoutError,
    )
    auth_errors: ClassVar[tuple[type[BaseException], ...]] = (ssl.SSLCertVerificationError,)
    protocol_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, config: ProviderConfiguration) -> None:
        self.config = config
        self.name = config.name
        self.options: Any = self.parse_options(config)

    @classmethod
    def parse_options(cls, config: ProviderConfiguration) -> BaseModel:
        """Validate ``<Parameters>`` against ``options_model``; ConfigError names the bad one."""
        try:
            return cls.options_model.model_validate(config.parameter_dict)
        except ValidationError as exc:
            problems = [
                f"<Parameter Name={'.'.join(map(str, e['loc']))!r}>: {e['msg']}"
                for e in exc.errors()
            ]
            raise ConfigError(f"{config.name}: " + "; ".join(problems), problems) from None

    @contextlib.contextmanager
    def wrap(self, operation: str) -> Iterator[None]:
        """Translate library exceptions raised inside the block into router errors."""
        try:
            yield
        except RouterError:
            raise
        except self.auth_errors as exc:
            raise ProviderAuthError(self._describe(operation, exc)) from exc
        except self.retryable_errors as exc:
            raise ProviderUnavailable(self._describe(operation, exc)) from exc
        except self.protocol_errors as exc:
            raise ProviderProtocolError(self._describe(operation, exc)) from exc
        except OSError as exc:
            raise ProviderUnavailable(self._describe(operation, exc)) from exc

    def _describe(self, operation: str, exc: BaseException) -> str:
        server = self.config.email_server or "-"
        return f"{self.name}: {operation} on {server} failed: {type(exc).__name__}: {exc}"

    def open(self) -> None:
        """Connect and authenticate."""
        with self.wrap("connect"):
            self._connect()

    def close(self) -> None:
        """Disconnect; errors while closing are logged, never raised."""
        try:
            self._close()
        except Exception as exc:  # a dead connection must not mask the cycle's real outcome
            log.debug("%s: close failed: %s", self.name, type(exc).__name__)

    def __enter__(self) -> Provider:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open the connection and log in."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Log out and close the connection."""


class IncomingProvider(Provider):
    """Base of providers that read a mailbox.

    Primitives: ``_connect``, ``_close``, ``_list_new(cursor, limit)``, ``_fetch(ref)``,
    ``_post_process(refs, action)`` and ``_advance(cursor, refs)``.
    """

    direction = Direction.INCOMING

    def list_new(self, state: InstanceState, limit: int) -> list[MessageRef]:
        """Refs of messages after ``state.cursor``, oldest first, at most ``limit``."""
        with self.wrap("list"):
            return list(self._list_new(state, limit))[:limit]

    def fetch(self, ref: MessageRef) -> InboundMessage:
        """Download one message without changing its flags on the server."""
        with self.wrap(f"fetch {ref.key}"):
            return InboundMessage(ref, self._fetch(ref))

    def fetch_many(self, refs: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        """Download several messages in order; backends override it to batch FETCH commands.

        Messages are yielded one by one so the caller can stage each before the next arrives.
        """
        for ref in refs:
            yield self.fetch(ref)

    def commit(self) -> None:
        """Make post-processing durable (POP3 deletes happen at QUIT); default: nothing to do."""

    def advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        """Return the cursor after ``refs`` were staged (the service saves it, fenced)."""
        return self._advance(state, refs)

    def post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        """Apply ``action`` (leave / seen / move:Folder / delete) to delivered ``refs``."""
        if not refs or action == "leave":
            return
        with self.wrap(f"post-process {action}"):
            self._post_process(refs, action)

    @abc.abstractmethod
    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        """Return refs newer than the cursor (and refs the cursor must revisit)."""

    @abc.abstractmethod
    def _fetch(self, ref: MessageRef) -> bytes:
        """Return the raw RFC 5322 bytes of ``ref``."""

    @abc.abstractmethod
    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        """Return the new cursor once ``refs`` are durably staged."""

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        """Apply ``action`` on the server; providers without post-processing ignore it."""


class OutgoingProvider(Provider):
    """Base of providers that send mail. Primitives: ``_connect``, ``_close``, ``_submit``."""

    direction = Direction.OUTGOING

    def submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        """Hand one composed message to the server (connection reused across calls)."""
        with self.wrap(f"submit {email.email_id}"):
            return self._submit(email, message, envelope_from)

    @abc.abstractmethod
    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        """Send ``message`` to every recipient of ``email``; raise for whole-message refusals."""


__all__ = [
    "IncomingProvider",
    "InstanceState",
    "NoOptions",
    "OutgoingProvider",
    "Provider",
    "ProviderError",
    "SubmitResult",
]
