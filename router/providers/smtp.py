"""The ``smtp`` outgoing provider: composed CRM emails -> an SMTP submission server (smtplib).

Features:
    * implicit TLS (``EmailSecurity=ssl``, port 465), STARTTLS (``starttls``, port 587) or plain
      (``none``, port 25); the certificate and host name are verified by default
      (:mod:`router.providers.tls`);
    * AUTH PLAIN or LOGIN (``EmailAuthMode=password``), XOAUTH2 with an access token in
      ``<EmailPassword>`` (``xoauth2``), or no AUTH for a relay (``none``);
    * one connection for a whole batch, re-opened transparently when the server dropped it between
      messages (idle timeout, 421);
    * per-recipient results: recipients refused with 4xx are returned for a later retry, 5xx ones
      as permanent failures; a message refused as a whole with 5xx raises
      :class:`~router.errors.MessageRejected`;
    * SMTPUTF8 when an address needs it and the server offers it;
    * a *commit hook*: :meth:`SmtpProvider.submit` calls ``before_commit`` after the message body
      went out and right before the final ``.`` - the one point after which the server may have
      the message. The send cycle writes "submitted" to its ledger there, so a crash on either
      side of that point neither loses the email nor sends it twice (see ``router.outgoing``).

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
"""

from __future__ import annotations

import contextlib
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
from router.models import OutboundEmail
from router.providers.base import OutgoingProvider, SubmitResult
from router.providers.tls import TlsOptions

DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
#: Replies that mean "the connection is gone, open a new one" when they answer MAIL FROM.
RECONNECT_CODES = frozenset({421, -1})
_LEADING_DOT = re.compile(rb"(?m)^\.")
_BARE_EOL = re.compile(rb"\r\n|\r|\n")

#: Called with the RCPT results right before the final dot (see the module docstring).
CommitHook = Callable[[SubmitResult], None]


class SmtpOptions(TlsOptions):
    """``<Parameters>`` of the smtp provider (see the module docstring)."""

    envelope_from: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=3600)
    local_hostname: str | None = None
    auth_mechanism: Literal["auto", "PLAIN", "LOGIN"] = "auto"
    retry_backoff: float = Field(default=60.0, ge=0)
    retry_backoff_max: float = Field(default=3600.0, ge=0)


@dataclass(frozen=True, slots=True)
class _Hooks:
    """The caller's callbacks around the final dot of one transaction."""

    before_commit: CommitHook | None
    while_waiting: Callable[[], None] | None


class TemporaryFailure(smtplib.SMTPResponseException):
    """A 4xx reply to MAIL FROM or DATA: the whole message should be retried later."""


class SmtpProvider(OutgoingProvider):
    """Sends through one SMTP server; use it for ``<ProviderClass>smtp</ProviderClass>``."""

    alias = "smtp"
    options_model = SmtpOptions
    capabilities = frozenset({"send", "commit-hook"})
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

    # -- public ---------------------------------------------------------------------------------
    def submit(
        self,
        email: OutboundEmail,
        message: bytes,
        envelope_from: str,
        before_commit: CommitHook | None = None,
        recipients: Sequence[str] | None = None,
        while_waiting: Callable[[], None] | None = None,
    ) -> SubmitResult:
        """Send ``message`` to ``recipients`` (default: every recipient of ``email``).

        ``before_commit(result)`` runs once the server accepted some recipients and the body was
        sent, right before the final dot; an exception from it aborts the transaction (see the
        module docstring). ``while_waiting()`` runs after the final dot, while the server
        processes the message (the caller prepares its next message there; it must not raise).
        Raises MessageRejected for a 5xx on the whole message or when every recipient was refused
        for good, ProviderUnavailable when the connection failed.
        """
        rcpts = list(recipients) if recipients is not None else _recipients(email)
        hooks = _Hooks(before_commit, while_waiting)
        with self.wrap(f"submit {email.email_id}"):
            return self._guarded(email.email_id, message, envelope_from, rcpts, hooks)

    @property
    def envelope_from(self) -> str | None:
        """The configured envelope sender (bounce address), if any."""
        return self.options.envelope_from

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
        hooks = _Hooks(None, None)
        return self._guarded(email.email_id, message, envelope_from, _recipients(email), hooks)

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
        user, secret = self.config.email_user or "", self._secret()
        if mode == "xoauth2":
            client.auth("XOAUTH2", _xoauth2(user, secret), initial_response_ok=True)
            return
        mechanism = self._mechanism(client)
        client.user, client.password = user, secret
        auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        client.auth(mechanism, auth, initial_response_ok=True)

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
                code, reply = client.mail(_idna(sender), options)
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
            code, reply = client.rcpt(_idna(rcpt))
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
        if hooks.before_commit is not None:
            hooks.before_commit(result)
        client.send(b".\r\n")
        if hooks.while_waiting is not None:
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


def _idna(addr: str) -> str:
    """The address with an IDNA (punycode) domain, so only a non-ASCII local part needs UTF8."""
    local, at, domain = addr.rpartition("@")
    if not at or domain.isascii():
        return addr
    return f"{local}@{domain.encode('idna').decode('ascii')}"


def _xoauth2(user: str, token: str) -> Callable[..., str]:
    """AUTH XOAUTH2 responder: the initial response, then an empty line after an error."""
    initial = f"user={user}\x01auth=Bearer {token}\x01\x01"

    def respond(challenge: bytes | None = None) -> str:
        return initial if challenge is None else ""

    return respond


def _quietly_rset(client: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.rset()


def _quietly_close(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        client.close()


__all__ = ["SmtpOptions", "SmtpProvider", "TemporaryFailure"]
