"""The ``smtp`` outgoing provider: composed CRM emails -> an SMTP submission server (smtplib).

Features:
    * implicit TLS (``EmailSecurity=ssl``, port 465), STARTTLS (``starttls``, port 587) or plain
      (``none``, port 25); the certificate and host name are verified by default
      (:mod:`router.providers.tls`);
    * AUTH PLAIN or LOGIN (``EmailAuthMode=password``), XOAUTH2 (``xoauth2``) with an access
      token in ``<EmailPassword>`` or, with ``tenant_id`` / ``client_id``, one acquired and
      renewed by client credentials (Microsoft 365; :mod:`router.providers.credentials`), or no
      AUTH for a relay (``none``);
    * one connection for a whole batch, re-opened transparently when the server dropped it between
      messages (idle timeout, 421);
    * per-recipient results: recipients refused with 4xx are returned for a later retry, 5xx ones
      as permanent failures; a message refused as a whole with 5xx raises
      :class:`~router.errors.MessageRejected`;
    * SMTPUTF8 when an address needs it and the server offers it;
    * every envelope address goes through the one address parser (:mod:`router.mail.addresses`)
      before the transaction starts: an address with CR/LF or a domain that cannot be
      IDNA-encoded refuses that one message (MessageRejected), never the connection;
    * a *commit point*: ``_submit`` calls :meth:`~router.providers.base.OutgoingProvider.commit`
      after the message body went out and right before the final ``.`` - the one point after
      which the server may have the message - and
      :meth:`~router.providers.base.OutgoingProvider.handed_over` once the dot is in the
      socket. The send cycle writes "submitted" and "handed over" to its ledger there, so a
      crash never sends an email twice, and never marks one Sent that did not leave: a crash
      in the instant between the two sets the email aside as ambiguous (see
      ``router.outgoing``).

Connection: ``EmailServer``, ``EmailPort`` (default by security), ``EmailUser``,
``EmailPassword`` (a Secret: inline, ``Env=`` or ``File=``).

Options (``<Parameter Name="...">``):
    * ``envelope_from`` - the envelope sender (MAIL FROM), e.g. a bounce address; default: the
      email's From address.
    * ``timeout`` - socket timeout in seconds (default 30).
    * ``local_hostname`` - the name sent in EHLO (default: the machine's FQDN).
    * ``auth_mechanism`` - ``auto`` (PLAIN if offered, else LOGIN), ``PLAIN`` or ``LOGIN``.
    * ``retry_backoff`` / ``retry_backoff_max`` - seconds before the first retry of a temporarily
      refused email, doubling per attempt up to the maximum (defaults 60 / 3600).
    * ``ca_bundle``, ``tls_verify`` - see :class:`~router.providers.tls.TlsOptions`.
    * ``tenant_id``, ``client_id``, ``authority`` - XOAUTH2 client credentials (see
      :class:`~router.providers.credentials.OAuthOptions`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from router.config import ProviderConfiguration
from router.errors import ConfigError, MessageRejected, ProviderAuthError, ProviderUnavailable
from router.mail.addresses import AddressRefused, parse_address
from router.models import OutboundEmail
from router.providers.base import OutgoingProvider, RetryBackoff, SubmitResult
from router.providers.credentials import Credentials, OAuthOptions
from router.providers.tls import TlsOptions

DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
#: Replies that mean "the connection is gone, open a new one" when they answer MAIL FROM.
RECONNECT_CODES = frozenset({421, -1})
_LEADING_DOT = re.compile(rb"(?m)^\.")
_BARE_EOL = re.compile(rb"\r\n|\r|\n")
#: SASL round trips after AUTH before giving up (LOGIN needs two; XOAUTH2 one after an error).
_MAX_CHALLENGES = 3


class SmtpOptions(TlsOptions, OAuthOptions):
    """``<Parameters>`` of the smtp provider (see the module docstring)."""

    envelope_from: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=3600)
    local_hostname: str | None = None
    auth_mechanism: Literal["auto", "PLAIN", "LOGIN"] = "auto"
    retry_backoff: float = Field(default=RetryBackoff.first, ge=0)
    retry_backoff_max: float = Field(default=RetryBackoff.maximum, ge=0)


@dataclass(frozen=True, slots=True)
class _Hooks:
    """The caller's callbacks around the final dot of one transaction."""

    before_commit: Callable[[SubmitResult], None]
    handed_over: Callable[[], None]
    while_waiting: Callable[[], None]


class TemporaryFailure(smtplib.SMTPResponseException):
    """A 4xx reply to MAIL FROM or DATA: the whole message should be retried later."""


