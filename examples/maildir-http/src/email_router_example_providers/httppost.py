"""An outgoing provider POSTing each email to an HTTP endpoint (``<ProviderClass>http-post``).

Features: one ``POST <url>`` per email, body = the MIME message (``message/rfc822``), envelope in
``X-Mail-From`` and ``X-Rcpt-To`` (comma-separated). A 2xx answer may name refused recipients as
JSON ``{"refused": {"address": [451, "text"]}}``; 4xx recipients are retried alone later. HTTP
429 and 5xx: try again later; any other 4xx: the email is refused (marked Failed).

Options (``<Parameters>``): ``url`` (required), ``timeout`` in seconds (default 30).

At-most-once: the provider has a commit point (``commit_point = True``) and calls
:meth:`commit` right before sending the request, the step that cannot be taken back.
"""

from __future__ import annotations

from typing import Any

import requests
from pydantic import BaseModel, ConfigDict

from router.errors import MessageRejected, ProviderUnavailable
from router.models import OutboundEmail
from router.providers.base import OutgoingProvider, SubmitResult


class HttpPostOptions(BaseModel):
    """``url``: the endpoint; ``timeout``: seconds to wait for its answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str
    timeout: float = 30.0


class HttpPostProvider(OutgoingProvider):
    """Sends through an HTTP API; use it for a mail service reached over HTTP."""

    alias = "http-post"
    options_model = HttpPostOptions
    commit_point = True

    def _connect(self) -> None:
        self.session = requests.Session()

    def _close(self) -> None:
        self.session.close()

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        rcpts = [a.email for a in (*email.to, *email.cc, *email.bcc)]
        headers = {
            "Content-Type": "message/rfc822",
            "X-Mail-From": envelope_from,
            "X-Rcpt-To": ",".join(rcpts),
        }
        self.commit(SubmitResult(tuple(rcpts), {}))  # the point of no return is the request
        response = self.session.post(
            self.options.url, data=message, headers=headers, timeout=self.options.timeout
        )
        return self._result(response, rcpts)

    def _result(self, response: requests.Response, rcpts: list[str]) -> SubmitResult:
        status = response.status_code
        if status == 429 or status >= 500:
            raise ProviderUnavailable(f"{self.name}: the endpoint answered HTTP {status}")
        if status >= 400:
            raise MessageRejected(f"{self.name}: the endpoint refused the email: HTTP {status}")
        refused = _refused(response)
        return SubmitResult(tuple(r for r in rcpts if r not in refused), refused)


def _refused(response: requests.Response) -> dict[str, tuple[int, str]]:
    try:
        body: Any = response.json()
    except ValueError:
        return {}
    refused = body.get("refused", {}) if isinstance(body, dict) else {}
    return {str(r): (int(code), str(text)) for r, (code, text) in refused.items()}
