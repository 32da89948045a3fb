"""A private Dovecot (IMAP + POP3, plain and TLS) for the tests, and helpers to fill mailboxes.

The ``dovecot`` fixture (session scope) starts one Dovecot from a generated configuration in a temp
dir (a recipe known to work with Debian 12's dovecot 2.3): plain IMAP/POP3 ports (with
STARTTLS/STLS), implicit-TLS IMAPS/POP3S ports with a trustme certificate for 127.0.0.1/localhost,
users from a passwd-file (re-read by Dovecot when it changes), maildirs. It is stopped with
``doveadm stop`` at the end.

``dovecot_user`` gives each test a fresh mailbox; ``Dovecot.provider_config`` builds a
``<ProviderConfiguration>`` pointing at it. :class:`DroppingProxy` sits between a client and the
server and cuts the connection after N bytes from the server (a mid-FETCH drop, deterministic).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from imapclient import IMAPClient

from router.config import (
    Parameter,
    Parameters,
    ProviderConfiguration,
    Secret,
)
from router.models import Direction
from tests.servers.common import free_port, port_open, require, wait_for

PASSWORD = "s3cret-pw"
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")

CONFIG = """\
protocols = imap pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/run/state
log_path = {root}/dovecot.log
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
mail_fsync = never
mail_max_userip_connections = 100
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
passdb {{
  driver = oauth2
  mechanisms = xoauth2
  args = {root}/oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {root}/users
}}
# any other user name logs in with PASSWORD: a fresh mailbox per test, no passwd-file
# round trip (Dovecot re-reads the passwd-file at most once a second)
passdb {{
  driver = static
  mechanisms = plain login
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
pop3_uidl_format = %08Xu%08Xv
# no auth penalty: a wrong-password test must not slow down the logins of the next tests
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


OAUTH2_CONFIG = """\
introspection_mode = post
introspection_url = http://127.0.0.1:{port}/introspect
username_attribute = username
active_attribute = active
active_value = true
"""


def oauth_token(user: str) -> str:
    """An access token the test introspection endpoint accepts for ``user``."""
    return f"tok-{user}"


class _Introspection(http.server.BaseHTTPRequestHandler):
    """RFC 7662 token introspection for Dovecot's oauth2 passdb: ``tok-<user>`` is valid."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        token = form.get("token", [""])[0]
        if token.startswith("tok-"):
            body = {"active": "true", "username": token[4:]}
        else:
            body = {"active": "false"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class Dovecot:
    """A running private Dovecot and the helpers tests use to read and change mailboxes."""

    def __init__(self, root: Path, ca_path: Path, extra_config: str = "") -> None:
        self.root, self.ca_path = root, ca_path
        #: appended to the generated configuration (e.g. :data:`MANY_CONNECTIONS`)
        self.extra_config = extra_config
        self.ports = {k: free_port() for k in ("imap", "imaps", "pop3", "pop3s")}
        self.conf = root / "dovecot.conf"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._oauth = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
        threading.Thread(target=self._oauth.serve_forever, daemon=True).start()
        port = self._oauth.server_address[1]
        (self.root / "oauth2.conf.ext").write_text(OAUTH2_CONFIG.format(port=port))
        (self.root / "users").write_text("")
        (self.root / "mail").mkdir()
        shutil.chown(self.root / "mail", "dovecot", "dovecot")
        config = CONFIG.format(root=self.root, password=PASSWORD, **self.ports)
        self.conf.write_text(config + self.extra_config)
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True, timeout=30)
        if not wait_for(lambda: all(port_open(p) for p in self.ports.values()), 15):
            raise RuntimeError(f"dovecot did not start: {self.log_tail()}")

    def stop(self) -> None:
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], timeout=30, check=False)
        wait_for(lambda: not port_open(self.ports["imap"]), 10)
        self._oauth.shutdown()
        self._oauth.server_close()

    def log_tail(self, lines: int = 20) -> str:
        log = self.root / "dovecot.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""

    def doveadm(self, *args: str) -> str:
        done = subprocess.run(
            ["doveadm", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"doveadm {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    # -- users and mailboxes -------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> str:
        """Add a user with its own password to the passwd-file; return once Dovecot knows it."""
        with (self.root / "users").open("a", encoding="utf-8") as users:
            users.write(f"{name}:{{PLAIN}}{password}\n")
        if not wait_for(lambda: self._auth_ok(name, password), 5, 0.2):
            raise RuntimeError(f"dovecot did not pick up user {name}")
        return name

    def _auth_ok(self, name: str, password: str) -> bool:
        try:
            self.doveadm("auth", "test", name, password)
        except RuntimeError:
            return False
        return True

    def new_user(self) -> str:
        """A user no other test uses, password :data:`PASSWORD` (no passwd-file entry needed)."""
        return f"u{uuid.uuid4().hex[:10]}@example.com"

    @contextlib.contextmanager
    def imap(self, user: str, password: str = PASSWORD) -> Iterator[IMAPClient]:
        """A logged-in IMAPClient on the plain port."""
        client = IMAPClient("127.0.0.1", self.ports["imap"], ssl=False, timeout=30)
        try:
            client.login(user, password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> int:
        """APPEND one message; return its UID."""
        return self.append_many(user, [raw], folder)[0]

    def append_many(self, user: str, raws: Iterable[bytes], folder: str = "INBOX") -> list[int]:
        """APPEND messages in order over one connection; return their UIDs."""
        with self.imap(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            return [_appended_uid(client.append(folder, raw)) for raw in raws]

    def list_uids(self, user: str, folder: str = "INBOX") -> list[int]:
        with self.imap(user) as client:
            client.select_folder(folder, readonly=True)
            return sorted(client.search("ALL"))

    def flags(self, user: str, uid: int, folder: str = "INBOX") -> set[str]:
        """The flags of one message, as str (e.g. ``{"\\\\Seen"}``)."""
        with self.imap(user) as client:
            client.select_folder(folder, readonly=True)
            found = client.get_flags([uid]).get(uid, ())
            return {f.decode() if isinstance(f, bytes) else str(f) for f in found}

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        with self.imap(user) as client:
            return int(client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    def folders(self, user: str) -> list[str]:
        with self.imap(user) as client:
            return [name for _flags, _sep, name in client.list_folders()]

    def recreate_folder(self, user: str, folder: str = "INBOX") -> None:
        """Empty ``folder`` and give it a new UIDVALIDITY, as if it had been recreated.

        Dovecot refuses to delete INBOX, so INBOX is expunged and renumbered instead.
        """
        if folder == "INBOX":
            self.doveadm("expunge", "-u", user, "mailbox", folder, "all")
            self.change_uidvalidity(user, folder)
        else:
            self.doveadm("mailbox", "delete", "-u", user, folder)
            self.doveadm("mailbox", "create", "-u", user, folder)

    def change_uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """Give ``folder`` a new UIDVALIDITY, keeping its messages (a server-side resync)."""
        new = self.uidvalidity(user, folder) + 1
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), folder)
        return new

    # -- configurations ------------------------------------------------------------------------

    def provider_config(
        self,
        user: str,
        kind: str = "imap",
        security: str = "none",
        *,
        password: str = PASSWORD,
        name: str | None = None,
        deployment: str = "test",
        after_processing: str = "leave",
        max_message_count: int = 100,
        port: int | None = None,
        **params: Any,
    ) -> ProviderConfiguration:
        """A ``<ProviderConfiguration>`` of an incoming ``kind`` instance reading ``user``.

        ``security="ssl"`` uses the implicit-TLS port; pass ``ca_bundle=str(dovecot.ca_path)`` in
        ``params`` to trust the test CA. Extra keyword arguments become ``<Parameter>`` values.
        """
        if port is None:
            port = self.ports[kind + "s" if security == "ssl" else kind]
        return ProviderConfiguration(
            name=name or f"{kind}-{user.split('@')[0]}",
            provider_class=kind,
            direction=Direction.INCOMING,
            deployment=deployment,
            email_server="127.0.0.1",
            email_port=port,
            email_security=cast(Any, security),  # validated by pydantic
            email_user=user,
            email_password=Secret(value=password),
            email_address=user,
            after_processing=after_processing,
            max_message_count=max_message_count,
            parameters=Parameters(
                items=tuple(Parameter(name=k, value=str(v)) for k, v in params.items())
            ),
        )


def _appended_uid(response: bytes | str) -> int:
    text = response if isinstance(response, bytes) else response.encode()
    found = _APPENDUID.search(text)
    if not found:
        raise RuntimeError("server did not return APPENDUID")
    return int(found.group(1))


def message(n: int, *, sender: str = "sender@example.org", size: int = 0) -> bytes:
    """A small, valid test message number ``n`` (subject ``message n``, unique Message-ID)."""
    body = f"Body of message {n}.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return (
        f"From: Sender {n} <{sender}>\r\n"
        f"To: inbox@example.com\r\n"
        f"Subject: message {n}\r\n"
        f"Message-ID: <m{n}.{uuid.uuid4().hex}@example.org>\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n{body}"
    ).encode()


class DroppingProxy:
    """A TCP proxy to 127.0.0.1:``target`` that closes a connection after ``limit`` bytes.

    Counting starts when :meth:`arm` is called, so login and SELECT pass; the next ``limit`` bytes
    from the server go through and then both sides are closed (a connection dropped mid-FETCH).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.limit: int | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._spawn(self._accept_loop)

    def arm(self, limit: int) -> None:
        self.limit = limit

    def _spawn(self, fn: Any, *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            self._socks += [client, upstream]
            self._spawn(self._pipe, client, upstream, False)
            self._spawn(self._pipe, upstream, client, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        passed = 0
        with contextlib.suppress(OSError):
            while chunk := src.recv(4096):
                if counted and self.limit is not None:
                    chunk = chunk[: max(0, self.limit - passed)]
                    passed += len(chunk)
                dst.sendall(chunk)
                if counted and self.limit is not None and passed >= self.limit:
                    break
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(5)


#: ``extra_config`` for a Dovecot that holds a thousand or more IMAP connections at once (the
#: push benchmark's IDLE sessions): one imap process per connection, and the auxiliary services
#: (anvil, log, stats) each see every one of them as a client. Each IDLE session watches its
#: maildir with an inotify instance, all under the dovecot uid, and Linux allows 128 per uid by
#: default (``fs.inotify.max_user_instances``): past that Dovecot looks at the mailbox every
#: ``mailbox_idle_check_interval`` instead (30 s by default, 1 s here).
MANY_CONNECTIONS = """
default_process_limit = 2500
default_client_limit = 10000
service imap {
  process_limit = 2500
}
mailbox_idle_check_interval = 1 s
"""


@contextlib.contextmanager
def running_dovecot(extra_config: str = "") -> Iterator[Dovecot]:
    """Start a private Dovecot with a fresh trustme CA in a temp dir; stop and remove it after.

    ``extra_config`` is appended to the generated configuration (e.g. :data:`MANY_CONNECTIONS`).
    """
    import trustme

    root = Path(tempfile.mkdtemp(prefix="er-dovecot-"))
    root.chmod(0o755)  # the dovecot and dovenull users must traverse it
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    os.chmod(root / "key.pem", 0o600)
    server = Dovecot(root, root / "ca.pem", extra_config)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def dovecot_installed() -> bool:
    return shutil.which("dovecot") is not None and shutil.which("doveadm") is not None


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """The session's private Dovecot (skipped locally / failed in CI when not installed)."""
    hint = "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
    require(dovecot_installed(), hint)
    with running_dovecot() as server:
        yield server


@pytest.fixture
def dovecot_user(dovecot: Dovecot) -> str:
    """A fresh, empty mailbox on the session's Dovecot."""
    return dovecot.new_user()


@pytest.fixture
def dropping_proxy(dovecot: Dovecot) -> Iterator[DroppingProxy]:
    """A :class:`DroppingProxy` in front of the plain IMAP port."""
    proxy = DroppingProxy(dovecot.ports["imap"])
    yield proxy
    proxy.close()
