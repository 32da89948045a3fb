"""Base classes of email providers: the whole protocol the core uses, and the extension point.

Use :class:`IncomingProvider` for a source of mail (IMAP, POP3, a feed, ...) and
:class:`OutgoingProvider` for a way to send (SMTP, ...). Register the class under an alias or
name it as ``package.module:Class`` (see :mod:`router.providers.registry`). A backend:

* declares ``alias``, an ``options_model`` (pydantic) for its ``<Parameters>``, the library
  exceptions it treats as passing faults (``retryable_errors``), as credential problems
  (``auth_errors``) and as protocol violations (``protocol_errors``);
* implements a handful of ``_underscore`` primitives (connect, list after a cursor, fetch one,
  apply the post-processing action, close / submit one);
* overrides a public method only to do better than its default (``fetch_many`` to pipeline,
  ``commit`` to make deletions durable, ``envelope_from`` / ``retry_backoff`` to expose its
  options);
* an outgoing provider that knows its point of no return sets ``commit_point = True`` and calls
  :meth:`OutgoingProvider.commit` right before it (see :class:`OutgoingProvider`).

Everything the core calls is declared here with a safe default: the core never probes a
provider with ``getattr``. A new provider is checked by the contract suite in ``tests/contract``.

The base class wraps every primitive: a library exception becomes a router error
(:class:`~router.errors.ProviderUnavailable`, :class:`~router.errors.ProviderAuthError`,
:class:`~router.errors.ProviderProtocolError`), so the core and the runtimes never see ``imaplib``
or ``smtplib`` exceptions. Error messages name the instance and the operation, never a secret.

Leases, the ledger and cursors are not the provider's business: the cycles in
:mod:`router.incoming` and :mod:`router.outgoing` drive them. A provider that needs its own
persistent state (e.g. the timestamp of the last item of a feed) reads and writes it through
:class:`InstanceState`, which the cycle saves atomically with the cursor.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

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
from router.models import Address, Direction, InboundMessage, MessageRef, OutboundEmail

log = logging.getLogger(__name__)

#: The JSON shape of cursors and provider state (what the state store keeps for an instance).
JsonDict = dict[str, Any]


class NoOptions(BaseModel):
    """Options model of a provider that takes no ``<Parameters>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def option_names(model: type[BaseModel]) -> list[str]:
    """The ``<Parameter Name=...>`` values ``model`` accepts: its field names and aliases."""
    by_name = bool(model.model_config.get("populate_by_name"))
    names: list[str] = []
    for name, info in model.model_fields.items():
        names += [info.alias] if info.alias else []
        names += [name] if by_name or not info.alias else []
    return names


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
    """Outcome of handing one email to the mail server: what :meth:`OutgoingProvider.submit`
    returns, and what the send cycle records in the ledger (who has it, who is to retry).

    ``refused`` maps each refused recipient to the server's reply (code, text). An email whose
    recipients were all refused, or that the server refused with a 5xx, raises
    :class:`~router.errors.MessageRejected` instead.
    """

    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]]
    temporary: bool = False


class CommitHook(Protocol):
    """The send cycle's ledger write at the commit point (what :meth:`OutgoingProvider.commit`
    runs): it records "submitted" so that no later cycle sends the email again.

    ``result`` holds the recipients the server accepted and refused so far. ``ahead=True``
    means it runs before the provider was even called (a provider without a commit point):
    if the process then dies, nobody can tell whether the email left, and the next cycle
    shows it as ambiguous instead of sending it again. It raises
    :class:`~router.errors.LeaseLost` when the email was taken over meanwhile: the provider
    must then let it propagate and not send.
    """

    def __call__(self, result: SubmitResult, *, ahead: bool = False) -> None:
        """Record "submitted" for the email being sent (see the class docstring)."""

    def handed_over(self) -> None:
        """Record that the irreversible step has left this process (see
        :meth:`OutgoingProvider.handed_over`): a crash from now on counts as sent."""


