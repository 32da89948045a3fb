"""The ``pop3`` incoming provider: reads a POP3 maildrop (poplib).

Features:

* new mail = messages whose UIDL is not in the cursor ``{"seen": [uidl, ...]}``, in server order;
  the list is bounded: UIDLs no longer on the server are dropped when the cursor advances;
* ``RETR`` downloads (POP3 has no flags, so reading changes nothing on the server);
* post-processing: only ``delete`` (``DELE``). POP3 servers apply deletions when the session ends
  with ``QUIT``, so deletions are durable only after :meth:`Pop3Provider.commit` (which sends QUIT
  and raises ProviderUnavailable when that fails); the next operation opens a new session.
  ``seen`` and ``move:`` are refused at start-up (ConfigError) - POP3 cannot do them.

Connection: ``<EmailServer>``, ``<EmailPort>`` (default 995 for ``ssl``, 110 otherwise),
``<EmailSecurity>`` ``ssl`` | ``starttls`` (STLS) | ``none``, ``<EmailAuthMode>`` ``password``
(USER/PASS) | ``xoauth2`` (``AUTH XOAUTH2``), ``<EmailUser>``, ``<EmailPassword>``.

Options (``<Parameters>``): ``timeout`` (seconds, default 30), ``fetch_batch`` (RETR commands
sent at once when the server offers PIPELINING, RFC 2449; default 50), ``ca_bundle``,
``tls_verify`` (default true), ``token_provider`` (``package.module:function``, for xoauth2);
``tenant_id``, ``client_id``, ``authority`` for XOAUTH2 tokens by client credentials (Microsoft 365,
the client secret in ``<EmailPassword>``; :mod:`router.providers.credentials`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import poplib
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from router.config import ProviderConfiguration
from router.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderProtocolError,
    ProviderUnavailable,
)
from router.models import InboundMessage, MessageRef
from router.providers.base import IncomingProvider, InstanceState, JsonDict
from router.providers.credentials import Credentials, OAuthOptions
from router.providers.tls import TlsOptions

log = logging.getLogger(__name__)

#: Longest line accepted from the server (poplib's own limit, 2048, refuses real-world mail).
MAX_LINE = 1 << 20

#: RFC 3206 response codes that mean "try again later", not "wrong credentials".
TRANSIENT_CODES = ("[IN-USE]", "[SYS/TEMP]", "[LOGIN-DELAY]")


class Pop3Options(TlsOptions, OAuthOptions):
    """``<Parameters>`` of the pop3 provider."""

    timeout: float = Field(30.0, gt=0, le=3600)
    fetch_batch: int = Field(50, ge=1, le=1000)
    token_provider: str | None = None


class _Lines:
    """poplib line reading with a realistic length limit and EOF as a connection error."""

    file: Any

    def _getline(self) -> tuple[bytes, int]:
        line: bytes = self.file.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the server closed the connection")
        if len(line) > MAX_LINE:
            raise poplib.error_proto("-ERR line too long")
        if line.endswith(b"\r\n"):
            return line[:-2], len(line)
        return line[:-1], len(line)


class _POP3(_Lines, poplib.POP3):
    pass


class _POP3_SSL(_Lines, poplib.POP3_SSL):
    pass


class Pop3Provider(IncomingProvider):
    """Use for POP3 mailboxes; the cursor remembers the UIDLs already staged."""

    alias = "pop3"
    options_model = Pop3Options
    capabilities = frozenset({"delete"})
    auth_errors = (ssl.SSLCertVerificationError,)
    protocol_errors = (poplib.error_proto,)

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        if not config.email_server:
            raise ConfigError(f"{config.name}: <EmailServer> is required")
        if config.after_processing not in ("leave", "delete"):
            raise ConfigError(
                f"{config.name}: <AfterProcessing> {config.after_processing!r} is not possible "
                "with POP3 (no flags, no folders): use leave or delete"
            )
        self.credentials = Credentials(
            config,
            self.options.token_provider,
            oauth=self.options,
            ca_bundle=self.options.ca_bundle,
        )
        self.security = config.email_security
        self.port = config.email_port or (995 if self.security == "ssl" else 110)
        self._client: poplib.POP3 | None = None
        self._opened = False
        self._numbers: dict[str, int] | None = None  # UIDL -> message number, this session
        self._sizes: dict[int, int] = {}
        self._pending_deletes = 0
        self._can_pipeline: bool | None = None

    # -- connection ----------------------------------------------------------------------------

    def _create_client(self) -> poplib.POP3:
        """Open the TCP (or TLS) connection; the seam tests replace."""
        host, timeout = self.config.email_server or "", self.options.timeout
        if self.security == "ssl":
            ctx = self.options.ssl_context(self.name)
            return _POP3_SSL(host, self.port, context=ctx, timeout=timeout)
        return _POP3(host, self.port, timeout=timeout)

    def _connect(self) -> None:
        client = self._create_client()
        self._client, self._opened = client, True
        try:
            if self.security == "starttls":
                client.stls(self.options.ssl_context(self.name))
            self._login(client)
        except BaseException:
            self._drop()  # open() failed: nobody will call close()
            raise

    def _login(self, client: poplib.POP3) -> None:
        try:
            if self.credentials.mode == "xoauth2":
                xoauth2 = functools.partial(self._xoauth2, client)
                self.credentials.login_with_token(xoauth2, refused=(poplib.error_proto,))
            else:
                client.user(self.credentials.user)
                client.pass_(self.credentials.secret())
        except poplib.error_proto as exc:
            text = str(exc)
            if any(code in text for code in TRANSIENT_CODES):
                raise ProviderUnavailable(f"{self.name}: login deferred: {text}") from None
            raise ProviderAuthError(f"{self.name}: login refused: {text}") from None

    def _xoauth2(self, client: Any, token: str) -> None:
        """``AUTH XOAUTH2 <initial response>`` (poplib has no AUTH; its private I/O is used).

        A refused token is answered with a ``+ <error>`` challenge, which poplib would take for
        success: the client acknowledges it with an empty line and the server then says -ERR.
        """
        client._putcmd("AUTH XOAUTH2 " + self.credentials.xoauth2_string(token))
        resp: bytes = client._getresp()
        if resp.startswith(b"+OK"):
            return
        client._putcmd("")
        client._getresp()  # raises error_proto with the server's -ERR
        raise poplib.error_proto("-ERR XOAUTH2 token refused")

    def _close(self) -> None:
        """QUIT (which also applies deletions not yet committed) and forget the session."""
        client, self._client, self._opened = self._client, None, False
        self._numbers, self._pending_deletes = None, 0
        if client is None:
            return
        try:
            client.quit()
        except Exception:
            client.close()
            raise

    @property
    def client(self) -> poplib.POP3:
        """The session; a new one is opened when :meth:`commit` ended the previous one."""
        if self._client is None:
            if not self._opened:
                raise ProviderProtocolError(f"{self.name}: not connected (call open() first)")
            self._connect()
        assert self._client is not None
        return self._client

    # -- listing and cursor --------------------------------------------------------------------

    def _refresh(self) -> dict[str, int]:
        """Read UIDL and LIST: which messages are on the server, and their sizes."""
        numbers: dict[str, int] = {}
        for line in self.client.uidl()[1]:
            number, uidl = line.split(None, 1)
            numbers[uidl.decode("ascii", "replace")] = int(number)
        self._sizes = {}
        for line in self.client.list()[1]:
            number, size = line.split(None, 1)
            self._sizes[int(number)] = int(size.split()[0])
        self._numbers = numbers
        return numbers

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        seen = set(_seen(state.cursor))
        numbers = self._refresh()
        fresh = [uidl for uidl in numbers if uidl not in seen][:limit]
        return [MessageRef(uidl, self._sizes.get(numbers[uidl])) for uidl in fresh]

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        present = self._numbers
        kept = [u for u in _seen(state.cursor) if present is None or u in present]
        known = set(kept)
        return {"seen": kept + [r.key for r in refs if r.key not in known]}

    # -- fetching and post-processing ----------------------------------------------------------

    def _number(self, uidl: str) -> int | None:
        numbers = self._numbers if self._numbers is not None else self._refresh()
        if uidl not in numbers:
            numbers = self._refresh()
        return numbers.get(uidl)

    def _fetch(self, ref: MessageRef) -> bytes:
        number = self._number(ref.key)
        if number is None:
            raise ProviderProtocolError(f"{self.name}: {ref.key} is no longer on the server")
        lines = self.client.retr(number)[1]
        return b"\r\n".join(lines) + b"\r\n"

    def fetch_many(self, refs: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        """RETR ``refs`` in order; pipelined in batches when the server offers PIPELINING."""
        with self.wrap(f"fetch {len(refs)} messages"):
            size = self.options.fetch_batch if self._pipelining() else 1
            for start in range(0, len(refs), size):
                yield from self._retr_batch(refs[start : start + size])

    def _pipelining(self) -> bool:
        if self._can_pipeline is None:
            try:
                self._can_pipeline = "PIPELINING" in self.client.capa()
            except poplib.error_proto:  # no CAPA: an old server, one command at a time
                self._can_pipeline = False
        return self._can_pipeline

    def _retr_batch(self, batch: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        """Send every RETR of ``batch``, then read the answers (one round trip, RFC 2449)."""
        numbers = [self._number(ref.key) for ref in batch]
        for ref, number in zip(batch, numbers, strict=True):
            if number is None:
                raise ProviderProtocolError(f"{self.name}: {ref.key} is no longer on the server")
        client: Any = self.client
        try:
            for number in numbers:
                client._putcmd(f"RETR {number}")  # poplib has no pipelining API
            for ref in batch:
                lines = client._getlongresp()[1]
                yield InboundMessage(ref, b"\r\n".join(lines) + b"\r\n")
        except BaseException:
            self._drop()  # answers may be left unread: the session is out of step
            raise

    def _drop(self) -> None:
        """Forget a session that cannot be used any more; the next operation opens a new one."""
        client, self._client, self._numbers, self._can_pipeline = self._client, None, None, None
        if client is not None:
            with contextlib.suppress(OSError):  # the socket may be broken already
                client.close()

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        if action != "delete":
            raise ConfigError(f"{self.name}: POP3 cannot apply {action!r} (only delete)")
        for ref in refs:
            number = self._number(ref.key)
            if number is None:
                continue  # deleted by an earlier, committed attempt
            self.client.dele(number)
            self._pending_deletes += 1

    def commit(self) -> None:
        """Send QUIT so the server applies the DELEs; ProviderUnavailable if QUIT fails."""
        with self.wrap("commit"):
            self._commit()

    def _commit(self) -> None:
        if not self._pending_deletes or self._client is None:
            return
        client, self._client, self._numbers = self._client, None, None
        self._pending_deletes = 0
        try:
            client.quit()
        except (poplib.error_proto, OSError) as exc:
            client.close()
            raise ProviderUnavailable(
                f"{self.name}: QUIT failed, deletions not confirmed: {type(exc).__name__}: {exc}"
            ) from None


def _seen(cursor: JsonDict | None) -> list[str]:
    seen = (cursor or {}).get("seen", [])
    if not isinstance(seen, list):
        log.warning("cursor 'seen' is not a list; starting over")
        return []
    return [str(u) for u in seen]


__all__ = ["Pop3Options", "Pop3Provider"]
