"""aiosmtpd test servers: plain, SMTPS and STARTTLS (trustme certificates), AUTH, scripted replies.

As a pytest plug-in it provides:

* ``smtp_certs`` (session) - a trustme CA and a certificate for ``localhost``/``127.0.0.1``;
* ``smtp_server`` - a factory ``smtp_server(security="none"|"ssl"|"starttls", users=...,
  tokens=..., rcpt_replies=..., data_replies=...)`` returning a running :class:`SmtpSink`
  (an aiosmtpd ``Controller`` in a thread), stopped at teardown;
* ``smtp_sink_process`` - a factory starting the same server as a separate process that stores
  every message on disk (:class:`SinkProcess`), so a test can SIGKILL and restart it.

Run it by hand: ``python -m tests.servers.smtp --port 2525 --store /tmp/sink``.

Scripted replies: ``rcpt_replies={"bob@example.com": ["451 4.7.1 try later"]}`` answers the
first RCPT TO for bob with 451 and accepts him afterwards; ``sticky`` replies
(``rcpt_always={"x@example.com": "550 5.1.1 no such user"}``) answer every time.

Envelope check: both fixtures assert at teardown, for every message the server accepted, that
the envelope matches the headers - every accepted ``RCPT TO`` is a To/Cc address of the message
or a Bcc the test declared, and every To/Cc address (and declared Bcc) was asked for in some
``RCPT TO`` of a transaction with that Message-ID. A CRM email the test declared
(:func:`declare_crm_email`, :meth:`SmtpSink.expect`) must also have exactly its To+Cc in the
headers. The server keeps a raw transcript (``transcript``: every MAIL/RCPT/DATA/RSET command
line as received) and each message's requested recipients (``Received.tried``, refused ones too).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from tests.servers.common import free_port, port_open, wait_for

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One message as the server got it: envelope, raw bytes and every RCPT TO asked for."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    peer: str = ""
    tried: tuple[str, ...] = ()

    def message(self, headers_only: bool = False) -> Any:
        if self.data.isascii():
            return BytesParser(policy=policy.default).parsebytes(self.data, headers_only)
        # SMTPUTF8: read the header fields as UTF-8 text, not as surrogate-escaped bytes
        text = self.data.decode("utf-8", "replace")
        return Parser(policy=policy.SMTPUTF8).parsestr(text, headers_only)


@dataclass(frozen=True)
class CrmRecipients:
    """The recipients a CRM email names: ``visible`` (To + Cc) and ``hidden`` (Bcc)."""

    visible: frozenset[str]
    hidden: frozenset[str] = frozenset()

    @classmethod
    def of(cls, visible: Iterable[str], hidden: Iterable[str] = ()) -> CrmRecipients:
        return cls(frozenset(map(normalized, visible)), frozenset(map(normalized, hidden)))


#: CRM emails the tests declared, by the Message-ID the router gives them (see module docstring).
DECLARED: dict[str, CrmRecipients] = {}


def declare_crm_email(message_id: str, visible: Iterable[str], hidden: Iterable[str] = ()) -> None:
    """Tell every sink what the CRM email sent as ``message_id`` names as its recipients."""
    DECLARED[message_id] = CrmRecipients.of(visible, hidden)


def normalized(address: str) -> str:
    """An address in one comparable form: ``<>`` and name dropped, domain IDNA and lower case."""
    text = address.strip()
    if text.endswith(">") and "<" in text:
        text = text[text.rfind("<") + 1 : -1]
    local, _, domain = text.rpartition("@")
    # an unencodable domain is left as it is: it then matches nothing the router could send
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain.lower()}"


def envelope_problems(
    messages: Iterable[Received], declared: Mapping[str, CrmRecipients]
) -> list[str]:
    """What is wrong between the envelopes and the headers of ``messages`` (see the docstring)."""
    problems: list[str] = []
    asked: dict[str, set[str]] = {}
    named: dict[str, set[str]] = {}
    for received in messages:
        msg = received.message(headers_only=True)
        message_id = str(msg.get("Message-ID", ""))
        visible = _header_addresses(msg)
        crm = declared.get(message_id)
        problems += _one_envelope(message_id, received, visible, crm)
        asked.setdefault(message_id, set()).update(map(normalized, received.tried))
        named.setdefault(message_id, set()).update(visible | (crm.hidden if crm else set()))
    for message_id, wanted in named.items():
        for missing in sorted(wanted - asked[message_id]):
            problems.append(f"{message_id}: {missing} is a recipient but got no RCPT TO")
    return problems


def _one_envelope(
    message_id: str, received: Received, visible: set[str], crm: CrmRecipients | None
) -> list[str]:
    allowed = visible | (crm.hidden if crm else set())
    problems = [
        f"{message_id}: RCPT TO:<{rcpt}> is neither in To/Cc ({sorted(visible)}) nor a Bcc"
        for rcpt in received.rcpt_tos
        if normalized(rcpt) not in allowed
    ]
    if crm is not None and visible != crm.visible:
        problems.append(f"{message_id}: To/Cc say {sorted(visible)}, the CRM {sorted(crm.visible)}")
    return problems


def _header_addresses(msg: EmailMessage) -> set[str]:
    found: set[str] = set()
    for name in ("To", "Cc"):
        for header in msg.get_all(name, []):
            found.update(normalized(a.addr_spec) for a in header.addresses)
    return found


class _TranscriptSMTP(SMTP):
    """aiosmtpd's server keeping a raw transcript and the RCPT TOs of the open transaction."""

    def __init__(self, handler: SinkHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink_handler = handler

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._note("MAIL", arg)
        self.sink_handler.start_transaction(self)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._note("RCPT", arg)
        path = (arg or "").partition("<")[2].rpartition(">")[0]
        self.sink_handler.tried_in(self).append(path)
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
        self._note("DATA", arg)
        await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str | None) -> None:
        self._note("RSET", arg)
        self.sink_handler.start_transaction(self)
        await super().smtp_RSET(arg)

    def _note(self, verb: str, arg: str | None) -> None:
        with self.sink_handler.lock:
            self.sink_handler.transcript.append(f"{verb} {arg or ''}".rstrip())


