"""The ``graph`` outgoing provider: composed CRM emails -> Exchange Online through Microsoft Graph.

Features:

* sends the router's own composed MIME (Message-ID, tracking token, attachments exactly as
  SMTP sends them) with ``POST /users/{mailbox}/sendMail``, the body the base64 of the message
  and ``Content-Type: text/plain``; Graph takes the recipients from the headers, so the Bcc
  recipients are written into a ``Bcc:`` header of the copy handed to Graph (Exchange removes
  it from what the others receive; the composed message itself never has one);
* at most once: :meth:`~router.providers.base.OutgoingProvider.commit` runs right before the
  POST and :meth:`~router.providers.base.OutgoingProvider.handed_over` once Graph answered 202.
  The POST is this provider's own exchange (not the client's generic retry loop): it is sent
  again only after answers that mean "not taken" (429 and 503 after their ``Retry-After``, one
  401 with a new token). An answer that leaves the outcome open (a timeout or a dropped
  connection after the request went out, 500/502/504) is never retried: the email is marked
  Failed as "may or may not have been sent";
* answers mapped like SMTP replies: 2xx sent; 429/503 still throttled after the retries, a
  token or permission refused (401, 403 other than SendAs), an unknown mailbox (404): the email
  is retried later (:class:`~router.errors.ProviderUnavailable`, the batch stops); any other 4xx
  (400 invalid recipients or MIME, 403 ``ErrorSendAsDenied``, 413 too large): Failed with
  Graph's error code as the reason (:class:`~router.errors.MessageRejected`);
* a message over Graph's 4 MB sendMail limit (base64) goes through a draft instead
  (:mod:`router.providers.graph_drafts`): the draft is created from the MIME without its
  attachments, the files are attached (upload sessions above 3 MB, up to 150 MB each), and the
  draft's ``send`` is the commit point, with the same outcomes as ``sendMail``. This path needs
  ``Mail.ReadWrite`` as well, and Graph keeps such a message in Sent Items whatever
  ``save_to_sent_items`` says;
* tokens (app-only client credentials, scope ``https://graph.microsoft.com/.default``) are
  shared by every cycle of the process and renewed before they expire
  (:data:`router.providers.credentials.SOURCES`); the 4-requests-per-mailbox limit and
  Retry-After are kept through the :class:`~router.graph.client.GraphClient`'s mailbox gate.

Connection: ``<EmailServer>`` the Graph base URL (default ``https://graph.microsoft.com/v1.0``),
``<EmailUser>`` the mailbox that sends, ``<EmailPassword>`` the app's client secret
(application permission ``Mail.Send``; ``Mail.ReadWrite`` too for messages over 4 MB).

Options (``<Parameters>``): ``tenant_id``, ``client_id``, ``authority``, ``ca_bundle``,
``timeout`` (see :mod:`router.graph.connection`); ``save_to_sent_items`` (default true: Graph's
own default; ``false`` asks Graph not to keep a copy), ``retry_backoff`` /
``retry_backoff_max`` (seconds before retrying an email that could not be sent for now,
doubling per attempt; defaults 60 / 3600).
"""

from __future__ import annotations

import base64
import re
import uuid
from urllib.parse import quote

import requests
from pydantic import Field
from requests.exceptions import ConnectTimeout, InvalidURL, SSLError
from urllib3.exceptions import MaxRetryError, NewConnectionError

from router.config import ProviderConfiguration
from router.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderProtocolError,
    ProviderUnavailable,
    RouterError,
)
from router.graph.client import (
    GraphClient,
    GraphTokens,
    MailboxGate,
    error_code,
    retry_after_seconds,
)
from router.graph.connection import GraphOptions, base_url_of, check, mailbox_of
from router.mail.addresses import AddressRefused, parse_address
from router.models import Address, OutboundEmail
from router.oauth import GRAPH_SCOPE, TokenSource, describe, origin_of
from router.providers.base import AccessStep, OutgoingProvider, RetryBackoff, SubmitResult
from router.providers.credentials import SOURCES
from router.providers.graph_access import graph_steps
from router.providers.graph_drafts import MAX_SEND_BYTES, DraftSender

