"""OData ``$batch`` bodies for the Dataverse adapter: build the request, split the answer.

Use :func:`build_batch` with a list of :class:`Part` (method, service-relative path, JSON body)
to get the ``Content-Type`` and the body of ``POST $batch``, and :func:`parse_batch` to get one
:class:`PartResult` per answered part, in order. Parts are independent requests (no change
sets), sent with ``Prefer: odata.continue-on-error`` so that one failed part does not stop the
others; Dataverse accepts at most 1,000 parts per batch.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_PARTS = 1000


@dataclass(frozen=True)
class Part:
    """One request inside a batch: ``path`` is relative to the service root (``emails(...)``)."""

    method: str
    path: str
    body: Any = None


@dataclass(frozen=True)
class PartResult:
    """The answer to one part: HTTP status, headers (lower-case names) and JSON body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    def error_text(self) -> str:
        """The first line of the part's OData error (code: message), at most 300 characters."""
        err = self.body.get("error", {}) if isinstance(self.body, dict) else {}
        text = f"{err.get('code', '?')}: {err.get('message', '')}" if err else f"HTTP {self.status}"
        return text.strip().splitlines()[0][:300]


def build_batch(service_path: str, parts: list[Part]) -> tuple[str, bytes]:
    """``(content_type, body)`` of a batch; ``service_path`` is e.g. ``/api/data/v9.2/``."""
    if not 0 < len(parts) <= MAX_PARTS:
        raise ValueError(f"a batch holds 1..{MAX_PARTS} requests, not {len(parts)}")
    boundary = f"batch_{uuid.uuid4()}"
    chunks = [_encode(boundary, service_path, part) for part in parts]
    body = "".join(chunks) + f"--{boundary}--\r\n"
    return f"multipart/mixed; boundary={boundary}", body.encode("utf-8")


def _encode(boundary: str, service_path: str, part: Part) -> str:
    lines = [
        f"--{boundary}",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        # The request line is split on spaces: a query like "$filter=a eq 1" must be encoded.
        f"{part.method} {service_path}{part.path.replace(' ', '%20')} HTTP/1.1",
        "Accept: application/json",
    ]
    if part.body is not None:
        lines += ["Content-Type: application/json; type=entry", "", json.dumps(part.body)]
    else:
        lines += [""]
    return "\r\n".join(lines) + "\r\n"


def parse_batch(content_type: str, body: bytes) -> list[PartResult]:
    """Split a ``multipart/mixed`` batch answer into per-part results, in order."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("batch answer without a multipart boundary")
    delimiter = b"--" + match.group(1).encode()
    text = body.replace(b"\r\n", b"\n").split(delimiter + b"--")[0]
    return [_decode(chunk) for chunk in text.split(delimiter)[1:] if chunk.strip()]


def _decode(chunk: bytes) -> PartResult:
    _, _, http = chunk.strip(b"\n").partition(b"\n\n")  # skip the part's own MIME headers
    head, _, payload = http.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    payload = payload.strip()
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = None
    return PartResult(status, headers, parsed)