class _TranscriptController(Controller):
    """A Controller whose sessions are :class:`_TranscriptSMTP`."""

    def factory(self) -> SMTP:
        return _TranscriptSMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class SinkHandler:
    """aiosmtpd handler: stores messages (memory and/or a directory) and plays scripted replies."""

    store_dir: Path | None = None
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    rcpt_always: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    die_after: int | None = None
    messages: list[Received] = field(default_factory=list)
    transactions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    transcript: list[str] = field(default_factory=list)
    tried: weakref.WeakKeyDictionary[Any, list[str]] = field(
        default_factory=weakref.WeakKeyDictionary
    )

    def start_transaction(self, server: Any) -> None:
        self.tried[server] = []

    def tried_in(self, server: Any) -> list[str]:
        return self.tried.setdefault(server, [])

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            queue = self.rcpt_replies.get(address.lower())
            reply = queue.pop(0) if queue else self.rcpt_always.get(address.lower())
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.transactions += 1
            if self.die_after is not None and self.transactions > self.die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash mid-batch, before storing
            if self.data_replies:
                reply = self.data_replies.pop(0)
                if not reply.startswith("2"):
                    return reply
            received = Received(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                bytes(envelope.original_content or envelope.content),
                tuple(envelope.mail_options),
                str(session.peer),
                tuple(self.tried_in(server)),
            )
            self.messages.append(received)
            if self.store_dir is not None:
                _store(self.store_dir, len(self.messages), received)
        return "250 2.0.0 Message accepted for delivery"

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        from aiosmtpd.smtp import AuthResult

        raw = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        fields = dict(p.split("=", 1) for p in raw.split("\x01") if "=" in p)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        ok = bool(user) and self.tokens.get(user) == token
        return AuthResult(success=ok, handled=False)


def _store(directory: Path, number: int, received: Received) -> None:
    """Write one message atomically: ``<pid>-<n>.json`` holds envelope and base64 data."""
    name = f"{os.getpid()}-{number:06d}.json"
    record = {
        "mail_from": received.mail_from,
        "rcpt_tos": list(received.rcpt_tos),
        "tried": list(received.tried),
        "data": base64.b64encode(received.data).decode(),
    }
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, directory / name)