@dataclass(frozen=True)  # no slots: SmtpOptions reads the defaults from the class
class RetryBackoff:
    """How long the send cycle waits before retrying a temporarily refused email.

    The delay starts at ``first`` seconds and doubles per attempt up to ``maximum``. Providers
    expose theirs as :attr:`OutgoingProvider.retry_backoff` (SMTP: its ``retry_backoff`` and
    ``retry_backoff_max`` options); the defaults suit a mail server's greylisting.
    """

    first: float = 60.0
    maximum: float = 3600.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed attempts (1 for the first failure)."""
        return float(min(self.maximum, self.first * 2 ** max(attempts - 1, 0)))


@dataclass(frozen=True)
class AccessStep:
    """One ``test-access`` check of a provider: its name and a function returning what it found.

    The function runs on the opened provider and returns a short finding ("ok, ..."); it raises
    a router error whose message says what to fix when the check fails.
    """

    name: str
    run: Callable[[], str]


class Provider(abc.ABC):
    """What every provider has: its configuration, validated options and error wrapping.

    Subclass :class:`IncomingProvider` or :class:`OutgoingProvider`, not this class. The core
    builds one provider per instance and cycle (``Context.provider``), uses it inside
    ``open()`` ... ``close()`` (or ``with provider:``) and drops it; it is never shared
    between threads.
    """

    #: The short name in ``<ProviderClass>`` (``imap``); empty for a ``package.module:Class``.
    alias: ClassVar[str] = ""
    #: Incoming or Outgoing: ``validate`` refuses an instance whose ``<Direction>`` differs.
    direction: ClassVar[Direction]
    #: The pydantic model of ``<Parameters>``. Unknown parameter names are always refused
    #: (the base class enforces ``extra="forbid"`` whatever the model says); None means the
    #: provider takes no parameters (as :class:`NoOptions`).
    options_model: ClassVar[type[BaseModel] | None] = NoOptions
    #: What the provider can do beyond the protocol (``seen``, ``move``, ``delete``, ...),
    #: checked against the configuration at start-up; informative, never probed by the core.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Library exceptions that mean "try again later": ProviderUnavailable, the instance retries.
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (
        socket.timeout,
        ConnectionError,
        TimeoutError,
    )
    #: Library exceptions that mean bad credentials or certificate: ProviderAuthError, the
    #: instance pauses until its configuration changes.
    auth_errors: ClassVar[tuple[type[BaseException], ...]] = (ssl.SSLCertVerificationError,)
    #: Library exceptions that mean the server broke the protocol: ProviderProtocolError.
    protocol_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, config: ProviderConfiguration) -> None:
        """Keep ``config`` and validate its ``<Parameters>``; never connect here.

        ``validate`` builds every configured provider to surface configuration problems, so a
        backend checks what it needs (``EmailServer``, ...) here and raises ConfigError.
        """
        self.config = config
        self.name = config.name
        self.options: Any = self.parse_options(config)

    @classmethod
    def parse_options(cls, config: ProviderConfiguration) -> BaseModel:
        """Validate ``<Parameters>`` against ``options_model``; ConfigError names the bad one.

        Called by ``__init__`` and by the configuration check, which reports each problem at
        its ``<Parameter>`` line. A name the model does not declare is refused even when the
        model itself would accept extra input: a mistyped parameter must never pass silently.
        """
        model, values = cls.model_of_options(), config.parameter_dict
        known = option_names(model)
        problems = [
            f"<Parameter Name={name!r}>: Extra inputs are not permitted"
            for name in values
            if name not in known
        ]
        try:
            options = model.model_validate({k: v for k, v in values.items() if k in known})
        except ValidationError as exc:
            problems += [
                f"<Parameter Name={'.'.join(map(str, e['loc']))!r}>: {e['msg']}"
                for e in exc.errors()
            ]
        if problems:
            raise ConfigError(f"{config.name}: " + "; ".join(problems), problems)
        return options

    @classmethod
    def model_of_options(cls) -> type[BaseModel]:
        """``options_model``, or :class:`NoOptions` when it is None; ConfigError when it is
        not a pydantic model (the provider class is broken, not the configuration)."""
        model = cls.options_model
        if model is None:
            return NoOptions
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(
                f"provider {cls.__qualname__}: options_model must be a pydantic BaseModel "
                f"subclass or None, not {model!r}; fix the provider class"
            )
        return model

    @contextlib.contextmanager
    def wrap(self, operation: str) -> Iterator[None]:
        """Translate library exceptions raised inside the block into router errors.

        The public methods wrap every primitive already; a backend wraps its own extra steps,
        and the core wraps calls it makes outside them (``commit``). ``operation`` names the
        step in the message (``"fetch 42"``); router errors pass through unchanged.
        """
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
        """Connect and authenticate: the first call of every cycle (``_connect``)."""
        with self.wrap("connect"):
            self._connect()

    def close(self) -> None:
        """Disconnect at the end of every cycle, even a failed one (``_close``).

        Errors while closing are logged, never raised: they would hide the cycle's outcome.
        """
        try:
            self._close()
        except Exception as exc:  # a dead connection must not mask the cycle's real outcome
            log.debug("%s: close failed: %s", self.name, type(exc).__name__)

    def access_steps(self) -> list[AccessStep]:
        """The checks ``email-router test-access`` runs after :meth:`open` succeeded.

        Opening (connect and log in) is the check every provider gets; override this to add
        your own, in order (the first failure stops): e.g. Graph checks the mailbox and folders
        its token may read. Default: none.
        """
        return []

    def __enter__(self) -> Provider:
        """``with provider:`` is ``open()`` ... ``close()``."""
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connection, whatever happened in the block."""
        self.close()

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open the connection and log in."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Log out and close the connection."""


