"""The Graph mail routes of the simulator, shared by plain requests and ``$batch`` parts.

Use :class:`GraphApi`: :meth:`GraphApi.call` runs one request (path relative to ``/v1.0``)
through the pipeline every Graph request takes here - bearer token check, request log entry,
per-mailbox concurrency gate, latency, injected 429/503 - and then its handler. Latency has two
parts: ``latency_ms`` per HTTP round trip (a ``$batch`` is one) and ``op_latency_ms`` per
Graph operation (a plain request, or each part of a ``$batch``: Graph's own work on it). ``$batch``
(at most 20 parts) runs its parts through the same :meth:`GraphApi.call`, four at a time, as
Graph does against one mailbox; a part answered 429 carries its own ``Retry-After``; a part
whose body is not JSON (a message's ``$value``) comes back base64-encoded. Messages over 4 MB
take Graph's draft path: ``POST messages`` (MIME) makes a draft in Drafts, files are attached
by ``POST .../attachments`` (under 3 MB) or an upload session (:mod:`uploads`), and ``POST
.../send`` sends the draft with its files and keeps it in Sent Items.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from router.graph.simulator.faults import Traffic
from router.graph.simulator.identity import Identity
from router.graph.simulator.mailstore import SIZE_PROPERTY, MailStore, NotFound, SyncStateGone
from router.graph.simulator.uploads import MAX_SESSION_FILE, MIN_SESSION_FILE, Uploads

MAX_BATCH = 20
MAX_SEND_BYTES = 4 * 1024 * 1024
DEFAULT_PAGE = 10


@dataclass
class Call:
    """One Graph request: method, path below ``/v1.0``, query, headers, body."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    json: Any = None
    base: str = ""  # https://host:port (for nextLink / deltaLink)
    batch: bool = False


@dataclass
class Answer:
    """A response: status, headers and a JSON value, bytes or nothing."""

    status: int
    json: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str, retry_after: float | None = None) -> Answer:
    answer = Answer(status, {"error": {"code": code, "message": message}})
    if retry_after is not None:
        answer.headers["Retry-After"] = str(int(retry_after) if retry_after >= 1 else retry_after)
    return answer


Handler = Callable[[Call, str, re.Match[str]], Answer]


