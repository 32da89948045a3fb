"""Helpers of the incoming-mail process tests: a real poller process against Dovecot + crm-sim.

* :func:`write_config` writes the XML configuration a subprocess reads (secrets come from the
  environment, :func:`router_env`).
* :func:`run_cli` runs ``email-router ...`` in a subprocess and measures its peak RSS (VmHWM).
* :class:`KilledPoller` starts a small driver that polls until the mailbox is drained; the test
  SIGKILLs it at random points.
* :func:`mailbox_ids` / :func:`crm_ids` read what the mail server and the simulator hold.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers.dovecot import PASSWORD, Dovecot
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer

#: Environment variables carrying the secrets of the written configuration.
SECRET_ENV = "ER_TEST_CRM_SECRET"
PASSWORD_ENV = "ER_TEST_MAIL_PASSWORD"
#: Lease TTL of the subprocess pollers (the smallest MaxThreadExecution allowed): a killed
#: poller's lease expires quickly, and it is still far longer than one poll of a few messages.
LEASE_MS = 1000

CONFIG = """\
<?xml version="1.0" encoding="utf-8"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreadExecution>{lease_ms}</MaxThreadExecution>
    <LogLevel>WARNING</LogLevel>
    <StateStore>{state}</StateStore>
  </SystemConfiguration>
  <Deployment Name="sim">
    <Adapter>dataverse</Adapter>
    <CrmServerUrl>{crm_url}</CrmServerUrl>
    <TenantId>{tenant}</TenantId>
    <ClientId>{client_id}</ClientId>
    <ClientSecret Env="{secret_env}"/>
    <Authority>{authority}</Authority>
    <CaBundle>{ca}</CaBundle>
  </Deployment>
  <ProviderConfiguration Name="{name}">
    <ProviderClass>{kind}</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{port}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{user}</EmailUser>
    <EmailPassword Env="{password_env}"/>
    <EmailAddress>{user}</EmailAddress>
    <MaxMessageCount>{max_count}</MaxMessageCount>
    <AfterProcessing>{after}</AfterProcessing>
    <MaxMessageSize>{max_size}</MaxMessageSize>
    <Parameters>{params}
    </Parameters>
  </ProviderConfiguration>
</Configuration>
"""


@dataclass(frozen=True)
class Box:
    """One incoming instance on Dovecot delivering to the simulator, as files on disk."""

    dovecot: Dovecot
    sim: SimulatorServer
    user: str
    config: Path
    state: str
    name: str = "box"


def make_box(
    workdir: Path, dovecot: Dovecot, sim: SimulatorServer, raws: list[bytes], **options: Any
) -> Box:
    """A fresh mailbox holding ``raws``, and the configuration + SQLite state of its instance."""
    user = dovecot.new_user()
    if raws:
        dovecot.append_many(user, raws)
    state = f"sqlite:///{workdir / 'state.db'}"
    config = write_config(
        workdir / "router.xml", dovecot=dovecot, sim=sim, user=user, state=state, **options
    )
    return Box(dovecot, sim, user, config, state)


def write_config(
    path: Path,
    *,
    dovecot: Dovecot,
    sim: SimulatorServer,
    user: str,
    state: str,
    kind: str = "imap",
    after: str = "leave",
    max_count: int = 100,
    max_size: int = 26_214_400,
    port: int | None = None,
    **params: Any,
) -> Path:
    """Write the configuration of instance ``box`` (``kind`` reading ``user``) to ``path``."""
    extra = "".join(f'\n      <Parameter Name="{k}">{v}</Parameter>' for k, v in params.items())
    path.write_text(
        CONFIG.format(
            lease_ms=LEASE_MS,
            state=state,
            crm_url=sim.org_url,
            tenant=TENANT,
            client_id=CLIENT_ID,
            secret_env=SECRET_ENV,
            authority=sim.authority,
            ca=sim.ca_path,
            name="box",
            kind=kind,
            port=port or dovecot.ports[kind],
            user=user,
            password_env=PASSWORD_ENV,
            max_count=max_count,
            after=after,
            max_size=max_size,
            params=extra,
        )
    )
    return path


def router_env() -> dict[str, str]:
    """The subprocess environment: the secrets, and no inherited ROUTER_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update({SECRET_ENV: CLIENT_SECRET, PASSWORD_ENV: PASSWORD, "PYTHONUNBUFFERED": "1"})
    return env


# -- running processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A finished subprocess: exit code, output and peak resident set size."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