class SmtpProvider(OutgoingProvider):
    """Sends through one SMTP server; use it for ``<ProviderClass>smtp</ProviderClass>``."""

    alias = "smtp"
    options_model = SmtpOptions
    capabilities = frozenset({"send"})
    commit_point = True
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (
        socket.timeout,
        ConnectionError,
        TimeoutError,
        smtplib.SMTPServerDisconnected,
        smtplib.SMTPConnectError,
    )
    auth_errors: ClassVar[tuple[type[BaseException], ...]] = (
        ssl.SSLCertVerificationError,
        smtplib.SMTPAuthenticationError,
        smtplib.SMTPNotSupportedError,
    )
    protocol_errors: ClassVar[tuple[type[BaseException], ...]] = (smtplib.SMTPException,)

    options: SmtpOptions

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        if not config.email_server:
            raise ConfigError(f"{config.name}: <EmailServer> is required for the smtp provider")
        self.host = config.email_server
        self.port = config.email_port or DEFAULT_PORTS[config.email_security]
        self._client: smtplib.SMTP | None = None
        self.credentials = self._oauth_credentials(config)

    def _oauth_credentials(self, config: ProviderConfiguration) -> Credentials | None:
        """The XOAUTH2 token source (client credentials or the token in <EmailPassword>)."""
        if config.email_auth_mode == "xoauth2" or self.options.client_credentials:
            ca = self.options.ca_bundle
            return Credentials(config, oauth=self.options, ca_bundle=ca)
        return None

    # -- public ---------------------------------------------------------------------------------
    @property
    def envelope_from(self) -> str | None:
        """The configured envelope sender (bounce address), if any."""
        return self.options.envelope_from

    @property
    def retry_backoff(self) -> RetryBackoff:
        """The ``retry_backoff`` / ``retry_backoff_max`` options."""
        return RetryBackoff(self.options.retry_backoff, self.options.retry_backoff_max)

    # -- primitives -----------------------------------------------------------------------------
    def _create_client(self) -> smtplib.SMTP:
        """Connect the smtplib client and read the greeting (the seam tests replace)."""
        host, port = self.host, self.port
        timeout, name = self.options.timeout, self.options.local_hostname
        if self.config.email_security == "ssl":
            ctx = self.options.ssl_context(self.name)
            return smtplib.SMTP_SSL(host, port, local_hostname=name, timeout=timeout, context=ctx)
        return smtplib.SMTP(host, port, local_hostname=name, timeout=timeout)

    def _connect(self) -> None:
        client = self._create_client()
        try:
            # The final dot goes out in its own small write after the body: without NODELAY,
            # Nagle holds it until the server's delayed ACK (40 ms per message).
            if client.sock is not None:
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.ehlo()
            if self.config.email_security == "starttls":
                client.starttls(context=self.options.ssl_context(self.name))
                client.ehlo()
            self._login(client)
        except BaseException:
            _quietly_close(client)
            raise
        self._client = client

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            finally:
                client.close()

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        """Send ``message`` to the recipients of ``email`` in one transaction.

        :meth:`commit` runs once the server accepted some recipients and the body was sent,
        right before the final dot; an exception from it aborts the transaction (see the
        module docstring). :meth:`waiting` runs after the final dot, while the server stores
        the message. Raises MessageRejected for a 5xx on the whole message or when every
        recipient was refused for good, ProviderUnavailable when the connection failed.
        """
        sender, rcpts = self._on_the_wire(envelope_from, _recipients(email))
        hooks = _Hooks(self.commit, self.handed_over, self.waiting)
        return self._guarded(email.email_id, message, sender, rcpts, hooks)

    def _on_the_wire(self, sender: str, rcpts: list[str]) -> tuple[str, list[str]]:
        """MAIL FROM and RCPT TO addresses checked and IDNA-encoded by the one address parser.

        The send cycle hands over parsed addresses already; this keeps any other caller from
        putting CR/LF into a command or failing on a domain in the middle of a transaction.
        An empty sender is the null reverse path ``<>`` (bounces).
        """
        try:
            wire = [parse_address(rcpt).email for rcpt in rcpts]
        except AddressRefused as exc:
            raise MessageRejected(f"{self.name}: not sent: recipient {exc}") from None
        try:
            return (parse_address(sender).email if sender else "", wire)
        except AddressRefused as exc:
            where = "the email's From or the envelope_from parameter"
            raise MessageRejected(f"{self.name}: not sent: sender ({where}) {exc}") from None

    def _describe(self, operation: str, exc: BaseException) -> str:
        """Say what the server answered (``535 5.7.8 ...``), not a Python tuple of bytes."""
        if isinstance(exc, smtplib.SMTPResponseException):
            reply = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            kind = type(exc).__name__
            return f"{self.name}: {operation} on {self.host}:{self.port} failed: {kind}: {reply}"
        return super()._describe(operation, exc)

    # -- authentication -------------------------------------------------------------------------
    def _login(self, client: smtplib.SMTP) -> None:
        mode = self.config.email_auth_mode
        if mode == "none":
            return
        if self.credentials is not None:  # xoauth2
            user, creds = self.credentials.user, self.credentials
            login = functools.partial(_xoauth2_login, client, user)
            creds.login_with_token(login, refused=(smtplib.SMTPAuthenticationError,))
            return
        user, secret = self.config.email_user or "", self._secret()
        mechanism = self._mechanism(client)
        respond = _plain(user, secret) if mechanism == "PLAIN" else _login_steps(user, secret)
        _authenticate(client, mechanism, respond)

    def _mechanism(self, client: smtplib.SMTP) -> str:
        offered = client.esmtp_features.get("auth", "").upper().split()
        wanted = self.options.auth_mechanism
        for mech in ("PLAIN", "LOGIN") if wanted == "auto" else (wanted,):
            if mech in offered:
                return mech
        raise ProviderAuthError(
            f"{self.name}: {self.host} offers no usable AUTH mechanism "
            f"(offered: {' '.join(offered) or 'none'}; wanted: {wanted})"
        )

    def _secret(self) -> str:
        if self.config.email_password is None:
            raise ConfigError(f"{self.name}: <EmailPassword> is required for AUTH")
        try:
            return self.config.email_password.get_secret_value()
        except (KeyError, OSError) as exc:
            raise ConfigError(f"{self.name}: <EmailPassword> cannot be read: {exc!r}") from None

    # -- one transaction ------------------------------------------------------------------------
    def _guarded(
        self,
        email_id: str,
        message: bytes,
        envelope_from: str,
        rcpts: list[str],
        hooks: _Hooks,
    ) -> SubmitResult:
        """Run one transaction; a refusal keeps the connection, anything else drops it."""
        try:
            return self._transaction(email_id, message, envelope_from, rcpts, hooks)
        except TemporaryFailure as exc:
            self._reset()
            reply = (exc.smtp_code, _text(exc.smtp_error))
            return SubmitResult((), dict.fromkeys(rcpts, reply), temporary=True)
        except MessageRejected:
            self._reset()
            raise
        except BaseException:
            self._drop()  # a half-done transaction: never reuse that connection
            raise

    def _transaction(
        self,
        email_id: str,
        message: bytes,
        envelope_from: str,
        rcpts: list[str],
        hooks: _Hooks,
    ) -> SubmitResult:
        utf8 = _needs_utf8(envelope_from, rcpts)
        client = self._mail_from(envelope_from, utf8, len(message))
        accepted, refused = self._rcpt_to(client, rcpts)
        if not accepted:
            _quietly_rset(client)
            return self._all_refused(email_id, refused)
        result = SubmitResult(tuple(accepted), refused)
        self._data(client, message, result, hooks)
        return result

    def _mail_from(self, sender: str, utf8: bool, size: int) -> smtplib.SMTP:
        """MAIL FROM on a live connection; a connection found dead here is re-opened once."""
        for last in (False, True):
            client = self._client if self._client is not None else self._reopen()
            options = self._mail_options(client, utf8, size)
            try:
                code, reply = client.mail(sender, options)
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                if last:
                    raise
                self._drop()  # dropped while idle between two messages: reconnect once
                continue
            if code in RECONNECT_CODES and not last:
                self._drop()
                continue
            _check_reply(code, reply)
            return client
        raise ProviderUnavailable(f"{self.name}: {self.host} keeps closing the connection")

    def _mail_options(self, client: smtplib.SMTP, utf8: bool, size: int) -> list[str]:
        options = [f"SIZE={size}"] if client.has_extn("size") else []
        if utf8:
            if not client.has_extn("smtputf8"):
                raise MessageRejected(
                    f"{self.name}: an address needs SMTPUTF8, which {self.host} does not offer"
                )
            options.append("SMTPUTF8")
        return options

    def _rcpt_to(
        self, client: smtplib.SMTP, rcpts: list[str]
    ) -> tuple[list[str], dict[str, tuple[int, str]]]:
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt)
            if code in (250, 251):
                accepted.append(rcpt)
            elif code == 421 or code < 0:
                raise smtplib.SMTPServerDisconnected(f"{code} {_text(reply)}")
            else:
                refused[rcpt] = (code, _text(reply))
        return accepted, refused

    def _data(
        self, client: smtplib.SMTP, message: bytes, result: SubmitResult, hooks: _Hooks
    ) -> None:
        code, reply = client.docmd("DATA")
        if code != 354:
            _quietly_rset(client)
            _check_reply(code, reply)
            raise smtplib.SMTPDataError(code, reply)
        client.send(_dot_stuffed(message))
        hooks.before_commit(result)
        client.send(b".\r\n")
        hooks.handed_over()  # the dot is in the socket: the kernel sends it even if we die now
        hooks.while_waiting()
        code, reply = client.getreply()
        _check_reply(code, reply)

    def _all_refused(self, email_id: str, refused: dict[str, tuple[int, str]]) -> SubmitResult:
        if any(code < 500 for code, _ in refused.values()):
            return SubmitResult((), refused, temporary=True)
        first = next(iter(refused.values()), (550, "no recipients"))
        raise MessageRejected(
            f"{self.name}: every recipient of {email_id} was refused: {first[0]} {first[1]}"
        )

    def _reopen(self) -> smtplib.SMTP:
        self._connect()
        assert self._client is not None
        return self._client

    def _reset(self) -> None:
        if self._client is not None:
            _quietly_rset(self._client)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _quietly_close(client)


