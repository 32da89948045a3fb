"""``$batch`` for the simulator: split a ``multipart/mixed`` request, run each part, join answers.

Use :func:`run_batch` from the Web API pipeline (after authentication and faults, which apply to
the batch as a whole, as in Dataverse). Each part must be ``Content-Type: application/http`` with
``Content-Transfer-Encoding: binary``; at most 1,000 parts. Processing stops at the first failed
part unless the request says ``Prefer: odata.continue-on-error``. Change sets (nested multipart)
are refused with a 400: the simulator does not implement their all-or-nothing semantics.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from flask import request

from router.crm.simulator.odata import CODE_SYNTAX, ODataError, bad_request
from router.crm.simulator.shared import Simulator
from router.crm.simulator.webapi import Answer, Call, route
from router.crm.simulator.wire import body_shape, logged_headers, parse_http_message, parse_json

MAX_PARTS = 1000
REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


class BatchRequest(Protocol):
    """The ``$batch`` request the parts belong to (the pipeline's ``WebApiRequest``).

    A protocol, because the pipeline calls :func:`run_batch`: each part runs as the same
    organisation and client, through the same handlers, as the batch itself.
    """

    sim: Simulator
    org: str
    client_id: str

    def call(self, method: str, rest: str, args: dict[str, str], body: Any) -> Call:
        """The handler call for one part (its method, path, query and JSON body)."""
        ...


def split_parts(content_type: str, raw: bytes) -> list[bytes]:
    """The raw parts of a ``multipart/mixed`` body (between the boundary lines)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise bad_request("multipart/mixed needs a boundary.", CODE_SYNTAX)
    delimiter = b"--" + match.group(1).encode()
    text = raw.replace(b"\r\n", b"\n")
    if delimiter + b"--" not in text:
        raise bad_request("The batch body has no closing boundary.", CODE_SYNTAX)
    body = text.split(delimiter + b"--")[0]
    return [p.strip(b"\n") for p in body.split(delimiter)[1:]]


def run_batch(req: BatchRequest, parent_id: int) -> Answer:
    """Execute the parts of the current ``$batch`` request and build the multipart answer."""
    parts = split_parts(request.headers.get("Content-Type", ""), request.get_data())
    if len(parts) > MAX_PARTS:
        raise bad_request(f"A batch may hold at most {MAX_PARTS} requests.")
    keep_going = "odata.continue-on-error" in request.headers.get("Prefer", "")
    boundary = f"batchresponse_{uuid.uuid4()}"
    out: list[str] = []
    for index, part in enumerate(parts):
        answer = _run_part(req, parent_id, index, part)
        out.append(_encode_part(boundary, answer))
        if answer.status >= 400 and not keep_going:
            break
    body = "".join(out) + f"--{boundary}--\r\n"
    return Answer(200, body, {"Content-Type": f"multipart/mixed; boundary={boundary}",
                              "OData-Version": "4.0"})  # fmt: skip


def _run_part(req: BatchRequest, parent_id: int, index: int, part: bytes) -> Answer:
    t_start = time.time()
    log: dict[str, Any] = {"org": req.org, "t_start": t_start, "parent": parent_id,
                           "client_id": req.client_id}  # fmt: skip
    try:
        answer = _execute(req, part, log)
    except ODataError as exc:
        answer = Answer(exc.status, exc.body())
    log.update(status=answer.status, t_end=time.time(), part=index)
    req.sim.store.log_request(log)
    return answer


def _execute(req: BatchRequest, part: bytes, log: dict[str, Any]) -> Answer:
    outer_headers, _, inner = part.replace(b"\r\n", b"\n").partition(b"\n\n")
    outer = outer_headers.decode().lower()
    if "multipart/mixed" in outer:
        raise bad_request("Change sets are not supported by the simulator.", CODE_SYNTAX)
    if "application/http" not in outer or "content-transfer-encoding: binary" not in outer:
        raise bad_request("A batch part needs Content-Type: application/http and "
                          "Content-Transfer-Encoding: binary.", CODE_SYNTAX)  # fmt: skip
    start, headers, body = parse_http_message(inner)
    method, target = start.split(" ")[0], start.split(" ")[1]
    url = urlsplit(target)
    parsed = parse_json(body)
    shape = None if parsed is None else body_shape(parsed)
    log.update(method=method, path=unquote(url.path), query=url.query,
               headers=logged_headers(headers), body=shape)  # fmt: skip
    if body and not headers.get("Content-Type", "").startswith("application/json"):
        raise bad_request("A part with a body needs Content-Type: application/json.", CODE_SYNTAX)
    rest = _service_relative(unquote(url.path), req.org)
    return route(req.sim.store, req.call(method, rest, dict(parse_qsl(url.query)), parsed))


def _service_relative(path: str, org: str) -> str:
    prefix = "" if org == "default" else f"/org/{org}"
    match = re.match(rf"^(?:{re.escape(prefix)})?/api/data/v[\d.]+/(.*)$", path)
    if match:
        return match.group(1)
    if path.startswith("/"):
        raise ODataError(404, CODE_SYNTAX, f"The part's URL {path} is not in this organization.")
    return path


def _encode_part(boundary: str, answer: Answer) -> str:
    lines = [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary",
             "", f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Status')}"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in answer.headers.items()]
    if answer.body is not None:
        lines += [
            "Content-Type: application/json; odata.metadata=minimal",
            "",
            json.dumps(answer.body),
        ]
    else:
        lines += [""]
    return "\r\n".join(lines) + "\r\n"