class GraphApi:
    """The Graph routes over one :class:`MailStore`, :class:`Traffic` and :class:`Identity`."""

    def __init__(self, store: MailStore, traffic: Traffic, identity: Identity) -> None:
        self.store, self.traffic, self.identity = store, traffic, identity
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"users/([^/]+)"), self._user),
            ("GET", re.compile(r"users/([^/]+)/mailFolders"), self._folders),
            ("GET", re.compile(r"users/([^/]+)/mailFolders/([^/]+)"), self._folder),
            ("GET", re.compile(r"users/([^/]+)/mailFolders/([^/]+)/messages/delta"), self._delta),
            ("GET", re.compile(r"users/([^/]+)/messages/([^/]+)/\$value"), self._mime),
            ("GET", re.compile(r"users/([^/]+)/messages/([^/]+)"), self._message),
            ("PATCH", re.compile(r"users/([^/]+)/messages/([^/]+)"), self._patch),
            ("DELETE", re.compile(r"users/([^/]+)/messages/([^/]+)"), self._delete),
            ("POST", re.compile(r"users/([^/]+)/messages/([^/]+)/move"), self._move),
            ("POST", re.compile(r"users/([^/]+)/sendMail"), self._send),
            ("POST", re.compile(r"users/([^/]+)/messages"), self._create_draft),
            ("POST", re.compile(r"users/([^/]+)/messages/([^/]+)/attachments"), self._attach),
            (
                "POST",
                re.compile(r"users/([^/]+)/messages/([^/]+)/attachments/createUploadSession"),
                self._upload_session,
            ),
            ("POST", re.compile(r"users/([^/]+)/messages/([^/]+)/send"), self._send_draft),
        ]
        self.uploads = Uploads(store.attach)

    # -- the pipeline --------------------------------------------------------------------------

    def call(self, call: Call) -> Answer:
        """Authenticate, log, gate, delay, maybe fault, then handle ``call``."""
        client = self.identity.client_of(call.headers.get("authorization", ""))
        if not call.batch:
            _sleep_ms(self.traffic.faults.latency_ms)  # the round trip (one for a whole batch)
        if call.path.strip("/") == "$batch" and not call.batch:
            return self._batch(call) if client else _unauthorized()
        mailbox = _mailbox_of(call.path)
        request_id = call.headers.get("client-request-id", "")
        entry = self.traffic.begin(
            call.method, call.path, mailbox, client or "-", request_id, call.batch
        )
        answer = error(500, "InternalServerError", "handler failed")
        try:
            answer = self._gated(call, entry.in_flight, mailbox) if client else _unauthorized()
            return answer
        finally:
            retry = answer.headers.get("Retry-After")
            self.traffic.end(entry, answer.status, float(retry) if retry else None)

    def _gated(self, call: Call, in_flight: int, mailbox: str) -> Answer:
        faults = self.traffic.faults
        _sleep_ms(faults.op_latency_ms)
        verdict = self.traffic.verdict_for(in_flight, mailbox)
        if verdict is not None:
            status, code, message = verdict
            return error(status, code, message, retry_after=faults.retry_after)
        return self._route(call)

    def _route(self, call: Call) -> Answer:
        path = call.path.strip("/")
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if method == call.method:
                try:
                    return handler(call, unquote(match.group(1)).lower(), match)
                except NotFound as exc:
                    return error(404, "ErrorItemNotFound", f"The {exc.args[0]} was not found.")
        if allowed:
            return error(405, "ErrorInvalidRequest", f"{call.method} is not allowed here.")
        return error(400, "BadRequest", f"Resource not found for the segment '{path}'.")

    # -- users and folders ---------------------------------------------------------------------

    def _user(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        self.store.mailbox(mailbox)
        return Answer(200, {"id": f"user-{mailbox}", "mail": mailbox,
                            "userPrincipalName": mailbox, "displayName": mailbox})  # fmt: skip

    def _folders(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        wanted = None
        found = re.fullmatch(r"displayName eq '(.*)'", call.query.get("$filter", "").strip())
        if found:
            wanted = found.group(1).replace("''", "'")
        return Answer(200, {"value": self.store.folders(mailbox, wanted)})

    def _folder(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        folder = self.store.folder(mailbox, unquote(match.group(2)))
        return Answer(200, folder.json(len(self.store.listing(mailbox, folder.id))))

    # -- delta ---------------------------------------------------------------------------------

    def _delta(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        folder = unquote(match.group(2))
        try:
            if "$skiptoken" in call.query:
                skip = call.query["$skiptoken"]
            elif "$deltatoken" in call.query:
                skip = self.store.resume_delta(mailbox, call.query["$deltatoken"])
            else:
                select = [s for s in call.query.get("$select", "").split(",") if s]
                if SIZE_PROPERTY.lower() in call.query.get("$expand", "").lower():
                    select.append(SIZE_PROPERTY)
                skip = self.store.start_round(mailbox, folder, select or None)
            rows, following = self.store.page(mailbox, skip, _page_size(call.headers))
        except SyncStateGone:
            return error(410, "SyncStateNotFound", "The sync state is not found or expired.")
        kind, token = following.split(":", 1)
        link = f"{call.base}/v1.0/users/{mailbox}/mailFolders/{folder}/messages/delta"
        body: dict[str, Any] = {"value": rows}
        if kind == "skip":
            body["@odata.nextLink"] = f"{link}?$skiptoken={token}"
        else:
            body["@odata.deltaLink"] = f"{link}?$deltatoken={token}"
        return Answer(200, body)

    # -- messages ------------------------------------------------------------------------------

    def _mime(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        message = self.store.message(mailbox, match.group(2))
        return Answer(200, raw=message.mime, headers={"Content-Type": "message/rfc822"})

    def _message(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        return Answer(200, self.store.message(mailbox, match.group(2)).row(None))

    def _patch(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        body = call.json if isinstance(call.json, dict) else {}
        if set(body) != {"isRead"} or not isinstance(body["isRead"], bool):
            return error(400, "ErrorInvalidProperty", "Only isRead can be changed here.")
        message = self.store.mark_read(mailbox, match.group(2), body["isRead"])
        return Answer(200, message.row(None))

    def _delete(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        self.store.delete(mailbox, match.group(2))
        return Answer(204)

    def _move(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        body = call.json if isinstance(call.json, dict) else {}
        destination = body.get("destinationId")
        if not isinstance(destination, str) or not destination:
            return error(400, "ErrorInvalidIdMalformed", "destinationId is required.")
        moved = self.store.move(mailbox, match.group(2), destination)
        return Answer(201, moved.row(None))

    # -- sending -------------------------------------------------------------------------------

    def _send(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        mime = _mime_of(call)
        if isinstance(mime, Answer):
            return mime
        problem = self._send_problem(mailbox, mime)
        if problem is not None:
            return problem
        save = call.query.get("saveToSentItems", "true").lower() != "false"
        self.store.record_sent(mailbox, mime, save)
        return Answer(202)

    def _send_problem(self, mailbox: str, mime: bytes) -> Answer | None:
        head = mime.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
        fields = _header_fields(head)
        recipients = getaddresses([fields.get(n, "") for n in ("to", "cc", "bcc")])
        if not [a for _, a in recipients if a]:
            return error(400, "ErrorInvalidRecipients", "At least one recipient is required.")
        senders = [a.lower() for _, a in getaddresses([fields.get("from", "")]) if a]
        if self.traffic.faults.enforce_send_as and senders and senders[0] != mailbox:
            return error(403, "ErrorSendAsDenied", "The user account which was used to "
                         "submit this request does not have the right to send mail on behalf "
                         "of the specified sending account.")  # fmt: skip
        return None

    # -- drafts: the path for messages over 4 MB ------------------------------------------------

    def _create_draft(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        mime = _mime_of(call)
        if isinstance(mime, Answer):
            return mime
        draft = self.store.add(mailbox, "drafts", mime, is_read=True)
        return Answer(201, self.store.message(mailbox, draft).row(None))

    def _attach(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        body = call.json if isinstance(call.json, dict) else {}
        self.store.message(mailbox, match.group(2))  # 404 for an unknown draft
        if body.get("@odata.type") != "#microsoft.graph.fileAttachment":
            return error(400, "ErrorInvalidRequest", "Only file attachments are supported.")
        try:
            data = base64.b64decode(str(body.get("contentBytes", "")), validate=True)
        except (binascii.Error, ValueError):
            return error(400, "ErrorInvalidRequest", "contentBytes is not base64.")
        if len(data) >= MIN_SESSION_FILE:
            return error(413, "ErrorRequestEntityTooLarge", "Use an upload session from 3 MB.")
        name, kind = str(body.get("name") or "attachment"), _content_type(body)
        self.store.attach(mailbox, match.group(2), name, kind, data)
        return Answer(201, {"name": name, "contentType": kind, "size": len(data)})

    def _upload_session(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        body = call.json if isinstance(call.json, dict) else {}
        found = body.get("AttachmentItem")
        item: dict[str, Any] = found if isinstance(found, dict) else {}
        draft = self.store.message(mailbox, match.group(2)).id
        size = item["size"] if isinstance(item.get("size"), int) else -1
        if item.get("attachmentType") != "file" or not item.get("name"):
            return error(400, "ErrorInvalidRequest", "AttachmentItem needs attachmentType file "
                         "and a name.")  # fmt: skip
        if not MIN_SESSION_FILE <= size <= MAX_SESSION_FILE:
            return error(400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                         "An upload session takes a file of 3 MB to 150 MB.")  # fmt: skip
        sid, token = self.uploads.open(mailbox, draft, str(item["name"]), _content_type(item), size)
        return Answer(201, {"uploadUrl": f"{call.base}/upload/{sid}?authtoken={token}",
                            "nextExpectedRanges": ["0-"]})  # fmt: skip

    def _send_draft(self, call: Call, mailbox: str, match: re.Match[str]) -> Answer:
        draft = self.store.message(mailbox, match.group(2))
        if draft.folder_id != self.store.folder(mailbox, "drafts").id:
            return error(400, "ErrorInvalidRequest", "Only a draft can be sent.")
        mime = self.store.draft_mime(mailbox, draft.id)
        problem = self._send_problem(mailbox, mime)
        if problem is not None:
            return problem
        self.store.forget(mailbox, draft.id)
        self.store.record_sent(mailbox, mime, True)  # a sent draft always lands in Sent Items
        return Answer(202)

    # -- $batch --------------------------------------------------------------------------------

    def _batch(self, call: Call) -> Answer:
        body = call.json if isinstance(call.json, dict) else {}
        parts = body.get("requests")
        if not isinstance(parts, list) or not parts:
            return error(400, "BadRequest", "The batch has no requests.")
        if len(parts) > MAX_BATCH:
            return error(400, "BadRequest", f"A batch takes at most {MAX_BATCH} requests.")
        # Graph runs at most four parts against one mailbox at a time.
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda p: self._part(call, p), parts))
        return Answer(200, {"responses": answers})

    def _part(self, outer: Call, part: Any) -> dict[str, Any]:
        if not isinstance(part, dict) or "id" not in part or "url" not in part:
            return {
                "id": str(part.get("id", "")) if isinstance(part, dict) else "",
                "status": 400,
                "body": error(400, "BadRequest", "id and url needed").json,
            }
        url = urlsplit(str(part["url"]))
        headers = {k.lower(): str(v) for k, v in (part.get("headers") or {}).items()}
        headers["authorization"] = outer.headers.get("authorization", "")
        if not headers.get("client-request-id") and outer.headers.get("client-request-id"):
            headers["client-request-id"] = f"{outer.headers['client-request-id']}/{part['id']}"
        path = unquote(url.path).removeprefix("/v1.0")
        inner = Call(str(part.get("method", "GET")).upper(), path, _query(url.query), headers,
                     json=part.get("body"), base=outer.base, batch=True)  # fmt: skip
        answer = self.call(inner)
        out: dict[str, Any] = {"id": str(part["id"]), "status": answer.status,
                               "headers": dict(answer.headers)}  # fmt: skip
        if answer.raw is not None:
            out["body"] = base64.b64encode(answer.raw).decode("ascii")
        elif answer.json is not None:
            out["body"] = answer.json
        return out


def _mime_of(call: Call) -> bytes | Answer:
    """The MIME of a sendMail or draft request (text/plain base64, at most 4 MB), or the error."""
    if not call.headers.get("content-type", "").startswith("text/plain"):
        return error(400, "ErrorInvalidRequest", "MIME must be sent as text/plain base64.")
    if len(call.body) > MAX_SEND_BYTES:
        return error(413, "ErrorMessageSizeExceeded", "The message exceeds 4 MB.")
    try:
        return base64.b64decode(call.body, validate=False)
    except (binascii.Error, ValueError):
        return error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string.")


def _content_type(item: dict[str, Any]) -> str:
    kind = str(item.get("contentType") or "")
    return kind if re.fullmatch(r"[\w.+-]+/[\w.+-]+", kind) else "application/octet-stream"


def _sleep_ms(delay: float) -> None:
    if delay > 0:
        time.sleep(delay / 1000.0)


def _unauthorized() -> Answer:
    return error(401, "InvalidAuthenticationToken", "Access token is empty or expired.")


def _mailbox_of(path: str) -> str:
    match = re.match(r"/?users/([^/]+)", path)
    return unquote(match.group(1)).lower() if match else ""


def _page_size(headers: dict[str, str]) -> int:
    found = re.search(r"odata\.maxpagesize=(\d+)", headers.get("prefer", ""))
    return max(1, min(int(found.group(1)), 1000)) if found else DEFAULT_PAGE


def _query(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _header_fields(head: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = ""
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields
