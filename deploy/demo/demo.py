"""``make demo``: the router on this machine with real servers, no Docker, no Redis.

Starts, in a work directory (a temp dir unless ``--workdir``):

* a private **Dovecot** (IMAP + POP3 on free loopback ports; the ``dovecot`` binary must be
  installed - on Debian ``apt-get install dovecot-imapd dovecot-pop3d``),
* the **Dataverse simulator** (``python -m router.crm.simulator``, HTTPS with its own CA),
* an **SMTP sink** (aiosmtpd) that stores what the router sends as ``.eml`` files,

seeds demo mail into ``sales@demo.example`` (read over IMAP) and ``support@demo.example`` (POP3)
and three pending outbound emails into the simulator, writes the configuration from
``router.demo.xml`` and runs ``email-router run`` (single process, SQLite state) and
``email-router console`` (with a user and password generated for this run). It prints the URL
of the simulator's activity page, the console's URL and credentials, and commands that work
from another terminal (``email-router status`` with the environment they need).

Ctrl-C, SIGTERM (``timeout 20 make demo``) and ``--duration`` all stop it the same way: the
router, the console, the simulator and the SMTP sink stop, Dovecot is stopped, and the temp dirs
are removed. ``--check`` exits 1 unless every demo message became an activity and every outbound
email reached the sink (used by tests/integration/test_demo.py).

``--graph`` (``make demo DEMO_ARGS=--graph``) adds a second mail source: ``email-router
graph-sim`` (the Microsoft Graph simulator, HTTPS with its own CA written to the work dir) with
three messages in ``orders@demo.example``, and a ``graph`` incoming instance reading it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import seed  # noqa: E402  (a sibling script, not a package)

PASSWORD = "demo-pw"
DOVECOT_CONF = """\
protocols = imap pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/run/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
pop3_uidl_format = %08Xu%08Xv
"""


def log(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


# -- Dovecot --------------------------------------------------------------------------------------
def find_dovecot() -> tuple[str, str] | None:
    """Paths of ``dovecot`` and ``doveadm``, or None when Dovecot is not installed."""
    found = [
        shutil.which(n) or next((p for p in (f"/usr/sbin/{n}",) if Path(p).exists()), None)
        for n in ("dovecot", "doveadm")
    ]
    return (found[0], found[1]) if found[0] and found[1] else None


@contextlib.contextmanager
def dovecot(binaries: tuple[str, str]) -> Iterator[dict[str, int]]:
    """A private Dovecot with plain IMAP/POP3 on free ports; any user, password PASSWORD.

    It lives in its own temp dir (mode 755: Dovecot's service users must traverse it), never in
    the work dir, whose parents may be private.
    """
    ports = {"imap": free_port(), "pop3": free_port()}
    root = Path(tempfile.mkdtemp(prefix="email-router-demo-dovecot-"))
    root.chmod(0o755)
    (root / "mail").mkdir()
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, password=PASSWORD, **ports, **_users(root)))
    log(f"Dovecot directory: {root}")
    try:
        subprocess.run([binaries[0], "-c", str(conf)], check=True, timeout=30)
        try:
            wait_for(lambda: all(port_open(p) for p in ports.values()), 15, "Dovecot")
            yield ports
        finally:
            subprocess.run([binaries[1], "-c", str(conf), "stop"], timeout=30, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _users(root: Path) -> dict[str, Any]:
    """Root runs Dovecot with its own service users; anyone else as themselves."""
    if os.geteuid() == 0:
        shutil.chown(root / "mail", "dovecot", "dovecot")
        dove = pwd.getpwnam("dovecot")
        return {
            "login_user": "dovenull",
            "internal_user": "dovecot",
            "uid": dove.pw_uid,
            "gid": dove.pw_gid,
        }
    me = pwd.getpwuid(os.getuid())
    return {
        "login_user": me.pw_name,
        "internal_user": me.pw_name,
        "uid": me.pw_uid,
        "gid": me.pw_gid,
    }


# -- simulator and SMTP sink ----------------------------------------------------------------------
@contextlib.contextmanager
def https_server(work: Path, name: str, args: Sequence[str], what: str) -> Iterator[str]:
    """``python -m ARGS`` (a simulator announcing "listening on https://...") until the block
    ends, its output in ``<name>.log``; yields the URL it announced."""
    out = work / f"{name}.log"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=sink, stderr=subprocess.STDOUT, cwd=work
        )
    try:
        wait_for(lambda: "listening on" in out.read_text() or proc.poll() is not None, 30, what)
        match = re.search(r"listening on (https://\S+)", out.read_text())
        if match is None:
            raise RuntimeError(f"{what} did not start:\n{out.read_text()}")
        yield match.group(1)
    finally:
        _stop(proc)


@contextlib.contextmanager
def simulator(work: Path) -> Iterator[tuple[str, str]]:
    """The Dataverse simulator on a free port; yields (base URL, CA bundle path)."""
    ca = work / "crm-sim-ca.pem"
    args = ["router.crm.simulator", "--port", "0", "--ca-out", str(ca)]
    with https_server(work, "crm-sim", [*args, "--db", str(work / "crm-sim.db")],
                      "the Dataverse simulator") as url:  # fmt: skip
        yield url, str(ca)


@contextlib.contextmanager
def graph_simulator(work: Path) -> Iterator[tuple[str, str]]:
    """The Graph simulator (what ``email-router graph-sim`` runs) on a free port; yields (origin
    URL, CA bundle path)."""
    ca = work / "graph-sim-ca.pem"
    args = ["router.graph.simulator", "--port", "0", "--ca-out", str(ca), "--exit-with-parent"]
    with https_server(work, "graph-sim", args, "the Graph simulator") as url:
        yield url, str(ca)


class SinkHandler:
    """Stores every message the router submits as ``<n>.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        n = len(list(self.folder.glob("*.eml"))) + 1
        (self.folder / f"{n:04d}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 2.0.0 stored"


@contextlib.contextmanager
def smtp_sink(folder: Path) -> Iterator[int]:
    from aiosmtpd.controller import Controller

    port = free_port()
    controller = Controller(SinkHandler(folder), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


#: The graph incoming instance ``--graph`` adds (the simulator's default tenant and client).
GRAPH_INSTANCE = """
  <ProviderConfiguration Name="orders-graph">
    <ProviderClass>graph</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>demo</Deployment>
    <EmailServer>$GRAPH_URL/v1.0</EmailServer>
    <EmailUser>$GRAPH_MAILBOX</EmailUser>
    <EmailPassword Env="GRAPH_CLIENT_SECRET"/>
    <EmailAddress>$GRAPH_MAILBOX</EmailAddress>
    <QueueId>00000000-0000-0000-0000-0000000000a1</QueueId>
    <PollingPeriod>2000</PollingPeriod>
    <AfterProcessing>seen</AfterProcessing>
    <Parameters>
      <Parameter Name="tenant_id">graph-sim-tenant</Parameter>
      <Parameter Name="client_id">graph-sim-client</Parameter>
      <Parameter Name="authority">$GRAPH_URL/graph-sim-tenant</Parameter>
      <Parameter Name="ca_bundle">$GRAPH_CA</Parameter>
    </Parameters>
  </ProviderConfiguration>
"""


# -- the router -----------------------------------------------------------------------------------
def write_config(work: Path, values: dict[str, object], graph: bool = False) -> Path:
    """Fill in router.demo.xml (plus :data:`GRAPH_INSTANCE` when ``graph``) into the work dir."""
    text = (HERE / "router.demo.xml").read_text()
    if graph:
        text = text.replace("</Configuration>", GRAPH_INSTANCE.lstrip("\n") + "</Configuration>")
    path = work / "router.xml"
    path.write_text(string.Template(text).substitute({k: str(v) for k, v in values.items()}))
    return path


#: What the demo's configuration reads from the environment (its Env= secrets).
SECRETS_ENV = {
    "DEMO_MAIL_PASSWORD": PASSWORD,
    "CRM_CLIENT_SECRET": "demo-secret",
    "GRAPH_CLIENT_SECRET": "graph-sim-secret",  # what graph-sim accepts by default
}
CONSOLE_USER = "demo"


def router_env(**extra: str) -> dict[str, str]:
    """The environment of the demo's router processes: its secrets, no outside state URL."""
    env = {**os.environ, **SECRETS_ENV, **extra}
    env.pop("ROUTER_STATE_URL", None)
    return env


def start_router(config: Path, work: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "router.cli", "run", "--config", str(config)],
        env=router_env(),
        cwd=work,
    )


@contextlib.contextmanager
def console(config: Path, work: Path, password: str) -> Iterator[str]:
    """``email-router console`` on a free port (audit log next to the state); yields its URL."""
    out = work / "console.log"
    env = router_env(ROUTER_CONSOLE_USER=CONSOLE_USER, ROUTER_CONSOLE_PASSWORD=password)
    command = [sys.executable, "-m", "router.cli", "console", "--config", str(config)]
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [*command, "--port", "0"], env=env, cwd=work, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_for(
            lambda: "listening on" in out.read_text() or proc.poll() is not None, 30, "the console"
        )
        match = re.search(r"listening on (http://\S+?)/?$", out.read_text(), re.M)
        if match is None:
            raise RuntimeError(f"the console did not start:\n{out.read_text()}")
        yield match.group(1)
    finally:
        _stop(proc)


def cli_command(*args: str) -> str:
    """A shell command line that runs ``email-router ARGS`` from any directory and terminal."""
    script = Path(sys.executable).parent / "email-router"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "router.cli"]
    env = [f"{k}={shlex.quote(v)}" for k, v in SECRETS_ENV.items()]
    return " ".join(["env", "-u", "ROUTER_STATE_URL", *env, *map(shlex.quote, [*program, *args])])


def _stop(proc: subprocess.Popen[Any], timeout: float = 40) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- progress -------------------------------------------------------------------------------------
def counts(crm_url: str, ca: str, outbox: Path) -> tuple[int, int, int]:
    """(incoming activities, outbound emails marked Sent, messages in the SMTP sink)."""
    try:
        rows = seed.activities(crm_url, ca)
    except Exception:  # the simulator is busy or going away: report nothing new
        return -1, -1, len(list(outbox.glob("*.eml")))
    incoming = sum(1 for r in rows if not r.get("directioncode"))
    sent = sum(1 for r in rows if r.get("directioncode") and r.get("statuscode") == 3)
    return incoming, sent, len(list(outbox.glob("*.eml")))


def watch(
    crm_url: str,
    ca: str,
    outbox: Path,
    duration: float | None,
    router: Any,
    *,
    early: bool,
    graph: bool = False,
) -> bool:
    """Print progress until ``duration`` passes (or Ctrl-C); True when everything arrived.

    ``early``: return as soon as everything arrived; ``graph``: the Graph mailbox's messages
    count too.
    """
    activities = seed.expected_activities() + (len(seed.graph_mail()) if graph else 0)
    want = (activities, seed.OUTBOUND_COUNT, seed.OUTBOUND_COUNT)
    deadline = None if duration is None else time.monotonic() + duration
    last: tuple[int, int, int] | None = None
    while deadline is None or time.monotonic() < deadline:
        now = counts(crm_url, ca, outbox)
        if now != last and now[0] >= 0:
            log(
                f"activities {now[0]}/{want[0]}, outbound sent {now[1]}/{want[1]}, "
                f"SMTP sink {now[2]}/{want[2]}"
            )
            last = now
            if early and _complete(last, want):
                break
        if router.poll() is not None:
            log(f"email-router run exited with {router.returncode}")
            break
        time.sleep(1)
    return last is not None and _complete(last, want)


def _complete(have: tuple[int, int, int], want: tuple[int, int, int]) -> bool:
    return all(a >= b for a, b in zip(have, want, strict=True))


# -- main -----------------------------------------------------------------------------------------
def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="email-router demo (no Docker)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: temp dir)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="stop once all demo mail arrived; exit 1 if it did not (tests)",
    )
    parser.add_argument(
        "--graph",
        action="store_true",
        help="also start the Graph simulator and read a mailbox of it through Microsoft Graph",
    )
    return parser.parse_args(argv)


