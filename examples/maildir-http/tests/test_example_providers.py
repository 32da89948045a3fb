"""The example providers pass the email-router provider kit (``router.testing``).

Run from anywhere once the package is installed: ``pytest examples/maildir-http/tests``. The
Maildir is a temporary directory; the HTTP endpoint a small server in a thread of this process
that keeps what it was sent (the kit's kill tests send from child processes, which is why the
endpoint must live outside them).
"""

from __future__ import annotations

import json
import mailbox
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from router.config import Parameter, Parameters, ProviderConfiguration
from router.models import Direction
from router.testing import (
    IncomingProviderContract,
    MailboxBackend,
    OutgoingProviderContract,
    SentMailBackend,
)


def parameters(**values: str) -> Parameters:
    return Parameters(items=tuple(Parameter(name=k, value=v) for k, v in values.items()))


class TempMaildir:
    """A fresh Maildir read by a ``maildir`` instance."""

    def __init__(self, path: Path) -> None:
        self.path, self.box = path, mailbox.Maildir(path, create=True)

    def config(self, **overrides: Any) -> ProviderConfiguration:
        fields: dict[str, Any] = {
            "name": "maildir-example",
            "provider_class": "maildir",  # found through the entry point
            "direction": Direction.INCOMING,
            "email_address": "inbox@example.com",
            "parameters": parameters(path=str(self.path)),
        }
        return ProviderConfiguration(**{**fields, **overrides})

    def put(self, raws: Sequence[bytes]) -> None:
        for raw in raws:
            self.box.add(raw)

    def count(self) -> int:
        return len(mailbox.Maildir(self.path, create=False).keys())


class Endpoint(BaseHTTPRequestHandler):
    """Keeps each POST (recipients, body); refuses a recipient once if told to."""

    received: list[tuple[tuple[str, ...], bytes]]
    refuse: set[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        rcpts = [r for r in self.headers["X-Rcpt-To"].split(",") if r]
        refused = {r: [451, "try later"] for r in rcpts if r.lower() in self.refuse}
        self.refuse.difference_update(r.lower() for r in refused)
        self.received.append((tuple(r for r in rcpts if r not in refused), body))
        answer = json.dumps({"refused": refused}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


class HttpSink:
    """An HTTP endpoint in a thread, and an ``http-post`` instance sending to it."""

    def __init__(self) -> None:
        handler = type("Handler", (Endpoint,), {"received": [], "refuse": set()})
        self.handler: type[Endpoint] = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def config(self, **overrides: Any) -> ProviderConfiguration:
        url = f"http://127.0.0.1:{self.server.server_address[1]}/messages"
        fields: dict[str, Any] = {
            "name": "http-example",
            "provider_class": "http-post",
            "direction": Direction.OUTGOING,
            "email_address": "sender@example.com",
            "parameters": parameters(url=url, timeout="5"),
        }
        return ProviderConfiguration(**{**fields, **overrides})

    def sent(self) -> list[tuple[tuple[str, ...], bytes]]:
        return list(self.handler.received)

    def refuse_for_now(self, address: str) -> bool:
        self.handler.refuse.add(address.lower())
        return True


class TestMaildirProvider(IncomingProviderContract):
    @pytest.fixture
    def mailbox(self, tmp_path: Path) -> MailboxBackend:
        return TempMaildir(tmp_path / "Maildir")


class TestHttpPostProvider(OutgoingProviderContract):
    @pytest.fixture
    def sent_mail(self) -> Iterator[SentMailBackend]:
        sink = HttpSink()
        yield sink
        sink.server.shutdown()
        sink.server.server_close()