#: ``email-router`` with its own peak RSS written at exit. The kernel's VmHWM is the peak of the
#: process's memory after exec; ``ru_maxrss`` (getrusage/wait4) is not usable here because it also
#: counts the forked copy of pytest before exec (hundreds of MB once a test holds a big message).
CLI = """\
import atexit, os, re, sys
def _hwm():
    status = open("/proc/self/status").read()
    with open(os.environ["ER_TEST_HWM_FILE"], "w") as out:
        out.write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(_hwm)
from router.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args: list[str], timeout: float = 60.0) -> Run:
    """Run ``email-router *args`` to completion (killed after ``timeout`` s) and measure it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out, err, hwm = Path(tmp, "out"), Path(tmp, "err"), Path(tmp, "hwm")
        env = {**router_env(), "ER_TEST_HWM_FILE": str(hwm)}
        started = time.monotonic()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", CLI, *args], stdout=stdout, stderr=stderr, env=env
            )
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise AssertionError(f"email-router {' '.join(args)} did not finish") from None
        return Run(
            proc.returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            int(hwm.read_text()) / 1024.0 if hwm.exists() else float("nan"),
            time.monotonic() - started,
        )


#: The killable poller: gets a CRM token, waits until no lease is held (a killed predecessor's
#: lease expires after LEASE_MS), says "go", then polls until a poll lists nothing and nothing
#: is left to deliver, retrying after a retryable error as the runtimes do.
DRIVER = """\
import sys, time
from router.errors import RetryableError
from router.incoming import poll_instance
from router.ledger import HANDLED
from router.models import LedgerState
from router.context import open_context

ctx = open_context(sys.argv[1], state_url=sys.argv[2])
name = sys.argv[3]
ctx.crm(ctx.instance(name)).who_am_i()  # token and connection ready, as in a running worker
while ctx.store.get_lease(name) or ctx.store.get_lease(name + "#deliver"):
    time.sleep(0.02)
print("go", flush=True)
while True:
    try:
        report = poll_instance(ctx, name)
    except RetryableError:  # e.g. LeaseLost on a slow machine: the runtime would just retry
        continue
    if report.skipped:
        time.sleep(0.02)
        continue
    left = ctx.store.list_entries(name, [LedgerState.STAGED, *HANDLED])
    if report.listed == 0 and not left:
        break
ctx.close()
"""


class KilledPoller:
    """A poll loop in a subprocess, started again and again and SIGKILLed at random points."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.kills = 0

    def run_once(self, delay: float, timeout: float = 60.0) -> bool:
        """Start the driver, SIGKILL it ``delay`` s after it started polling; False if it finished
        by itself first (the mailbox is drained)."""
        argv = [sys.executable, "-c", DRIVER, str(self.box.config), self.box.state, self.box.name]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=router_env()
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until "go" or exit (bounded by the lease TTL)
            if line.strip() != b"go":
                raise AssertionError(f"driver failed: {proc.communicate(timeout=10)[1]!r}")
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                self.kills += 1
                return True
            _out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise AssertionError(f"driver exited {proc.returncode}: {err.decode()[-2000:]}")
            return False
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def poll_until_drained(box: Box, max_polls: int = 20) -> list[Run]:
    """``email-router poll box`` until a poll lists nothing; each must exit 0."""
    runs = []
    for _ in range(max_polls):
        run = run_cli(["poll", box.name, "--config", str(box.config), "--state", box.state])
        assert run.returncode == 0, run.stdout + run.stderr
        runs.append(run)
        if "skipped" in run.stdout:
            time.sleep(0.2)
        elif re.search(r": listed 0,", run.stdout):
            return runs
    raise AssertionError(f"not drained after {max_polls} polls: {runs[-1].stdout}")


# -- what the servers hold ------------------------------------------------------------------------

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def mailbox_ids(dovecot: Dovecot, user: str, folder: str = "INBOX") -> dict[str, set[str]]:
    """Message-IDs in ``folder`` by state: ``present`` (not flagged \\Deleted) and ``deleted``."""
    found: dict[str, set[str]] = {"present": set(), "deleted": set()}
    with dovecot.imap(user) as client:
        if not client.folder_exists(folder):
            return found
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        if not uids:
            return found
        rows = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        for row in rows.values():
            header = bytes(row[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"])
            match = _MESSAGE_ID.search(header)
            assert match, header
            deleted = b"\\Deleted" in row[b"FLAGS"]
            found["deleted" if deleted else "present"].add(match.group(1).decode())
    return found


def message_id_of(raw: bytes) -> str:
    match = _MESSAGE_ID.search(raw)
    assert match
    return match.group(1).decode()


def crm_ids(sim: SimulatorServer) -> list[str]:
    """The Message-ID of every activity of the simulator's organisation (one per activity)."""
    return [str(row["messageid"]) for row in sim.emails()]


def deliver_calls(sim: SimulatorServer) -> int:
    """How many DeliverIncomingEmail requests (direct or inside a $batch) the simulator logged."""
    return sum(str(row["path"]).endswith("DeliverIncomingEmail") for row in sim.request_log())
