"""The ``imap`` incoming provider: reads one folder of an IMAP4rev1 mailbox (imapclient).

Features:

* new mail = UIDs above the cursor ``{"uidvalidity": int, "last_uid": int}``; a changed
  UIDVALIDITY restarts from UID 1 (the ledger and the CRM's Message-ID check skip what was already
  delivered);
* the folder is opened read-only (EXAMINE) to list and fetch, and bodies are fetched with
  ``BODY.PEEK[]``, so reading never marks anything \\Seen;
* batched downloads: :meth:`ImapProvider.fetch_many` sends one ``UID FETCH`` per ``fetch_batch``
  messages (or ``fetch_batch_bytes``, whichever comes first);
* post-processing of delivered messages: ``seen`` (\\Seen), ``delete`` (\\Deleted + UID EXPUNGE
  with UIDPLUS, else EXPUNGE), ``move:Folder`` (UID MOVE, else COPY + delete; the folder is
  created when missing). Only refs of the current UIDVALIDITY are touched.
* IMAP IDLE push: :meth:`ImapProvider.idle_connection` opens the connection a
  :mod:`router.push` watcher IDLEs on (same TLS, credentials and folder as the polls).

Connection: ``<EmailServer>``, ``<EmailPort>`` (default 993 for ``ssl``, 143 otherwise),
``<EmailSecurity>`` ``ssl`` | ``starttls`` | ``none``, ``<EmailAuthMode>`` ``password`` |
``xoauth2`` (token from ``<EmailPassword>`` or the ``token_provider`` function), ``<EmailUser>``,
``<EmailPassword>``. ``LOGIN`` carries only ASCII, so a user name or password with other
characters logs in with ``AUTHENTICATE PLAIN`` (UTF-8, RFC 4616) when the server offers it.

Options (``<Parameters>``): ``folder`` (default INBOX), ``timeout`` (seconds, default 30),
``fetch_batch`` (messages per FETCH, default 50), ``fetch_batch_bytes`` (default 8 MB),
``ca_bundle``, ``tls_verify`` (default true), ``token_provider`` (``package.module:function``);
for XOAUTH2 with client credentials (Microsoft 365) ``tenant_id``, ``client_id`` and ``authority``,
the client secret in ``<EmailPassword>`` (:mod:`router.providers.credentials`).
Folder names (``folder``, ``move:Folder``) use ``/`` between levels, whatever the server's own
hierarchy delimiter is (``Archive/CRM`` becomes ``Archive.CRM`` on Dovecot's default layout).
"""

from __future__ import annotations

import contextlib
import functools
import imaplib
import logging
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import LoginError
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

#: UIDs per ``FETCH (RFC822.SIZE)`` while listing (imapclient's FETCH takes explicit UIDs only).
SIZE_CHUNK = 500


class ImapOptions(TlsOptions, OAuthOptions):
    """``<Parameters>`` of the imap provider."""

    folder: str = Field("INBOX", min_length=1)
    timeout: float = Field(30.0, gt=0, le=3600)
    fetch_batch: int = Field(50, ge=1, le=1000)
    fetch_batch_bytes: int = Field(8_000_000, ge=1)
    token_provider: str | None = None