def read_store(directory: Path) -> list[Received]:
    """Every message a sink process stored in ``directory``."""
    out = []
    for path in sorted(directory.glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        data = base64.b64decode(rec["data"])
        tried = tuple(rec.get("tried", ()))
        out.append(Received(rec["mail_from"], tuple(rec["rcpt_tos"]), data, tried=tried))
    return out


def _authenticator(users: dict[str, str]) -> Callable[..., Any]:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = users.get(data.login.decode()) == data.password.decode()
        return AuthResult(success=ok, handled=False)

    return check


class SmtpSink:
    """A running aiosmtpd server in a thread; ``messages`` is what it accepted."""

    def __init__(
        self,
        handler: SinkHandler,
        *,
        security: str = "none",
        certs: Certs | None = None,
        users: dict[str, str] | None = None,
        port: int | None = None,
        idle_timeout: float = 300,
    ) -> None:
        self.handler, self.security, self.port = handler, security, port or free_port()
        self.expected: dict[str, CrmRecipients] = {}
        kwargs: dict[str, Any] = {
            "enable_SMTPUTF8": True,
            "auth_require_tls": False,
            "timeout": idle_timeout,
        }
        if users is not None or handler.tokens:
            kwargs.update(authenticator=_authenticator(users or {}), auth_required=True)
        if security == "starttls":
            assert certs is not None
            kwargs.update(tls_context=certs.server_context(), require_starttls=True)
        ssl_context = certs.server_context() if security == "ssl" and certs else None
        self.controller = _TranscriptController(
            handler, hostname=HOST, port=self.port, ssl_context=ssl_context, **kwargs
        )

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def transcript(self) -> list[str]:
        """Every MAIL/RCPT/DATA/RSET command line received, in order."""
        with self.handler.lock:
            return list(self.handler.transcript)

    def expect(self, message_id: str, visible: Iterable[str], hidden: Iterable[str] = ()) -> None:
        """Declare the To+Cc (``visible``) and Bcc of the CRM email sent as ``message_id``."""
        self.expected[message_id] = CrmRecipients.of(visible, hidden)

    def envelope_problems(self) -> list[str]:
        return envelope_problems(self.messages, {**DECLARED, **self.expected})

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


@dataclass
class Certs:
    """A trustme CA (``ca_pem`` for clients) and a server certificate for localhost."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_pem), str(self.key_pem))
        return ctx


def make_certs(directory: Path) -> Certs:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", HOST)
    paths = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca_pem))
    cert.private_key_pem.write_to_path(str(paths.key_pem))
    cert.cert_chain_pems[0].write_to_path(str(paths.cert_pem))
    for extra in cert.cert_chain_pems[1:]:
        with open(paths.cert_pem, "ab") as fh:
            fh.write(extra.bytes())
    return paths


class SinkProcess:
    """The sink as a separate process storing to ``store``; SIGKILL it and start it again."""

    def __init__(self, store: Path, port: int | None = None, die_after: int | None = None) -> None:
        self.store, self.port, self.die_after = store, port or free_port(), die_after
        self.proc: subprocess.Popen[bytes] | None = None
        store.mkdir(parents=True, exist_ok=True)

    def start(self, die_after: int | None = None) -> SinkProcess:
        args = [sys.executable, "-m", "tests.servers.smtp", "--port", str(self.port)]
        args += ["--store", str(self.store)]
        if die_after is not None:
            args += ["--die-after", str(die_after)]
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(args, cwd=root, stderr=subprocess.DEVNULL)
        if not wait_for(lambda: port_open(self.port), timeout=15):
            self.kill()
            raise RuntimeError(f"SMTP sink did not start on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def messages(self) -> list[Received]:
        return read_store(self.store)


# -- pytest fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smtp_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("smtp-certs"))


@pytest.fixture
def smtp_server(smtp_certs: Certs) -> Iterator[Callable[..., SmtpSink]]:
    started: list[SmtpSink] = []

    def start(
        security: str = "none",
        users: dict[str, str] | None = None,
        idle_timeout: float = 300,
        **handler_args: Any,
    ) -> SmtpSink:
        handler = SinkHandler(**handler_args)
        sink = SmtpSink(
            handler, security=security, certs=smtp_certs, users=users, idle_timeout=idle_timeout
        )
        started.append(sink.start())
        return sink

    yield start
    for sink in started:
        sink.stop()
    _fail_on(problem for sink in started for problem in sink.envelope_problems())


@pytest.fixture
def smtp_sink_process(tmp_path: Path) -> Iterator[Callable[..., SinkProcess]]:
    started: list[SinkProcess] = []

    def start(die_after: int | None = None) -> SinkProcess:
        sink = SinkProcess(tmp_path / f"sink{len(started)}").start(die_after)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.kill()
    _fail_on(p for sink in started for p in envelope_problems(sink.messages(), DECLARED))


def _fail_on(problems: Iterable[str]) -> None:
    found = list(problems)
    if found:
        pytest.fail("envelope and headers disagree:\n" + "\n".join(found[:20]), pytrace=False)


# -- as a process ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SMTP sink storing messages as JSON files")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument(
        "--die-after",
        type=int,
        default=None,
        help="SIGKILL itself when DATA of message N+1 arrives, before storing",
    )
    args = parser.parse_args(argv)
    args.store.mkdir(parents=True, exist_ok=True)
    sink = SmtpSink(SinkHandler(store_dir=args.store, die_after=args.die_after), port=args.port)
    sink.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.2)
    sink.stop()


if __name__ == "__main__":
    main()