# -- helpers --------------------------------------------------------------------------------------
def _recipients(email: OutboundEmail) -> list[str]:
    seen: dict[str, None] = {}
    for addr in (*email.to, *email.cc, *email.bcc):
        seen.setdefault(addr.email, None)
    return list(seen)


def _check_reply(code: int, reply: bytes) -> None:
    """Raise for a reply that is not 2xx/3xx: 4xx temporary, 5xx MessageRejected."""
    if 200 <= code < 400:
        return
    if code == 421 or code < 0:
        raise smtplib.SMTPServerDisconnected(f"{code} {_text(reply)}")
    if 400 <= code < 500:
        raise TemporaryFailure(code, _text(reply))
    raise MessageRejected(f"{code} {_text(reply)}")


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())[:500]


def _dot_stuffed(message: bytes) -> bytes:
    """CRLF line ends, leading dots doubled, ending with CRLF (the final dot is sent apart)."""
    data = _LEADING_DOT.sub(b"..", _BARE_EOL.sub(b"\r\n", message))
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _needs_utf8(sender: str, rcpts: Sequence[str]) -> bool:
    return any(not addr.rpartition("@")[0].isascii() for addr in (sender, *rcpts))


def _authenticate(
    client: smtplib.SMTP, mechanism: str, respond: Callable[[bytes | None], str]
) -> None:
    """SMTP AUTH (RFC 4954) with UTF-8 credentials.

    ``smtplib.SMTP.auth`` encodes every response as ASCII, so a non-ASCII user name or password
    raised UnicodeEncodeError and crashed every cycle; SASL PLAIN and LOGIN carry UTF-8 (RFC
    4616), and for ASCII credentials the bytes on the wire are the same as smtplib's.
    """
    code, reply = client.docmd("AUTH", f"{mechanism} {_b64(respond(None))}")
    for _ in range(_MAX_CHALLENGES):
        if code != 334:
            break
        code, reply = client.docmd(_b64(respond(_challenge(reply))))
    if code not in (235, 503):  # 503: already authenticated
        raise smtplib.SMTPAuthenticationError(code, reply)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _challenge(reply: bytes) -> bytes:
    try:
        return base64.b64decode(reply, validate=True)
    except (binascii.Error, ValueError):
        return reply


def _plain(user: str, secret: str) -> Callable[[bytes | None], str]:
    """AUTH PLAIN responder: authzid empty, then user and password (RFC 4616)."""
    return lambda challenge: f"\0{user}\0{secret}"


def _login_steps(user: str, secret: str) -> Callable[[bytes | None], str]:
    """AUTH LOGIN responder: the user name as initial response, the password when asked."""

    def respond(challenge: bytes | None) -> str:
        return user if challenge is None or challenge.lower().startswith(b"user") else secret

    return respond


def _xoauth2(user: str, token: str) -> Callable[..., str]:
    """AUTH XOAUTH2 responder: the initial response, then an empty line after an error."""
    initial = f"user={user}\x01auth=Bearer {token}\x01\x01"

    def respond(challenge: bytes | None = None) -> str:
        return initial if challenge is None else ""

    return respond


def _xoauth2_login(client: smtplib.SMTP, user: str, token: str) -> None:
    _authenticate(client, "XOAUTH2", _xoauth2(user, token))


def _quietly_rset(client: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.rset()


def _quietly_close(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        client.close()


__all__ = ["SmtpOptions", "SmtpProvider", "TemporaryFailure"]