class IncomingProvider(Provider):
    """Base of providers that read a mailbox: subclass it for a new source of mail.

    Primitives: ``_connect``, ``_close``, ``_list_new(state, limit)``, ``_fetch(ref)``,
    ``_advance(state, refs)`` and, for servers that can, ``_post_process(refs, action)``.

    One poll cycle calls, in order: ``open``; ``post_process`` + ``commit`` for what the CRM
    accepted since the last poll; ``list_new``; ``fetch_many`` (each message is staged before
    the next one is read); ``advance``; ``post_process`` + ``commit`` again; ``close``. A
    message is only ever acted on (seen, moved, deleted) after the router holds it durably.

    Errors while fetching: what the provider classifies as a connection or credential failure
    (``retryable_errors``, ``auth_errors``, any OSError: ProviderUnavailable /
    ProviderAuthError) ends the cycle, and the next one starts over. Any other exception from
    ``_fetch`` (ValueError, a ``protocol_errors`` reply, a bug) is about that one message: the
    cycle counts it in the ledger, goes on with the next messages, keeps the cursor before it,
    and quarantines it after ``<MaxMessageAttempts>`` failures (its traceback is logged on the
    first one only). ``fetch_many`` must yield messages in the order of ``refs``, so that the
    cycle knows which message a failure belongs to.
    """

    direction = Direction.INCOMING

    def list_new(self, state: InstanceState, limit: int) -> list[MessageRef]:
        """Refs of messages after ``state.cursor``, oldest first, at most ``limit``.

        Called once per poll with ``<MaxMessageCount>``; the refs may include messages already
        staged (the ledger skips them), never one the cursor has passed for good.
        """
        with self.wrap("list"):
            return list(self._list_new(state, limit))[:limit]

    def fetch(self, ref: MessageRef) -> InboundMessage:
        """Download one message without changing its flags on the server (``_fetch``).

        Used for single messages, e.g. when ``quarantine replay`` needs the raw bytes again.
        """
        with self.wrap(f"fetch {ref.key}"):
            return InboundMessage(ref, self._fetch(ref))

    def fetch_many(self, refs: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        """Download several messages in order; backends override it to batch FETCH commands.

        Messages are yielded one by one so the caller can stage each before the next arrives.
        """
        for ref in refs:
            yield self.fetch(ref)

    def commit(self) -> None:
        """Make post-processing durable; called right after each ``post_process``.

        The default does nothing (IMAP flags and moves are immediate); POP3 overrides it
        because its deletions happen only at QUIT.
        """

    def advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        """Return the cursor after ``refs`` were staged (``_advance``).

        Called once the fetched messages are durably staged; the cycle saves the cursor
        fenced by the instance's lease, so a stalled poller cannot move it back.
        """
        return self._advance(state, refs)

    def post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        """Apply ``<AfterProcessing>`` (leave / seen / move:Folder / delete) to ``refs``.

        Called only for messages the CRM accepted (or the router skipped for good); ``leave``
        and an empty list do nothing without touching the server.
        """
        if not refs or action == "leave":
            return
        with self.wrap(f"post-process {action}"):
            self._post_process(refs, action)

    @abc.abstractmethod
    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        """Return refs newer than the cursor (and refs the cursor must revisit)."""

    @abc.abstractmethod
    def _fetch(self, ref: MessageRef) -> bytes:
        """Return the raw RFC 5322 bytes of ``ref``; raise to have this message retried (see
        the class docstring), a retryable error when the connection is the problem."""

    @abc.abstractmethod
    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        """Return the new cursor once ``refs`` are durably staged."""

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        """Apply ``action`` on the server; providers without post-processing ignore it."""


class OutgoingProvider(Provider):
    """Base of providers that send mail: subclass it for a new way to send.

    Primitives: ``_connect``, ``_close`` and ``_submit(email, message, envelope_from)``. One
    send cycle calls ``open``, then :meth:`submit` once per email of the batch on the same
    connection, then ``close``.

    At-most-once sending: the send cycle must record "submitted" in its ledger before the step
    that cannot be taken back (SMTP: the final dot; HTTP: the request). A provider that knows
    where that step is sets :attr:`commit_point`, calls :meth:`commit` right before it and
    :meth:`handed_over` right after it has left the process (SMTP: the final dot is in the
    socket). A crash before the commit sends the email again later; a crash after
    ``handed_over`` only marks it Sent; a crash between the two cannot be settled for sure, so
    the email is shown as ambiguous (``status``, ``quarantine list``, a CRM note "may or may
    not have been sent"), never sent again and never marked Sent. Without a commit point the
    base records "submitted" before calling ``_submit`` and "handed over" when it returns, so
    the whole call is that uncertain window.

    Recipients: ``_submit`` sends to every recipient of the ``email`` it gets. On a retry of
    recipients a server refused with 4xx, that ``email`` names only those (To, Cc and Bcc are
    narrowed; the message bytes are unchanged), so the others never get the message twice.
    """

    direction = Direction.OUTGOING
    #: True when ``_submit`` calls :meth:`commit` right before its irreversible step; False
    #: (the default) records "submitted" before ``_submit`` is called (see the class docstring).
    commit_point: ClassVar[bool] = False

    _hook: CommitHook | None = None
    _waiting: Callable[[], None] | None = None
    _committed: bool = False  # "submitted" recorded for the email being sent
    _handed: bool = False  # "handed over" recorded for it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Warn a provider written against the old API (its own ``submit``); it still works."""
        super().__init_subclass__(**kwargs)
        if "submit" in cls.__dict__:
            warnings.warn(
                f"{cls.__qualname__} overrides submit(); set commit_point = True and call"
                " self.commit(result) from _submit instead (submit() stays the core's entry)",
                DeprecationWarning,
                stacklevel=2,
            )

    def submit(
        self,
        email: OutboundEmail,
        message: bytes,
        envelope_from: str,
        before_commit: CommitHook | None = None,
        recipients: Sequence[str] | None = None,
        while_waiting: Callable[[], None] | None = None,
    ) -> SubmitResult:
        """Hand one composed message to the server (the connection is reused across calls).

        The send cycle's entry point: it sends to ``recipients`` (default: every recipient of
        ``email``) through ``_submit``, with ``before_commit`` (the ledger's
        :class:`CommitHook`) run at the commit point and ``while_waiting`` by :meth:`waiting`.
        Override the primitives, not this method. Raises MessageRejected when the message is
        refused as a whole.
        """
        rcpts = list(recipients) if recipients is not None else _recipients(email)
        if before_commit is not None and not self.commit_point:
            before_commit(SubmitResult(tuple(rcpts), {}), ahead=True)
        self._hook, self._waiting = before_commit, while_waiting
        # recorded ahead = committed; "handed over" follows when _submit returns
        self._committed, self._handed = before_commit is not None and not self.commit_point, False
        try:
            with self.wrap(f"submit {email.email_id}"):
                result = self._submit(narrow_recipients(email, rcpts), message, envelope_from)
            if not self._committed and self.commit_point and result.accepted:
                log.warning("%s: _submit did not call commit(); recording late", self.name)
                self.commit(result)
            self.handed_over()
            return result
        finally:
            self._hook, self._waiting = None, None

    def commit(self, result: SubmitResult) -> None:
        """The commit point: call it from ``_submit`` right before the irreversible step.

        ``result`` says which recipients the server accepted and which it refused so far (4xx
        ones are retried alone later). It records "submitted" in the ledger; when it raises
        (:class:`~router.errors.LeaseLost`: another worker owns the email now), let the error
        propagate and do not take the step. Only for providers with :attr:`commit_point`; a
        call outside :meth:`submit` (a test calling ``_submit``) does nothing.
        """
        # a second call (a reconnect inside _submit) is a no-op
        ready = self._hook is not None and self.commit_point and not self._committed
        if ready and result.accepted and self._hook is not None:
            self._hook(result)
            self._committed = True

    def handed_over(self) -> None:
        """Call from ``_submit`` right after the irreversible step has left this process.

        SMTP calls it once the final dot is in the socket: the kernel delivers those bytes even
        if the process is killed a moment later. It records "handed over" in the ledger, so a
        crash from here on only marks the email Sent, while a crash between :meth:`commit` and
        this call leaves the email ambiguous rather than marked Sent without having left.
        Optional: the base calls it when ``_submit`` returns; a second call does nothing.
        """
        if self._hook is not None and self._committed and not self._handed:
            self._handed = True
            self._hook.handed_over()

    def waiting(self) -> None:
        """Call after the irreversible step while the server works (the cycle prepares the
        next email meanwhile); optional, and it never raises."""
        if self._waiting is not None:
            self._waiting()

    @property
    def envelope_from(self) -> str | None:
        """The configured envelope sender (a bounce address), or None for the email's From.

        The send cycle asks once per email; the default has none.
        """
        return None

    @property
    def retry_backoff(self) -> RetryBackoff:
        """How long to wait before retrying an email the server refused for now (4xx)."""
        return RetryBackoff()

    @abc.abstractmethod
    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        """Send ``message`` to every recipient of ``email``; raise for whole-message refusals.

        Return who accepted and who refused it (:class:`SubmitResult`); raise
        :class:`~router.errors.MessageRejected` when it was refused as a whole, and a
        ``retryable_errors`` exception only when the message certainly did not get through.
        """


def narrow_recipients(email: OutboundEmail, recipients: Sequence[str]) -> OutboundEmail:
    """``email`` whose To, Cc and Bcc name exactly ``recipients`` (a retry of refused ones).

    A recipient the email does not name (a caller's own envelope) is added as a Bcc.
    """
    wanted, named = set(recipients), _recipients(email)
    if wanted == set(named):
        return email
    extra = tuple(Address(r) for r in dict.fromkeys(recipients) if r not in named)
    return replace(
        email,
        to=tuple(a for a in email.to if a.email in wanted),
        cc=tuple(a for a in email.cc if a.email in wanted),
        bcc=tuple(a for a in email.bcc if a.email in wanted) + extra,
    )


def _recipients(email: OutboundEmail) -> list[str]:
    return [a.email for a in (*email.to, *email.cc, *email.bcc)]


__all__ = [
    "CommitHook",
    "IncomingProvider",
    "InstanceState",
    "NoOptions",
    "OutgoingProvider",
    "Provider",
    "ProviderError",
    "RetryBackoff",
    "SubmitResult",
    "narrow_recipients",
    "option_names",
]
