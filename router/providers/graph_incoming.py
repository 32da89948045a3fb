"""The ``graph`` incoming provider: reads one folder of an Exchange Online mailbox (Graph).

Features:

* new mail = the folder's delta query (``/users/{m}/mailFolders/{folder}/messages/delta``,
  ``$select`` of the few properties needed, ``Prefer: odata.maxpagesize``), paged through
  ``@odata.nextLink``; the cursor ``{"link": ...}`` is the link after the last page whose
  messages are all staged (a ``nextLink`` within a round, the ``deltaLink`` at its end), so a
  cycle stopped at ``<MaxMessageCount>`` or by a failure goes on where it left;
* an expired delta link (410 Gone, ``SyncStateNotFound``) starts a new full round; the ledger
  (message ids) and the CRM's Message-ID check keep it from delivering anything twice;
* each message's MIME comes from ``/messages/{id}/$value`` in JSON ``$batch`` requests of up to
  ``fetch_batch`` (20) messages, the next batch downloading while the current one is staged,
  so the whole parsing / classification / quarantine path applies unchanged;
* post-processing of delivered messages, batched: ``seen`` (PATCH ``isRead``), ``move:Folder``
  (the move action; a well-known name such as ``archive`` or ``deleteditems``, or a display
  name looked up once per cycle), ``delete`` (to Deleted Items); a message already gone is
  not an error;
* throttling, the 4-requests-per-mailbox limit and token renewal are the
  :class:`~router.graph.client.GraphClient`'s; the token is cached for the process
  (:data:`router.providers.credentials.SOURCES`), so cycles do not fetch a new one each.

Connection: ``<EmailServer>`` the Graph base URL (default
``https://graph.microsoft.com/v1.0``), ``<EmailUser>`` the mailbox address,
``<EmailPassword>`` the client secret of the app registration (application permission
``Mail.ReadWrite``).

Options (``<Parameters>``): ``tenant_id``, ``client_id``, ``authority``, ``ca_bundle``,
``timeout`` (see :mod:`router.graph.connection`), ``folder`` (default ``inbox``: a well-known
name, a folder id or a display name), ``page_size`` (delta rows per page, default 100),
``fetch_batch`` (messages per ``$batch``, 1-20, default 20).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

from pydantic import Field

from router.config import ProviderConfiguration
from router.errors import ConfigError, ProviderProtocolError
from router.graph.client import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    GraphClient,
    GraphTokens,
    error_code,
    raise_for_status,
)
from router.graph.connection import GraphOptions, base_url_of, check, mailbox_of
from router.models import InboundMessage, MessageRef
from router.oauth import GRAPH_SCOPE, TokenSource
from router.providers.base import AccessStep, IncomingProvider, InstanceState, JsonDict
from router.providers.credentials import SOURCES
from router.providers.graph_access import graph_steps

log = logging.getLogger(__name__)

WELL_KNOWN_FOLDERS = frozenset(
    {"inbox", "archive", "deleteditems", "sentitems", "drafts", "junkemail", "outbox"}
)
SELECT = "id,internetMessageId,receivedDateTime,isRead"
#: PR_MESSAGE_SIZE: v1.0 messages have no size property, so the size guard reads this one.
SIZE_EXPAND = "singleValueExtendedProperties($filter=id eq 'Integer 0x0E08')"


class GraphIncomingOptions(GraphOptions):
    """``<Parameters>`` of the graph incoming provider."""

    folder: str = Field("inbox", min_length=1)
    page_size: int = Field(100, ge=1, le=1000)
    fetch_batch: int = Field(MAX_BATCH, ge=1, le=MAX_BATCH)


@dataclass(frozen=True)
class Page:
    """One delta page as listed: its message refs and the link that comes after it."""

    keys: tuple[str, ...]
    link_after: str


class GraphIncomingProvider(IncomingProvider):
    """Use for an Exchange Online (Microsoft 365) mailbox through Microsoft Graph, app-only."""

    alias = "graph"
    options_model = GraphIncomingOptions
    capabilities = frozenset({"fetch_many", "seen", "move", "delete"})

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        check(config, self.options)
        self.mailbox = mailbox_of(config)
        self._client: GraphClient | None = None
        self._pages: list[Page] = []
        self._folder_ids: dict[str, str] = {}

    # -- connection ----------------------------------------------------------------------------

    def token_source(self) -> TokenSource:
        """The process-wide Graph token source of this instance's app registration (a token
        outlives the per-cycle provider; see :data:`router.providers.credentials.SOURCES`)."""
        secret = self.config.email_password
        assert secret is not None  # check() refused it otherwise
        return SOURCES.get(
            self.options.authority_url(self.name),
            self.options.client_id,
            secret.get_secret_value(),
            self.options.ca_bundle,
            scope=GRAPH_SCOPE,
            factory=GraphTokens,
        )

    def _create_client(self) -> GraphClient:
        """Build the Graph client of one cycle; the seam tests replace."""
        return GraphClient(
            base_url_of(self.config),
            self.token_source(),
            ca_bundle=self.options.ca_bundle,
            timeout=self.options.timeout,
        )

    def _connect(self) -> None:
        self._client = self._create_client()
        self._folder_ids = {}

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def client(self) -> GraphClient:
        """The client of this cycle; ProviderProtocolError before ``open()``."""
        if self._client is None:
            raise ProviderProtocolError(f"{self.name}: not connected (call open() first)")
        return self._client

    def access_steps(self) -> list[AccessStep]:
        """``test-access``: token, mailbox, the folder read and a ``move:`` target."""
        action = self.config.after_processing
        target = [action[5:].strip()] if action.startswith("move:") else []
        return graph_steps(lambda: self.client, self.mailbox, [self.options.folder, *target], False)

    @property
    def _user(self) -> str:
        return f"/users/{quote(self.mailbox, safe='@')}"

    # -- listing and cursor --------------------------------------------------------------------

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        self._pages = []
        link: str | None = self._start_link(state.cursor)
        refs: list[MessageRef] = []
        while link and len(refs) < limit:
            rows, following = self._page(link, min(self.options.page_size, limit - len(refs)))
            listed = [MessageRef(str(r["id"]), _size(r)) for r in rows if _is_message(r)]
            keys = tuple(r.key for r in listed)
            refs += listed
            next_link, delta_link = following
            self._pages.append(Page(keys, next_link or delta_link))
            link = next_link or None  # a deltaLink ends the round
        return refs

    def _start_link(self, cursor: JsonDict | None) -> str:
        if cursor and isinstance(cursor.get("link"), str):
            return str(cursor["link"])
        folder = quote(self.options.folder, safe="")
        return (
            f"{self._user}/mailFolders/{folder}/messages/delta"
            f"?$select={SELECT}&$expand={quote(SIZE_EXPAND, safe='(),=$')}"
        )

    def _page(self, link: str, size: int) -> tuple[list[JsonDict], tuple[str, str]]:
        """GET one delta page; a 410 restarts with the initial request of a new round."""
        prefer = {"Prefer": f"odata.maxpagesize={size}"}
        response = self.client.request("GET", link, headers=prefer)
        if response.status_code == 410:
            log.warning(
                "%s: the delta link expired (%s); reading the folder from the start",
                self.name,
                error_code(response),
            )
            response = self.client.request("GET", self._start_link(None), headers=prefer)
        raise_for_status(response, f"{self.name}: delta of {self.options.folder}")
        body = response.json()
        following = (
            str(body.get("@odata.nextLink") or ""),
            str(body.get("@odata.deltaLink") or ""),
        )
        if not any(following):
            raise ProviderProtocolError(f"{self.name}: a delta page without nextLink/deltaLink")
        return list(body.get("value") or []), following

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        staged = {r.key for r in refs}
        cursor = dict(state.cursor or {})
        for page in self._pages:
            if not all(key in staged for key in page.keys):
                break
            cursor = {"link": page.link_after}
        return cursor

    # -- fetching ------------------------------------------------------------------------------

    def _fetch(self, ref: MessageRef) -> bytes:
        response = self.client.request("GET", f"{self._user}/messages/{quote(ref.key)}/$value")
        if response.status_code == 404:
            raise ProviderProtocolError(f"{self.name}: {ref.key} is no longer in the mailbox")
        raise_for_status(response, f"{self.name}: fetch {ref.key}")
        return response.content

    def fetch_many(self, refs: Sequence[MessageRef]) -> Iterator[InboundMessage]:
        """Download ``refs`` in order, ``fetch_batch`` per ``$batch``, one batch ahead."""
        size = self.options.fetch_batch
        chunks = [refs[i : i + size] for i in range(0, len(refs), size)]
        with self.wrap(f"fetch {len(refs)} messages"), ThreadPoolExecutor(1) as ahead:
            pending: Future[list[BatchResponse]] | None = None
            for index, chunk in enumerate(chunks):
                answers = pending.result() if pending else self._download(chunk)
                nxt = chunks[index + 1] if index + 1 < len(chunks) else None
                pending = ahead.submit(self._download, nxt) if nxt else None
                yield from self._messages(chunk, answers)

    def _download(self, chunk: Sequence[MessageRef]) -> list[BatchResponse]:
        user = self._user
        return self.client.batch(
            [BatchRequest("GET", f"{user}/messages/{quote(r.key)}/$value") for r in chunk]
        )

    def _messages(
        self, chunk: Sequence[MessageRef], answers: Sequence[BatchResponse]
    ) -> Iterator[InboundMessage]:
        for ref, answer in zip(chunk, answers, strict=True):
            if answer.status == 404:
                raise ProviderProtocolError(f"{self.name}: {ref.key} is no longer in the mailbox")
            if answer.status >= 400:
                raise ProviderProtocolError(f"{self.name}: fetch {ref.key}: HTTP {answer.status}")
            yield InboundMessage(ref, answer.content)

    # -- post-processing -----------------------------------------------------------------------

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        parts = [self._action(ref, action) for ref in refs]
        answers = self.client.batch(parts)
        gone = sum(1 for a in answers if a.status == 404)
        if gone:
            log.info("%s: %d messages were already gone; nothing to %s", self.name, gone, action)
        for ref, answer in zip(refs, answers, strict=True):
            if answer.status >= 400 and answer.status != 404:
                raise ProviderProtocolError(
                    f"{self.name}: {action} {ref.key}: HTTP {answer.status} {_code(answer)}"
                )

    def _action(self, ref: MessageRef, action: str) -> BatchRequest:
        url = f"{self._user}/messages/{quote(ref.key)}"
        if action == "seen":
            return BatchRequest("PATCH", url, {"isRead": True})
        if action == "delete":
            return BatchRequest("DELETE", url)
        if action.startswith("move:"):
            destination = self._folder_id(action[5:].strip())
            return BatchRequest("POST", f"{url}/move", {"destinationId": destination})
        raise ConfigError(f"{self.name}: unknown post-processing action {action!r}")

    def _folder_id(self, folder: str) -> str:
        """A well-known name as it is; a display name looked up (once per cycle)."""
        if folder.lower() in WELL_KNOWN_FOLDERS:
            return folder.lower()
        if folder not in self._folder_ids:
            escaped = folder.replace("'", "''")
            response = self.client.request(
                "GET",
                f"{self._user}/mailFolders",
                params={"$filter": f"displayName eq '{escaped}'"},
            )
            raise_for_status(response, f"{self.name}: look up folder {folder!r}")
            found = response.json().get("value") or []
            if not found:
                raise ConfigError(
                    f"{self.name}: <AfterProcessing> move:{folder}: no folder of that name in "
                    f"{self.mailbox} (create it, or use a well-known name such as archive)"
                )
            self._folder_ids[folder] = str(found[0]["id"])
        return self._folder_ids[folder]


def _is_message(row: JsonDict) -> bool:
    return "@removed" not in row and "id" in row


def _size(row: JsonDict) -> int | None:
    """PR_MESSAGE_SIZE of a delta row, when the server expanded it."""
    for prop in row.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower().replace("0x0e08", "0xe08") == "integer 0xe08":
            try:
                return int(prop.get("value"))
            except (TypeError, ValueError):
                return None
    return None


def _code(answer: BatchResponse) -> str:
    body = answer.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""


__all__ = ["GraphIncomingOptions", "GraphIncomingProvider"]