def no_dovecot() -> int:
    print(
        "make demo needs Dovecot for its IMAP/POP3 mailboxes, and `dovecot` was not found.\n"
        "  Debian/Ubuntu: sudo apt-get install dovecot-imapd dovecot-pop3d\n"
        "  (the demo starts its own private instance on free ports; the system service can\n"
        "  stay disabled: sudo systemctl disable --now dovecot)\n"
        "Or run the whole demo in containers: cp .env.example .env && docker compose up",
        file=sys.stderr,
    )
    return 2


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM: stop exactly as Ctrl-C does (once: a second signal must not cut the cleanup)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    binaries = find_dovecot()
    if binaries is None:
        return no_dovecot()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory("-demo")))
            work.mkdir(parents=True, exist_ok=True)
            log(f"work directory: {work.resolve()}")
            return run_demo(stack, work.resolve(), binaries, args)
    except KeyboardInterrupt:  # during start-up or shutdown: everything opened is closed
        log("stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_demo(
    stack: contextlib.ExitStack, work: Path, binaries: tuple[str, str], args: argparse.Namespace
) -> int:
    ports = stack.enter_context(dovecot(binaries))
    crm_url, ca = stack.enter_context(simulator(work))
    outbox = work / "outbox"
    smtp_port = stack.enter_context(smtp_sink(outbox))
    log(
        f"Dovecot IMAP 127.0.0.1:{ports['imap']}, POP3 127.0.0.1:{ports['pop3']}; "
        f"SMTP sink 127.0.0.1:{smtp_port} -> {outbox}"
    )
    seed.seed_all(
        argparse.Namespace(
            imap_host="127.0.0.1",
            imap_port=ports["imap"],
            password=PASSWORD,
            crm_url=crm_url,
            ca=ca,
        )
    )
    values: dict[str, object] = {
        "STATE_DB": work / "state.db",
        "CRM_URL": crm_url,
        "CRM_CA": ca,
        "IMAP_PORT": ports["imap"],
        "POP3_PORT": ports["pop3"],
        "SMTP_PORT": smtp_port,
    }
    if args.graph:
        values.update(start_graph(stack, work))
    config = write_config(work, values, graph=args.graph)
    router = start_router(config, work)
    stack.callback(_stop, router)
    password = secrets.token_urlsafe(12)
    console_url = stack.enter_context(console(config, work, password))
    log(f"email-router run --config {config}")
    log(f"activities: {crm_url}/_admin/  (CA certificate: {ca})")
    log(f"console:    {console_url}/  (user {CONSOLE_USER}, password {password})")
    log(f"status:     {cli_command('status', '--config', str(config))}")
    log(f"quarantine: {cli_command('quarantine', 'list', '--config', str(config))}")
    log(
        "Ctrl-C (or SIGTERM) stops everything"
        + (f"; stopping after {args.duration:.0f}s" if args.duration else "")
    )
    try:
        complete = watch(
            crm_url, ca, outbox, args.duration, router, early=args.check, graph=args.graph
        )
    except KeyboardInterrupt:
        complete = False
    log("stopping")
    code = _stop(router)
    log(f"email-router run exited with {code}")
    return 1 if args.check and (not complete or code != 0) else 0


def start_graph(stack: contextlib.ExitStack, work: Path) -> dict[str, object]:
    """Start the Graph simulator, seed its mailbox; the values :data:`GRAPH_INSTANCE` needs."""
    graph_url, graph_ca = stack.enter_context(graph_simulator(work))
    count = seed.seed_graph(graph_url, graph_ca)
    log(f"Graph simulator {graph_url} (CA certificate: {graph_ca})")
    log(f"seeded {count} messages for {seed.ORDERS} (Microsoft Graph, instance orders-graph)")
    return {"GRAPH_URL": graph_url, "GRAPH_CA": graph_ca, "GRAPH_MAILBOX": seed.ORDERS}


if __name__ == "__main__":
    sys.exit(main())
