"""How the simulator's requests and answers look on the wire: JSON answers, the request log's
view of a request (header names and body shape, never a token or a value), ``application/http``.

Use these from the app, the Web API pipeline, ``$batch`` and the admin pages alike.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from flask import Response

from router.crm.simulator.odata import bad_request
from router.crm.simulator.webapi import Answer

LOGGED_HEADERS = (
    "Accept", "OData-MaxVersion", "OData-Version", "If-None-Match", "Content-Type", "Prefer",
    "MSCRMCallerID", "Content-Transfer-Encoding",
)  # fmt: skip
JSON_TYPE = "application/json; odata.metadata=minimal"


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A plain JSON answer (identity endpoints and admin pages; the Web API answers OData)."""
    return Response(json.dumps(body), status, headers, content_type="application/json")


def body_shape(value: Any) -> Any:
    """The names and JSON types of a body (never its values): what the request log keeps."""
    if isinstance(value, dict):
        return {k: body_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [body_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "string"


def logged_headers(headers: Any) -> dict[str, str]:
    """The headers the request log keeps: :data:`LOGGED_HEADERS`, and whether a Bearer came."""
    out = {name: headers[name] for name in LOGGED_HEADERS if name in headers}
    auth = headers.get("Authorization")
    if auth is not None:
        out["Authorization"] = "Bearer <token>" if auth.startswith("Bearer ") else "<other>"
    return out


def parse_json(raw: bytes) -> Any:
    """The JSON body of a request or ``$batch`` part (None when empty); a 400 when invalid."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("The request body is not valid JSON.") from None


def odata_response(answer: Answer) -> Response:
    """The Flask response of a Web API :class:`Answer` (OData JSON, or an empty 204)."""
    headers = {"OData-Version": "4.0", **answer.headers}
    if answer.body is None:
        return Response(b"", answer.status, headers)
    return Response(json.dumps(answer.body), answer.status, headers, content_type=JSON_TYPE)


def parse_http_message(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Split an ``application/http`` part into its start line, headers and body."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode("utf-8").split("\n")
    message = BytesParser(policy=HTTP).parsebytes("\n".join(lines[1:]).encode() + b"\n\n")
    return lines[0].strip(), {k: str(v) for k, v in message.items()}, body.strip(b"\n")