#: Answers that mean Graph did not take the message: wait for Retry-After and send again.
NOT_TAKEN = frozenset({429, 503})
#: The text of an email whose fate is unknown (the CRM note and the ledger reason).
UNKNOWN = (
    "may or may not have been sent: Graph did not answer ({why}); check the mailbox's Sent "
    "Items before sending it again"
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class GraphOutgoingOptions(GraphOptions):
    """``<Parameters>`` of the graph outgoing provider (see the module docstring)."""

    save_to_sent_items: bool = True
    retry_backoff: float = Field(default=RetryBackoff.first, ge=0)
    retry_backoff_max: float = Field(default=RetryBackoff.maximum, ge=0)


class OutcomeUnknown(Exception):
    """Internal: the request may have reached Graph, but no answer says what became of it."""


class GraphOutgoingProvider(OutgoingProvider):
    """Sends through an Exchange Online mailbox with Graph; use it for
    ``<ProviderClass>graph</ProviderClass>`` with ``<Direction>Outgoing</Direction>``."""

    alias = "graph"
    options_model = GraphOutgoingOptions
    capabilities = frozenset({"send"})
    commit_point = True

    options: GraphOutgoingOptions

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        check(config, self.options)
        self.mailbox = mailbox_of(config)
        self._client: GraphClient | None = None

    @property
    def retry_backoff(self) -> RetryBackoff:
        """The ``retry_backoff`` / ``retry_backoff_max`` options."""
        return RetryBackoff(self.options.retry_backoff, self.options.retry_backoff_max)

    # -- connection -----------------------------------------------------------------------------
    def token_source(self) -> TokenSource:
        """The process-wide Graph token source of this instance's app registration."""
        secret = self.config.email_password
        assert secret is not None  # check() refused it otherwise
        try:
            value = secret.get_secret_value()
        except (KeyError, OSError) as exc:  # Env= unset, File= unreadable: never the value
            raise ProviderAuthError(
                f"{self.name}: cannot read the client secret: {type(exc).__name__}"
            ) from None
        return SOURCES.get(
            self.options.authority_url(self.name),
            self.options.client_id,
            value,
            self.options.ca_bundle,
            scope=GRAPH_SCOPE,
            factory=GraphTokens,
        )

    def _create_client(self) -> GraphClient:
        """Build the Graph client of one cycle (the seam tests replace)."""
        return GraphClient(
            base_url_of(self.config),
            self.token_source(),
            ca_bundle=self.options.ca_bundle,
            timeout=self.options.timeout,
        )

    def _connect(self) -> None:
        client = self._create_client()
        try:
            # A refused secret stops the instance here, before any email is claimed.
            client.tokens.token()
        except BaseException:
            client.close()
            raise
        self._client = client

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
        """``test-access``: token, mailbox, and an honest word on the send permission."""
        return graph_steps(lambda: self.client, self.mailbox, [], sends=True)

    # -- sending --------------------------------------------------------------------------------
    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        """Hand the message to Graph once: ``sendMail``, or a draft's ``send`` over 4 MB; see the
        module docstring for the outcomes."""
        rcpts = tuple(dict.fromkeys(a.email for a in (*email.to, *email.cc, *email.bcc)))
        result = SubmitResult(rcpts, {})
        wire = self._with_bcc(message, email.bcc)
        body = base64.b64encode(wire)
        if len(body) > MAX_SEND_BYTES:
            self._submit_draft(wire, result)
            return result
        url = self.client.url(f"users/{quote(self.mailbox, safe='@')}/sendMail")
        params = None if self.options.save_to_sent_items else {"saveToSentItems": "false"}
        self.commit(result)
        self._judge(self._hand_over(url, body, params))
        self.handed_over()
        return result

    def _submit_draft(self, message: bytes, result: SubmitResult) -> None:
        """A message over 4 MB: build its draft, then its ``send`` is the commit point."""
        drafts = DraftSender(self.client, self.mailbox, self.name)
        draft = drafts.prepare(message)
        self.commit(result)
        try:
            response = self._hand_over(drafts.send_url(draft), b"", None)
        except ProviderUnavailable:  # certainly not sent: no draft may stay behind
            drafts.discard(draft)
            raise
        if 300 <= response.status_code < 500:  # refused, so not sent either
            drafts.discard(draft)
        self._judge(response)
        self.handed_over()

    def _hand_over(self, url: str, body: bytes, params: dict[str, str] | None) -> requests.Response:
        """The POST after the commit point; an answer that leaves the outcome open is Failed."""
        try:
            return self._send_mail(url, body, params)
        except OutcomeUnknown as exc:
            raise MessageRejected(f"{self.name}: {UNKNOWN.format(why=exc)}") from None

    def _with_bcc(self, message: bytes, bcc: tuple[Address, ...]) -> bytes:
        """``message`` with a ``Bcc:`` header naming ``bcc`` (Graph reads recipients from the
        headers only); the addresses go through the one address parser (IDNA, no CR/LF)."""
        if not bcc:
            return message
        try:
            wire = [parse_address(a.email).email for a in bcc]
        except AddressRefused as exc:
            raise MessageRejected(f"{self.name}: not sent: Bcc recipient {exc}") from None
        end = _HEADER_END.search(message)
        if end is None:
            raise MessageRejected(f"{self.name}: not sent: the message has no header end")
        eol = b"\r\n" if message[end.start() : end.start() + 1] == b"\r" else b"\n"
        header = b"Bcc: " + (b"," + eol + b" ").join(a.encode("utf-8") for a in wire)
        return message[: end.start()] + eol + header + message[end.start() :]

    def _send_mail(self, url: str, body: bytes, params: dict[str, str] | None) -> requests.Response:
        """The sending POST: sent again only after answers that mean "not taken"."""
        client = self.client
        gate = client.gate(self.mailbox)
        headers = {"client-request-id": str(uuid.uuid4())}
        if body:  # MIME as base64 text; a draft's send has no body
            headers["Content-Type"] = "text/plain"
        refreshed = False
        attempts = client.throttling.max_attempts
        for attempt in range(1, attempts + 1):
            token = self._token()
            auth = {**headers, "Authorization": f"Bearer {token}"}
            response = self._post(gate, url, body, auth, params)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self._renew(token)
            elif response.status_code in NOT_TAKEN and attempt < attempts:
                self._wait_out(gate, response, attempt)
            else:
                return response
        raise ProviderUnavailable(f"{self.name}: not sent: still throttled after {attempts} tries")

    def _token(self) -> str:
        """The bearer token; a failure here means nothing was sent (retry the email later)."""
        try:
            return self.client.tokens.token()
        except RouterError as exc:
            raise ProviderUnavailable(f"{self.name}: not sent: no token: {exc}") from None

    def _renew(self, stale: str) -> None:
        try:
            self.client.tokens.refresh(stale)
        except RouterError as exc:
            raise ProviderUnavailable(f"{self.name}: not sent: no new token: {exc}") from None

    def _post(
        self,
        gate: MailboxGate,
        url: str,
        body: bytes,
        headers: dict[str, str],
        params: dict[str, str] | None,
    ) -> requests.Response:
        """One POST within the mailbox's concurrency limit and throttling window."""
        client = self.client
        slots = gate.acquire(1)
        try:
            return client.http.request(
                "POST", url, data=body, headers=headers, params=params, timeout=client.timeout
            )
        except requests.RequestException as exc:
            if _never_sent(exc):
                raise ProviderUnavailable(
                    f"{self.name}: not sent: POST to {origin_of(url)}: {describe(exc)}"
                ) from None
            raise OutcomeUnknown(describe(exc)) from None
        finally:
            gate.release(slots)

    def _wait_out(self, gate: MailboxGate, response: requests.Response, attempt: int) -> None:
        """Hold the mailbox back for the answer's Retry-After (or a backoff when it has none)."""
        throttling = self.client.throttling
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        delay = throttling.backoff(attempt) if delay is None else delay
        gate.throttle(delay)
        if delay > throttling.max_retry_after:
            raise ProviderUnavailable(
                f"{self.name}: sendMail throttled for {delay:.0f} s", retry_after=delay
            )

    def _judge(self, response: requests.Response) -> None:
        """Return for 2xx; raise what the answer means for this email (module docstring)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"HTTP {status} {error_code(response)}: {_graph_message(response)}".strip()
        if status in NOT_TAKEN:
            retry = retry_after_seconds(response.headers.get("Retry-After"))
            raise ProviderUnavailable(f"{self.name}: not sent: {reason}", retry_after=retry)
        if status >= 500:
            raise MessageRejected(f"{self.name}: {UNKNOWN.format(why=reason)}")
        if status in (401, 403, 404) and error_code(response) != "ErrorSendAsDenied":
            raise ProviderUnavailable(f"{self.name}: not sent: {reason} - {_hint(status)}")
        raise MessageRejected(f"{self.name}: Graph refused the message: {reason}")


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not leave (no connection, TLS refused, bad URL)."""
    if isinstance(exc, ConnectTimeout | SSLError | InvalidURL):
        return True
    # Connection refused, no route, DNS: urllib3's NewConnectionError inside its retry error.
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def _graph_message(response: requests.Response) -> str:
    """Graph's ``error.message`` (Graph does not quote message bodies there), shortened."""
    try:
        text = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""
    return " ".join(text.split())[:200]


def _hint(status: int) -> str:
    if status == 404:
        return "check <EmailUser>: Graph does not know this mailbox"
    return (
        "the app registration needs the application permission Mail.Send with admin consent, "
        "and an application access policy (or RBAC for Applications) that includes this mailbox"
    )


__all__ = ["MAX_SEND_BYTES", "GraphOutgoingOptions", "GraphOutgoingProvider"]
