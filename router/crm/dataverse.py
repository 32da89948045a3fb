"""The Dataverse (Dynamics 365) CRM adapter over the Web API with OAuth 2.0 client credentials.

Use :class:`DataverseAdapter` (built by ``router.crm.factory.make_crm`` from a ``<Deployment>``) to
deliver incoming email as activities and to send the CRM's outgoing email.

Features:
    * Incoming: CheckIncomingEmail (duplicate / acceptance check), then DeliverIncomingEmail with
      every field, ``ExtraProperties`` for the receiving user/queue and ``SubmittedBy`` for the
      receiving mailbox. :meth:`~DataverseAdapter.deliver_many` sends many activities through
      ``$batch`` (``batch_size`` per request, ``Prefer: odata.continue-on-error``, one result
      per activity) with up to ``max_workers`` batches in flight.
    * Tracking filters: :meth:`~DataverseAdapter.screen` asks CheckIncomingEmail (``$batch``)
      about the messages of owners whose filtering method is not "all messages"
      (:mod:`router.crm.dataverse_filters`).
    * Outgoing: BackgroundSendEmail with a FetchXML query for the owners' Pending Send emails,
      parties and attachments fetched in one ``$batch``; SendEmail(IssueSend=false) marks Sent;
      a PATCH to Failed (8) plus a note with the reason; ``deliveryattempts`` updates.
    * Errors: see ``dataverse_http`` (429 waits exactly Retry-After; 5xx/timeouts retried; 4xx
      permanent for the record; 401 after a token refresh stops the instance).

Connection: ``<CrmServerUrl>`` (``https://org.crm.dynamics.com``), ``<TenantId>`` or
``<Authority>``, ``<ClientId>``, ``<ClientSecret>``, ``<ApiVersion>``, ``<CaBundle>``.

Options (:class:`DataverseOptions`): ``batch_size`` (10), ``max_workers`` (16, at most 50),
``attachments`` (``inline`` or ``separate``), timeouts, retry policy, ``failure_note``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from router.config import Deployment
from router.crm import dataverse_mailboxes
from router.crm.base import CrmAdapter, DeliveryTarget, MailboxRecord, Owners, Verdict
from router.crm.dataverse_auth import TokenSource, default_authority
from router.crm.dataverse_batch import Part, PartResult, build_batch, parse_batch
from router.crm.dataverse_filters import TrackingFilters
from router.crm.dataverse_http import (
    HARD_MAX_CONNECTIONS,
    RETRYABLE_STATUS,
    MaybeSent,
    RetryPolicy,
    WebApi,
    make_session,
    retry_after_seconds,
    status_error,
)
from router.crm.dataverse_payloads import (
    FAILED,
    NS,
    SENT,
    Shapes,
    attachment_entity,
    check_incoming_path,
    deliver_params,
    entities_of,
    odata_string,
    outbound_email,
    pending_fetchxml,
)
from router.crm.tracking import REASONS
from router.errors import CrmAuthError, CrmError, CrmRejected, CrmUnavailable
from router.models import Activity, Attachment, DeliveryResult, OutboundEmail

log = logging.getLogger("router.crm.dataverse")

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DELIVER = "emails/Microsoft.Dynamics.CRM.DeliverIncomingEmail"
MAX_URL = 2048  # longer CheckIncomingEmail URLs go through $batch (servers cap URL lengths)


@dataclass(frozen=True)
class DataverseOptions:
    """Tuning of the adapter.

    ``attachments``: ``inline`` (default) sends them inside DeliverIncomingEmail, so the email
    and its attachments are created in one request and a failure leaves nothing half-made;
    ``separate`` creates the email first and then one ``activitymimeattachments`` record per
    attachment - the shape Dataverse documents explicitly, for organisations that refuse
    inline attachments; a retry after a partial failure adds only the missing files (matched by
    file name), and such activities are delivered one by one rather than in ``$batch``.

    ``shapes`` holds the wire-format choices Microsoft's documentation leaves open (address
    separator, ExtraProperties columns for the receiving user and queue).
    """

    batch_size: int = 10
    max_workers: int = 16
    attachments: Literal["inline", "separate"] = "inline"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    failure_note: bool = True
    shapes: Shapes = field(default_factory=Shapes)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be 1..1000")
        if not 1 <= self.max_workers <= HARD_MAX_CONNECTIONS:
            raise ValueError(f"max_workers must be 1..{HARD_MAX_CONNECTIONS} (Dataverse allows 52)")


class DataverseAdapter(CrmAdapter):
    """Dataverse Web API adapter; thread-safe, one instance per Deployment."""

    name = "dataverse"

    def __init__(
        self,
        server_url: str,
        authority: str,
        client_id: str,
        client_secret: Callable[[], str],
        *,
        api_version: str = "9.2",
        ca_bundle: str | None = None,
        options: DataverseOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options or DataverseOptions()
        self.server_url = server_url.rstrip("/")
        base_url = f"{self.server_url}/api/data/v{api_version}/"
        self.service_path = urlsplit(base_url).path
        session = make_session(ca_bundle, self.options.max_workers + 2)
        self.tokens = TokenSource(authority, client_id, client_secret, self.server_url, session)
        timeout = (self.options.connect_timeout, self.options.read_timeout)
        self.api = WebApi(base_url, self.tokens, session, timeout, self.options.retry, sleep)
        self._sleep = sleep
        self._recent = RecentDeliveries()
        self.filters = TrackingFilters(self._batch, part_error, self.options.shapes)

    def __repr__(self) -> str:
        return f"DataverseAdapter({self.server_url!r}, client_id={self.tokens.client_id!r})"

    @classmethod
    def from_deployment(
        cls, dep: Deployment, options: DataverseOptions | None = None
    ) -> DataverseAdapter:
        """Build the adapter from a ``<Deployment>`` of the configuration file."""
        if not dep.client_id or dep.client_secret is None:
            raise CrmAuthError(
                f"Deployment {dep.name!r}: <ClientId> and <ClientSecret> are required"
            )
        secret = dep.client_secret

        def read_secret() -> str:
            try:
                return secret.get_secret_value()
            except (KeyError, OSError) as exc:
                raise CrmAuthError(
                    f"Deployment {dep.name!r}: <ClientSecret> unreadable ({secret!r}: "
                    f"{type(exc).__name__})"
                ) from None

        authority = (dep.authority or default_authority(dep.tenant_id)).rstrip("/")
        options = options or DataverseOptions(
            batch_size=dep.batch_size, max_workers=dep.max_connections,
            attachments=dep.attachment_mode,
        )  # fmt: skip
        return cls(
            dep.crm_server_url,
            authority,
            dep.client_id,
            read_secret,
            api_version=dep.api_version,
            ca_bundle=dep.ca_bundle,
            options=options,
        )

    # -- incoming ----------------------------------------------------------------------------

    def check_incoming(self, activity: Activity, target: DeliveryTarget) -> bool:
        return bool(self._check(activity)["ShouldDeliver"])

    def _check(self, activity: Activity) -> dict[str, Any]:
        path = check_incoming_path(activity, self.options.shapes)
        if len(path) > MAX_URL:  # many recipients: a GET inside $batch has no URL limit
            (part,) = self._batch([Part("GET", path)], "CheckIncomingEmail in $batch")
            if part.status >= 300:
                raise part_error(part, "CheckIncomingEmail")
            return dict(part.body)
        answer: dict[str, Any] = self.api.call("GET", path, "CheckIncomingEmail").json()
        return answer

    def deliver(self, activity: Activity, target: DeliveryTarget) -> DeliveryResult:
        _require_message_id(activity)
        check = self._check(activity)
        code = int(check.get("ReasonCode", -1))
        if code == 0:
            existing = self._find_by_message_id(activity.message_id)
            if existing and self._separate(activity):
                self._complete_attachments(existing, activity.attachments)
            return DeliveryResult(existing, duplicate=True)
        if not check.get("ShouldDeliver"):
            raise CrmRejected(
                f"CheckIncomingEmail declined the message: ReasonCode {code} "
                f"({REASONS.get(code, 'unknown')})"
            )
        return DeliveryResult(self._deliver_now(activity, target))

    def screen(self, items: Sequence[tuple[Activity, DeliveryTarget]]) -> list[Verdict]:
        """The owners' tracking filters: CheckIncomingEmail in ``$batch``, only for owners whose
        filtering method is not "all messages" (:mod:`router.crm.dataverse_filters`)."""
        return self.filters.screen(items)

    def _deliver_now(self, activity: Activity, target: DeliveryTarget) -> str:
        inline = not self._separate(activity)
        params = deliver_params(activity, target, inline, self.options.shapes)
        answer = self.api.call(
            "POST", DELIVER, "DeliverIncomingEmail", json=params, idempotent=False
        )
        email_id = str(answer.json()["EmailId"])
        if self._separate(activity):
            self._complete_attachments(email_id, activity.attachments)
        return email_id

    def _separate(self, activity: Activity) -> bool:
        return self.options.attachments == "separate" and bool(activity.attachments)

    def _complete_attachments(self, email_id: str, attachments: tuple[Attachment, ...]) -> None:
        present = {a["filename"] for a in self._attachments_of(email_id, "filename")}
        for att in attachments:
            if (att.filename or "attachment") not in present:
                self.api.call(
                    "POST",
                    "activitymimeattachments",
                    "create attachment",
                    json=attachment_entity(att, email_id),
                    idempotent=False,
                )

    def _attachments_of(self, email_id: str, select: str) -> list[dict[str, Any]]:
        path = f"activitymimeattachments?$filter=_objectid_value eq {email_id}&$select={select}"
        value: list[dict[str, Any]] = self.api.call("GET", path, "read attachments").json()["value"]
        return value

    def _find_by_message_id(self, message_id: str) -> str | None:
        path = f"emails?$filter=messageid eq {odata_string(message_id)}&$select=activityid&$top=1"
        rows = self.api.call("GET", path, "find email by Message-ID").json().get("value", [])
        return str(rows[0]["activityid"]) if rows else None

    def deliver_many(
        self, items: Sequence[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | CrmError]:
        """Deliver through ``$batch``: a duplicate gets its existing id (``duplicate`` unknown).

        Without a CheckIncomingEmail per message (that would double the requests), a Message-ID
        Dataverse already holds is answered with the existing activity's id by the duplicate
        detection of DeliverIncomingEmail, so ``duplicate`` stays False in those results.

        When one batch fails for good the call raises and the caller retries every item; the
        items this adapter already delivered are then answered from memory (``duplicate``
        True) instead of being sent again.
        """
        results: list[DeliveryResult | CrmError | None] = [None] * len(items)
        batched, singles = [], []
        for i, (activity, _) in enumerate(items):
            known = self._recent.get(activity.message_id)
            if not activity.message_id:
                results[i] = CrmRejected("activity has no Message-ID")
            elif known is not None:
                results[i] = DeliveryResult(known, duplicate=True)
            elif self._separate(activity):
                singles.append(i)
            else:
                batched.append(i)
        size = self.options.batch_size
        chunks = [batched[k : k + size] for k in range(0, len(batched), size)]
        self._run_parallel(items, chunks, singles, results)
        if any(r is None for r in results):  # cannot happen: every job fills its items or raises
            raise CrmUnavailable("deliver_many: some activities got no result")
        return [r for r in results if r is not None]

    def _run_parallel(
        self,
        items: Sequence[tuple[Activity, DeliveryTarget]],
        chunks: list[list[int]],
        singles: list[int],
        results: list[DeliveryResult | CrmError | None],
    ) -> None:
        jobs = len(chunks) + len(singles)
        if not jobs:
            return
        futures: dict[Future[list[DeliveryResult | CrmError]], list[int]] = {}
        with ThreadPoolExecutor(min(self.options.max_workers, jobs), "dataverse") as pool:
            for chunk in chunks:
                futures[pool.submit(self._deliver_chunk, [items[i] for i in chunk])] = chunk
            for i in singles:
                futures[pool.submit(self._deliver_single, *items[i])] = [i]
        first_error: BaseException | None = None
        for future, indexes in futures.items():
            error = future.exception()
            if error is not None:
                first_error = first_error or error
                continue
            for index, result in zip(indexes, future.result(), strict=True):
                results[index] = result
                if isinstance(result, DeliveryResult) and result.activity_id:
                    self._recent.remember(items[index][0].message_id, result.activity_id)
        if first_error is not None:
            raise first_error

    def _deliver_single(
        self, activity: Activity, target: DeliveryTarget
    ) -> list[DeliveryResult | CrmError]:
        try:
            return [self.deliver(activity, target)]
        except CrmRejected as exc:
            return [exc]

    def _deliver_chunk(
        self, chunk: list[tuple[Activity, DeliveryTarget]]
    ) -> list[DeliveryResult | CrmError]:
        out: list[DeliveryResult | CrmError | None] = [None] * len(chunk)
        pending = list(range(len(chunk)))
        for attempt in range(1, self.options.retry.max_attempts + 1):
            parts = [
                Part("POST", DELIVER, deliver_params(*chunk[i], True, self.options.shapes))
                for i in pending
            ]
            try:
                answers = self._batch(parts, f"$batch of {len(parts)} DeliverIncomingEmail", False)
            except MaybeSent:
                # Some parts may have been created: go on one by one, each behind
                # CheckIncomingEmail, so nothing is created twice.
                for index in pending:
                    out[index] = self._deliver_single(*chunk[index])[0]
                return [r for r in out if r is not None]
            pending, wait = self._take_results(pending, answers, out)
            if not pending:
                return [r for r in out if r is not None]
            if attempt < self.options.retry.max_attempts:
                self._sleep(wait if wait is not None else self.options.retry.backoff(attempt))
        raise CrmUnavailable(f"{len(pending)} batch part(s) still failing", retry_after=wait)

    def _take_results(
        self,
        pending: list[int],
        answers: list[PartResult],
        out: list[DeliveryResult | CrmError | None],
    ) -> tuple[list[int], float | None]:
        """Store final part results in ``out``; return the indexes to retry and the wait."""
        retry: list[int] = []
        wait: float | None = None
        for n, index in enumerate(pending):
            part = answers[n] if n < len(answers) else None
            if part is not None and part.status < 300:
                out[index] = DeliveryResult(str(part.body["EmailId"]))
            elif part is None or part.status == 429 or part.status in RETRYABLE_STATUS:
                retry.append(index)
                asked = retry_after_seconds(part.headers.get("retry-after")) if part else None
                wait = max(wait or 0.0, asked) if asked is not None else wait
            elif part.status == 401:
                raise status_error(401, f"$batch part: {part.error_text()}")
            else:
                out[index] = CrmRejected(
                    f"DeliverIncomingEmail: HTTP {part.status} {part.error_text()}"
                )
        return retry, wait

    def _batch(self, parts: list[Part], what: str, idempotent: bool = True) -> list[PartResult]:
        content_type, body = build_batch(self.service_path, parts)
        headers = {"Content-Type": content_type, "Prefer": "odata.continue-on-error"}
        response = self.api.call(
            "POST", "$batch", what, data=body, headers=headers, idempotent=idempotent
        )
        try:
            return parse_batch(response.headers.get("Content-Type", ""), response.content)
        except (ValueError, IndexError) as exc:
            raise CrmUnavailable(f"{what}: unreadable batch answer ({exc})") from None

    # -- outgoing ----------------------------------------------------------------------------

    def list_pending(self, owners: Owners, limit: int) -> list[OutboundEmail]:
        query = {"@odata.type": f"{NS}FetchExpression", "Query": pending_fetchxml(owners, limit)}
        answer = self.api.call(
            "POST", "BackgroundSendEmail", "BackgroundSendEmail", json={"Query": query}
        ).json()
        entities, has_attachments = entities_of(answer)
        if not entities:
            return []
        details = self._details(entities, has_attachments)
        return [
            outbound_email(e, *details[e["activityid"]])
            for e in entities
            if e["activityid"] in details
        ]

    def _details(
        self, entities: list[dict[str, Any]], has_attachments: list[bool]
    ) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """Parties and attachments of each email, fetched in ``$batch`` GETs."""
        parts, owners = [], []
        for entity, has in zip(entities, has_attachments, strict=True):
            email_id = entity["activityid"]
            parts.append(
                Part(
                    "GET",
                    f"emails({email_id})/email_activity_parties"
                    "?$select=participationtypemask,addressused,_partyid_value",
                )
            )
            owners.append((email_id, "parties"))
            if has:
                parts.append(
                    Part(
                        "GET",
                        f"activitymimeattachments?$filter=_objectid_value eq {email_id}"
                        "&$select=filename,mimetype,body,attachmentcontentid",
                    )
                )
                owners.append((email_id, "attachments"))
        found: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for start in range(0, len(parts), 500):
            answers = self._batch(parts[start : start + 500], "read parties and attachments")
            for (email_id, kind), part in zip(owners[start : start + 500], answers, strict=False):
                self._keep_detail(found, email_id, kind, part)
        return found

    @staticmethod
    def _keep_detail(found: dict[str, Any], email_id: str, kind: str, part: PartResult) -> None:
        if part.status == 404:  # deleted or no longer pending: skip the email
            found.pop(email_id, None)
            return
        if part.status >= 300:
            raise part_error(part, f"read {kind}")
        parties, attachments = found.setdefault(email_id, ([], []))
        (parties if kind == "parties" else attachments).extend(part.body.get("value", []))

    def mark_sent(self, email_id: str, message_id: str, tracking_token: str | None = None) -> None:
        path = f"emails({_guid(email_id)})"
        try:
            if message_id:
                self.api.call(
                    "PATCH", path, "store Message-ID", json={"messageid": message_id[:320]}
                )
            self.api.call(
                "POST",
                f"{path}/{NS}SendEmail",
                "SendEmail",
                json={"IssueSend": False, "TrackingToken": tracking_token or ""},
            )
        except CrmRejected:
            if self._status(email_id) == SENT:
                return  # already marked: mark_sent is idempotent
            raise

    def mark_failed(self, email_id: str, reason: str) -> None:
        """Set Failed (8) and add a note with ``reason``; also for a Sent email that bounced."""
        if self._status(email_id) == FAILED:
            return
        path = f"emails({_guid(email_id)})"
        self.api.call("PATCH", path, "mark Failed", json={"statecode": 0, "statuscode": FAILED})
        if self.options.failure_note:
            note = {
                "subject": "Email router: sending failed",
                "notetext": reason[:2000],
                "objectid_email@odata.bind": f"/emails({email_id})",
            }
            self.api.call("POST", "annotations", "failure note", json=note)

    def record_attempt(self, email_id: str, attempts: int) -> None:
        self.api.call(
            "PATCH",
            f"emails({_guid(email_id)})",
            "record attempt",
            json={"deliveryattempts": int(attempts)},
        )

    def _status(self, email_id: str) -> int:
        path = f"emails({_guid(email_id)})?$select=statuscode"
        return int(self.api.call("GET", path, "read status").json()["statuscode"])

    # -- mailboxes defined in the CRM (router.crm.dataverse_mailboxes) ------------------------

    def list_mailboxes(self) -> list[MailboxRecord]:
        return dataverse_mailboxes.list_mailboxes(self.api)

    def record_mailbox_test(
        self, mailbox_id: str, incoming: bool, reason: str | None, reason_column: str | None
    ) -> None:
        dataverse_mailboxes.record_test(
            self.api, _guid(mailbox_id), incoming, reason, reason_column
        )

    # -- housekeeping ------------------------------------------------------------------------

    def check_credentials(self) -> str:
        """Get a token from the authority (client credentials): ``test-access``'s first step."""
        self.tokens.token()
        return f"ok from {self.tokens.authority} (client {self.tokens.client_id})"

    def who_am_i(self) -> str:
        return str(self.api.call("GET", "WhoAmI", "WhoAmI").json()["UserId"])

    def close(self) -> None:
        self.api.session.close()