def uid_set(uids: Sequence[int]) -> str:
    """The compact IMAP sequence set of ``uids``: ``[1, 2, 3, 5]`` -> ``"1:3,5"``."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    start = prev = ordered[0]
    for uid in [*ordered[1:], None]:
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        if uid is not None:
            start = prev = uid
    return ",".join(parts)


def parse_key(key: str) -> tuple[int, int]:
    """Split a ref key ``"<uidvalidity>:<uid>"`` into its two numbers."""
    validity, _, uid = key.partition(":")
    return int(validity), int(uid)


class ImapProvider(IncomingProvider):
    """Use for any IMAP mailbox (Exchange, Gmail, Dovecot, ...); one folder per instance."""

    alias = "imap"
    options_model = ImapOptions
    capabilities = frozenset({"fetch_many", "seen", "move", "delete", "idle"})
    retryable_errors = (*IncomingProvider.retryable_errors, imaplib.IMAP4.abort)
    auth_errors = (ssl.SSLCertVerificationError, LoginError)
    protocol_errors = (imaplib.IMAP4.error,)

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        if not config.email_server:
            raise ConfigError(f"{config.name}: <EmailServer> is required")
        self.credentials = Credentials(
            config,
            self.options.token_provider,
            oauth=self.options,
            ca_bundle=self.options.ca_bundle,
        )
        self.security = config.email_security
        self.port = config.email_port or (993 if self.security == "ssl" else 143)
        self._client: IMAPClient | None = None
        self._uidvalidity: int | None = None
        self._readonly: bool | None = None
        self._uidnext: int | None = None
        self._delimiter: str | None = None

    # -- connection ----------------------------------------------------------------------------

    def _create_client(self) -> IMAPClient:
        """Open the TCP (or TLS) connection; the seam tests replace."""
        tls = self.security == "ssl"
        return IMAPClient(
            self.config.email_server or "",
            self.port,
            ssl=tls,
            ssl_context=self.options.ssl_context(self.name) if tls else None,
            timeout=self.options.timeout,
        )

    def _connect(self) -> None:
        self._client = self._create_client()
        try:
            if self.security == "starttls":
                self._client.starttls(self.options.ssl_context(self.name))
            self._login(self._client)
        except BaseException:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # keep the original error
                client.shutdown()  # open() failed: nobody will call close()
            raise

    def _login(self, client: IMAPClient) -> None:
        user = self.credentials.user
        if self.credentials.mode == "xoauth2":
            login = functools.partial(client.oauth2_login, user)
            self.credentials.login_with_token(login, refused=(LoginError,))
            return
        secret = self.credentials.secret()
        if user.isascii() and secret.isascii():
            client.login(user, secret)
        else:
            self._plain_login(client, user, secret)

    def _plain_login(self, client: IMAPClient, user: str, secret: str) -> None:
        """``AUTHENTICATE PLAIN``: UTF-8 credentials, which imaplib's LOGIN cannot encode."""
        if not client.has_capability("AUTH=PLAIN"):
            raise ProviderAuthError(
                f"{self.name}: <EmailUser> or <EmailPassword> has non-ASCII characters, which "
                f"IMAP LOGIN cannot carry, and {self.config.email_server} offers no "
                "AUTHENTICATE PLAIN: use an ASCII password (or xoauth2)"
            )
        client.plain_login(user, secret)

    def _close(self) -> None:
        client, self._client = self._client, None
        self._uidvalidity = self._readonly = None
        self._delimiter = None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            client.shutdown()
            raise

    def idle_connection(self) -> IMAPClient:
        """A new logged-in client with the folder selected read-only, for IMAP IDLE.

        The caller (:mod:`router.push`) owns and closes it; it is not this provider's cycle
        connection. Raises what :meth:`open` raises (ProviderUnavailable, ProviderAuthError).
        """
        with self.wrap("connect for IDLE"):
            self._connect()
            try:
                self.client.select_folder(self._server_name(self.options.folder), readonly=True)
            except BaseException:
                self.close()
                raise
            client, self._client = self.client, None
            self._delimiter = None
        return client

    @property
    def client(self) -> IMAPClient:
        """The connected client; ProviderProtocolError before ``open()``."""
        if self._client is None:
            raise ProviderProtocolError(f"{self.name}: not connected (call open() first)")
        return self._client

    def _select(self, *, readonly: bool, fresh: bool = False) -> int:
        """Select the folder (EXAMINE if ``readonly``) unless it already is; return UIDVALIDITY."""
        if fresh or self._uidvalidity is None or (self._readonly and not readonly):
            folder = self._server_name(self.options.folder)
            info = self.client.select_folder(folder, readonly=readonly)
            self._uidvalidity, self._readonly = int(info[b"UIDVALIDITY"]), readonly
            self._uidnext = int(info[b"UIDNEXT"]) if b"UIDNEXT" in info else None
        return self._uidvalidity

    def _server_name(self, folder: str) -> str:
        """``folder`` with ``/`` between levels replaced by the server's hierarchy delimiter."""
        if "/" not in folder:
            return folder
        if self._delimiter is None:
            found = self.client.list_folders("", "")  # LIST "" "" answers the delimiter
            raw = found[0][1] if found else b"/"
            self._delimiter = raw.decode() if isinstance(raw, bytes) else str(raw or "/")
        return folder.replace("/", self._delimiter)

    # -- listing and cursor --------------------------------------------------------------------

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        validity = self._select(readonly=True, fresh=True)
        last = self._last_uid(state.cursor, validity)
        if self._uidnext is not None and self._uidnext <= last + 1:
            return []  # nothing arrived since the cursor: spare the SEARCH
        found = self.client.search(["UID", f"{last + 1}:*"])
        uids = sorted(u for u in found if u > last)[:limit]  # "n:*" always matches the last
        if not uids:
            return []
        sizes: dict[int, dict[bytes, Any]] = {}
        for start in range(0, len(uids), SIZE_CHUNK):  # keeps each command line short
            sizes.update(self.client.fetch(uids[start : start + SIZE_CHUNK], ["RFC822.SIZE"]))
        return [
            MessageRef(f"{validity}:{uid}", int(sizes[uid][b"RFC822.SIZE"]))
            for uid in uids
            if uid in sizes  # expunged by someone else in between
        ]

    def _last_uid(self, cursor: JsonDict | None, validity: int) -> int:
        if not cursor:
            return 0
        try:
            if int(cursor["uidvalidity"]) == validity:
                return int(cursor["last_uid"])
        except (KeyError, TypeError, ValueError):
            log.warning("%s: unreadable cursor, reading the folder from the start", self.name)
            return 0
        log.warning(
            "%s: UIDVALIDITY changed (%s -> %s), reading the folder from the start",
            self.name,
            cursor.get("uidvalidity"),
            validity,
        )
        return 0

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        validity = self._uidvalidity
        if validity is None and refs:
            validity = parse_key(refs[-1].key)[0]
        if validity is None:
            return dict(state.cursor or {})
        last = self._last_uid(state.cursor, validity)
        uids = [uid for v, uid in map(parse_key, (r.key for r in refs)) if v == validity]
        return {"uidvalidity": validity, "last_uid": max([last, *uids])}

    # -- fetching ------------------------------------------------------------------------------

    def _fetch(self, ref: MessageRef) -> bytes:
        return self._fetch_batch([ref])[0][1]

    def fetch_many(self, refs: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        """Download ``refs`` in order with one ``UID FETCH`` per batch (see module docstring)."""
        with self.wrap(f"fetch {len(refs)} messages"):
            for batch in self._batches(refs):
                for ref, raw in self._fetch_batch(batch):
                    yield InboundMessage(ref, raw)

    def _batches(self, refs: Sequence[MessageRef]) -> Iterator[list[MessageRef]]:
        batch: list[MessageRef] = []
        size = 0
        for ref in refs:
            full = len(batch) >= self.options.fetch_batch
            if batch and (full or size + (ref.size or 0) > self.options.fetch_batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(ref)
            size += ref.size or 0
        if batch:
            yield batch

    def _fetch_batch(self, batch: Sequence[MessageRef]) -> list[tuple[MessageRef, bytes]]:
        validity = self._select(readonly=True)
        uids = [self._uid_of(ref, validity) for ref in batch]
        data: dict[int, dict[bytes, Any]] = self.client.fetch(uids, ["BODY.PEEK[]"])
        out = []
        for ref, uid in zip(batch, uids, strict=True):
            raw = data.get(uid, {}).get(b"BODY[]")
            if raw is None:
                raise ProviderProtocolError(f"{self.name}: {ref.key} is no longer on the server")
            out.append((ref, bytes(raw)))
        return out

    def _uid_of(self, ref: MessageRef, validity: int) -> int:
        ref_validity, uid = parse_key(ref.key)
        if ref_validity != validity:  # the folder changed, not the message: retry the cycle
            raise ProviderUnavailable(
                f"{self.name}: {ref.key}: the folder's UIDVALIDITY is now {validity}; list again"
            )
        return uid

    # -- post-processing -----------------------------------------------------------------------

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        validity = self._select(readonly=False)
        keys = [parse_key(r.key) for r in refs]
        uids = [uid for v, uid in keys if v == validity]
        if len(uids) < len(keys):
            log.info(
                "%s: %d refs belong to an old UIDVALIDITY; not touched",
                self.name,
                len(keys) - len(uids),
            )
        if not uids:
            return
        which = uid_set(uids)
        if action == "seen":
            self.client.add_flags(which, [SEEN], silent=True)
        elif action == "delete":
            self._delete(which)
        elif action.startswith("move:"):
            self._move(which, action[5:].strip())
        else:
            raise ConfigError(f"{self.name}: unknown post-processing action {action!r}")

    def _delete(self, which: str) -> None:
        self.client.add_flags(which, [DELETED], silent=True)
        if self.client.has_capability("UIDPLUS"):
            self.client.uid_expunge(which)
        else:  # without UIDPLUS this also expunges what others flagged \Deleted: IMAP's limit
            self.client.expunge()

    def _move(self, which: str, folder: str) -> None:
        folder = self._server_name(folder)
        self._ensure_folder(folder)
        if self.client.has_capability("MOVE"):
            self.client.move(which, folder)
        else:
            self.client.copy(which, folder)
            self._delete(which)

    def _ensure_folder(self, folder: str) -> None:
        if self.client.folder_exists(folder):
            return
        try:
            self.client.create_folder(folder)
        except imaplib.IMAP4.error:
            if not self.client.folder_exists(folder):  # not a race with another poller
                raise


__all__ = ["ImapOptions", "ImapProvider", "parse_key", "uid_set"]
