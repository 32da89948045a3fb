"""The simulator's Web API pipeline: one request from the concurrency gate to the log line.

Use :class:`WebApiRequest` for every ``/api/data/v9.x/`` request (``app.py`` routes them here).
The steps are Dataverse's: the concurrency gate (429 above ``max_concurrent`` in flight), added
latency, the Bearer token (issued here, not expired, for this organisation), injected 429/503,
the OData headers, then the handler in ``webapi.py`` - or ``batch.py`` for ``$batch``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from flask import Response, request

from router.crm.simulator.batch import run_batch
from router.crm.simulator.odata import (
    CODE_AUTH,
    CODE_SYNTAX,
    CODE_THROTTLED,
    CODE_UNAVAILABLE,
    ODataError,
    bad_request,
)
from router.crm.simulator.shared import Simulator
from router.crm.simulator.webapi import Answer, Call, route
from router.crm.simulator.wire import body_shape, logged_headers, odata_response, parse_json

API_VERSIONS = ("9.0", "9.1", "9.2")


class WebApiRequest:
    """One HTTP request to the Web API, from the concurrency gate to the log line."""

    def __init__(self, sim: Simulator, org: str, version: str, rest: str) -> None:
        self.sim, self.org, self.version, self.rest = sim, org, version, rest
        self.fault: str | None = None
        self.client_id = ""
        self.base_url = request.host_url + ("" if org == "default" else f"org/{org}/")
        self.base_url += f"api/data/v{version}/"

    def run(self) -> Response:
        """Answer the request and write its line (status, fault, client) to the request log."""
        t_start = time.time()
        log_id = self.sim.store.log_request(self._log_entry(t_start))
        answer = self._answer(log_id)
        retry_after = answer.headers.get("Retry-After")
        self.sim.store.execute(
            "UPDATE requests SET status=?, t_end=?, retry_after=?, fault=?, client_id=? WHERE id=?",
            (answer.status, time.time(), retry_after, self.fault, self.client_id, log_id),
        )
        if isinstance(answer.body, str):  # a $batch answer, already encoded
            return Response(answer.body, answer.status, answer.headers)
        return odata_response(answer)

    def _log_entry(self, t_start: float) -> dict[str, Any]:
        raw = request.get_data()
        shape: Any = (
            {"multipart": raw.count(b"application/http")}
            if self.rest == "$batch"
            else (body_shape(parse_json(raw)) if raw else None)
        )
        digest = hashlib.sha256(request.full_path.encode() + b"\n" + raw).hexdigest()[:20]
        return {
            "org": self.org, "t_start": t_start, "method": request.method, "path": request.path,
            "query": request.query_string.decode("utf-8", "replace"),
            "headers": logged_headers(request.headers), "body": shape, "fingerprint": digest,
        }  # fmt: skip

    def _answer(self, log_id: int) -> Answer:
        limit = self.sim.faults.faults.max_concurrent
        if not self.sim.gate.enter(limit):
            self.fault = "concurrency"
            retry = self.sim.faults.throttle_retry_after()
            return _error(
                429,
                CODE_THROTTLED,
                f"Number of concurrent requests exceeded the limit of {limit}.",
                retry,
            )
        try:
            return self._guarded(log_id)
        except ODataError as exc:
            return Answer(exc.status, exc.body())
        finally:
            self.sim.gate.leave()

    def _guarded(self, log_id: int) -> Answer:
        decision = self.sim.faults.decide()
        if decision.delay:
            time.sleep(decision.delay)
        self._authenticate()
        if decision.status == 429:
            self.fault = "429"
            return _error(429, CODE_THROTTLED, "Number of requests exceeded the limit of 6000 over "
                          "time window of 300 seconds.", decision.retry_after)  # fmt: skip
        if decision.status == 503:
            self.fault = "503"
            return _error(503, CODE_UNAVAILABLE, "The service is temporarily unavailable.")
        if self.version not in API_VERSIONS:
            raise ODataError(404, CODE_SYNTAX, f"API version v{self.version} is not supported.")
        _check_headers(request.headers, request.method, self.rest == "$batch")
        if self.rest == "$batch":
            return run_batch(self, log_id)
        return route(self.sim.store, self.call(request.method, self.rest, dict(request.args),
                                               parse_json(request.get_data())))  # fmt: skip

    def call(self, method: str, rest: str, args: dict[str, str], body: Any) -> Call:
        """The handler call for this request, or for one of its ``$batch`` parts."""
        f = self.sim.faults.faults
        return Call(self.org, method, rest, args, body, self.base_url, self.client_id,
                    request.headers.get("Prefer", ""), f.reject_message_ids)  # fmt: skip

    def _authenticate(self) -> None:
        auth = request.headers.get("Authorization", "")
        issued = self.sim.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        expected = "" if self.org == "default" else f"/org/{self.org}"
        refused = self.sim.faults.faults.reject_tokens
        if (
            refused
            or issued is None
            or issued.expires_at < time.time()
            or issued.audience_path != expected
        ):
            self.fault = self.fault or "unauthorized"
            raise _Unauthorized()
        self.client_id = issued.client_id


class _Unauthorized(ODataError):
    def __init__(self) -> None:
        super().__init__(
            401, CODE_AUTH, "The access token is missing, expired or not for this organization."
        )


def _error(status: int, code: str, message: str, retry_after: float | None = None) -> Answer:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
    return Answer(status, ODataError(status, code, message).body(), headers)


def _check_headers(headers: Any, method: str, batch: bool) -> None:
    """The headers Dataverse expects from a Web API client (see the module docstring)."""
    required = {"OData-MaxVersion": "4.0", "OData-Version": "4.0"}
    for name, value in required.items():
        if headers.get(name) != value:
            raise bad_request(f"The header '{name}: {value}' is required.", CODE_SYNTAX)
    if "application/json" not in headers.get("Accept", ""):
        raise bad_request("The header 'Accept: application/json' is required.", CODE_SYNTAX)
    if headers.get("If-None-Match", "null") != "null":
        raise bad_request("If-None-Match must be 'null' (no cached representation).", CODE_SYNTAX)
    if method in ("POST", "PATCH", "PUT"):
        content_type = headers.get("Content-Type", "")
        want = "multipart/mixed" if batch else "application/json"
        if not content_type.startswith(want) and (batch or request.content_length):
            raise bad_request(f"Content-Type must be {want}.", CODE_SYNTAX)