class RecentDeliveries:
    """Message-ID -> activity id of the last deliveries of this process (bounded, thread-safe)."""

    def __init__(self, size: int = 20_000) -> None:
        self._items: OrderedDict[str, str] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, message_id: str) -> str | None:
        """The activity id recently created for ``message_id``, if remembered."""
        with self._lock:
            return self._items.get(message_id)

    def remember(self, message_id: str, activity_id: str) -> None:
        """Remember a created activity, forgetting the oldest beyond the size bound."""
        with self._lock:
            self._items[message_id] = activity_id
            self._items.move_to_end(message_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def part_error(part: PartResult, what: str) -> CrmError:
    """The router error for a failed ``$batch`` part (throttled/unavailable parts are retryable)."""
    message = f"{what}: HTTP {part.status} {part.error_text()}"
    if part.status == 429 or part.status in RETRYABLE_STATUS:
        return CrmUnavailable(
            message, retry_after=retry_after_seconds(part.headers.get("retry-after"))
        )
    return status_error(part.status, message)


def _require_message_id(activity: Activity) -> None:
    if not activity.message_id:
        raise CrmRejected("activity has no Message-ID")


def _guid(value: str) -> str:
    if not GUID.match(value or ""):
        raise CrmRejected(f"{value!r} is not a Dataverse record id")
    return value
