"""Shared harness of the performance benchmarks (``tests/benchmarks/bench_*.py``).

* output: :func:`print_table` (one row per variant, a ratio column against the baseline measured
  in the same run) and :func:`write_json` (``benchmark-results/<name>.json`` plus a timestamped
  copy, so a run can be compared with the last one);
* measuring: :class:`Stopwatch`, :func:`percentile`, :class:`ProcessSampler` (peak RSS and CPU
  seconds of a process tree, sampled with psutil), :func:`profiled` (pyinstrument, ``--profile``);
* the world: :func:`mail_mix` (realistic sizes: mostly 5-50 KB, about 1 % with 1-5 MB
  attachments, plus the ``tests/corpus`` messages), :func:`private_redis`,
  :func:`router_xml` (a router configuration with IMAP instances on a Dovecot and a Deployment
  on the Dataverse simulator), :func:`crm_count` (activities in one simulator organisation).

Everything here runs without pytest's fixtures; servers come from ``tests/servers`` helpers
that are usable from scripts (``running_dovecot``, ``start_simulator``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402

from tests.servers.common import free_port, port_open, wait_for  # noqa: E402
from tests.support.corpus import CORPUS  # noqa: E402

RESULTS = ROOT / "benchmark-results"
PASSWORD_VAR = "BENCH_IMAP_PASSWORD"


# -- command line and output ----------------------------------------------------------------------
def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has (``--json``, ``--profile``)."""
    first = (doc or "").strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(description=first)
    p.add_argument("--json", type=Path, help="write the results here (default benchmark-results/)")
    p.add_argument("--profile", action="store_true", help="pyinstrument profile of the router run")
    p.add_argument("--seed", type=int, default=7, help="random seed of the generated mail")
    return p


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned text table with the given columns."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(columns, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_json(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``payload`` (plus machine facts) as JSON; return where it went."""
    doc = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    target = path or RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=str)
    target.write_text(text)
    if path is None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        (RESULTS / "history").mkdir(exist_ok=True)
        (RESULTS / "history" / f"{name}-{stamp}.json").write_text(text)
    print(f"\nresults written to {target}")
    return target


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": sys.version.split()[0]}


# -- measuring ------------------------------------------------------------------------------------
class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.elapsed`` (seconds, perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class ProcessSampler:
    """Samples a process and its children: peak RSS (sum over the tree) and CPU seconds.

    Use as a context manager around the work; ``pid`` defaults to this process.
    """

    pid: int = field(default_factory=os.getpid)
    interval: float = 0.1
    peak_rss: int = 0
    peak_rss_single: int = 0
    cpu_seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _cpu: dict[int, float] = field(default_factory=dict)

    def __enter__(self) -> ProcessSampler:
        self._base = self._tree_cpu()
        self._cpu.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(5)
        self.cpu_seconds = sum(self._cpu.values()) - self._base

    def _procs(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _tree_cpu(self) -> float:
        total = 0.0
        for proc in self._procs():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def sample(self) -> None:
        rss = 0
        for proc in self._procs():
            with contextlib.suppress(psutil.Error):
                one = proc.memory_info().rss
                rss += one
                self.peak_rss_single = max(self.peak_rss_single, one)
                times = proc.cpu_times()
                self._cpu[proc.pid] = times.user + times.system
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


@contextlib.contextmanager
def profiled(enabled: bool, name: str) -> Iterator[None]:
    """Profile the block with pyinstrument when ``enabled``; text + HTML in benchmark-results/."""
    if not enabled:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.002)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.profile.txt").write_text(profiler.output_text(show_all=False))
        (RESULTS / f"{name}.profile.html").write_text(profiler.output_html())
        print(f"profile written to {RESULTS / (name + '.profile.txt')}")


# -- mail -----------------------------------------------------------------------------------------
WORDS = [
    "order",
    "invoice",
    "meeting",
    "quarter",
    "update",
    "customer",
    "please",
    "attached",
    "regards",
    "thanks",
    "delivery",
    "schedule",
    "contract",
    "review",
    "support",
    "ticket",
    "account",
    "renewal",
    "proposal",
    "pricing",
    "team",
    "follow-up",
]


def corpus_messages(limit: int | None = None) -> list[bytes]:
    """The real-world messages of ``tests/corpus`` (sorted by path), at most ``limit``."""
    paths = sorted(CORPUS.rglob("*.eml")) if CORPUS.exists() else []
    return [p.read_bytes() for p in paths[:limit]]


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines)


def generated_message(n: int, size: int, attachment: int, rng: random.Random) -> bytes:
    """One realistic message: text + HTML alternative of ~``size`` bytes, maybe an attachment."""
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n % 97}@example.org>"
    msg["To"] = "sales@example.com"
    msg["Subject"] = f"Re: order {n} - {rng.choice(WORDS)} {rng.choice(WORDS)}"
    msg["Date"] = format_datetime(_date(n))
    msg["Message-ID"] = make_msgid(f"b{n}", "bench.example.org")
    text = _text(rng, max(200, size // 2))
    msg.set_content(text)
    msg.add_alternative(
        f"<html><body><p>{text.replace(chr(10), '</p><p>')}</p></body></html>", subtype="html"
    )
    if attachment:
        msg.add_attachment(
            rng.randbytes(attachment),
            maintype="application",
            subtype="pdf",
            filename=f"report-{n}.pdf",
        )
    return msg.as_bytes()


def _date(n: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(1_760_000_000 + n * 37, UTC)


def mail_mix(
    count: int, seed: int = 7, large_share: float = 0.01, corpus: bool = True
) -> list[bytes]:
    """``count`` messages: the corpus first (when asked), then generated ones.

    Generated sizes: 5-50 KB of text (log-uniform), ``large_share`` of them with a 1-5 MB
    attachment.
    """
    rng = random.Random(seed)
    out = corpus_messages(count // 10) if corpus else []  # at most a tenth from the corpus
    for n in range(len(out), count):
        size = int(5_000 * 10 ** rng.random())  # 5 KB .. 50 KB, log-uniform
        attachment = rng.randint(1_000_000, 5_000_000) if rng.random() < large_share else 0
        out.append(generated_message(n, size, attachment, rng))
    rng.shuffle(out)
    return out


def mix_summary(raws: Sequence[bytes]) -> dict[str, Any]:
    sizes = [len(r) for r in raws]
    return {
        "messages": len(raws),
        "bytes": sum(sizes),
        "median_bytes": percentile(sizes, 50),
        "over_1mb": sum(1 for s in sizes if s > 1_000_000),
    }


# -- servers --------------------------------------------------------------------------------------
@contextlib.contextmanager
def private_redis(workdir: Path, appendonly: bool = True) -> Iterator[str]:
    """A redis-server of our own (AOF everysec, like production); yields its URL."""
    port = free_port()
    args = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for(lambda: port_open(port), 10):
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def fill_mailboxes(dovecot: Any, users: Sequence[str], raws: Sequence[bytes]) -> None:
    """APPEND ``raws`` round-robin into ``users``' INBOXes (one connection per mailbox)."""
    for i, user in enumerate(users):
        mine = raws[i :: len(users)]
        for start in range(0, len(mine), 200):
            dovecot.append_many(user, mine[start : start + 200])


@dataclass
class Mailbox:
    """One incoming instance of a benchmark configuration."""

    name: str
    user: str
    polling_ms: int = 1000
    max_count: int = 500
    provider_class: str = "imap"
    params: dict[str, str] = field(default_factory=dict)


def router_xml(
    mailboxes: Iterable[Mailbox],
    *,
    imap_port: int,
    state_url: str,
    deployment: str,
    max_threads: int = 10,
    scheduling_ms: int = 200,
    refresh_ms: int = 60_000,
    log_level: str = "WARNING",
) -> str:
    """A router configuration: one IMAP instance per mailbox, every kind delivered."""
    blocks = "".join(_instance_xml(m, imap_port) for m in mailboxes)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Configuration>
  <SystemConfiguration>
    <MaxThreads>{max_threads}</MaxThreads>
    <MaxThreadExecution>600000</MaxThreadExecution>
    <SchedulingPeriod>{scheduling_ms}</SchedulingPeriod>
    <ConfigRefreshPeriod>{refresh_ms}</ConfigRefreshPeriod>
    <LogLevel>{log_level}</LogLevel>
    <StateStore>{state_url}</StateStore>
  </SystemConfiguration>
{deployment}{blocks}
</Configuration>
"""


def _instance_xml(m: Mailbox, imap_port: int) -> str:
    params = "".join(f'<Parameter Name="{k}">{v}</Parameter>' for k, v in m.params.items())
    return f"""
  <ProviderConfiguration Name="{m.name}">
    <ProviderClass>{m.provider_class}</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>127.0.0.1</EmailServer>
    <EmailPort>{imap_port}</EmailPort>
    <EmailSecurity>none</EmailSecurity>
    <EmailUser>{m.user}</EmailUser>
    <EmailPassword Env="{PASSWORD_VAR}"/>
    <EmailAddress>{m.user}</EmailAddress>
    <PollingPeriod>{m.polling_ms}</PollingPeriod>
    <MaxMessageCount>{m.max_count}</MaxMessageCount>
    <AfterProcessing>leave</AfterProcessing>
    <AutoReplyPolicy>deliver</AutoReplyPolicy>
    <BouncePolicy>deliver</BouncePolicy>
    <ReadReceiptPolicy>deliver</ReadReceiptPolicy>
    <FeedbackReportPolicy>deliver</FeedbackReportPolicy>
    <Parameters>{params}</Parameters>
  </ProviderConfiguration>"""


def sim_deployment_xml(sim: Any, adapter: str = "dataverse") -> str:
    """The ``<Deployment Name="sim">`` of a simulator organisation."""
    from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT

    return f"""  <Deployment Name="sim">
    <Adapter>{adapter}</Adapter>
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <TenantId>{TENANT}</TenantId>
    <ClientId>{CLIENT_ID}</ClientId>
    <ClientSecret>{CLIENT_SECRET}</ClientSecret>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{sim.ca_path}</CaBundle>
  </Deployment>"""


def crm_activities(sim: Any, select: str = "activityid") -> list[dict[str, Any]]:
    """Incoming email activities of the simulator organisation ``sim.org`` (Web API query)."""
    response = requests.get(
        f"{sim.api_url}emails",
        verify=str(sim.ca_path),
        timeout=120,
        params={"$select": select, "$filter": "directioncode eq false", "$top": "1000000"},
        headers={
            "Authorization": f"Bearer {sim.token()}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        },
    )
    if not response.ok:
        raise RuntimeError(f"simulator query failed: {response.status_code} {response.text[:300]}")
    rows: list[dict[str, Any]] = response.json()["value"]
    return rows


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def env_with_password(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment router processes of a benchmark run with (password, PYTHONPATH)."""
    from tests.servers.dovecot import PASSWORD

    env = {**os.environ, PASSWORD_VAR: PASSWORD, "PYTHONPATH": str(ROOT)}
    env.update(extra or {})
    return env


# -- profiles of subprocesses ---------------------------------------------------------------------
@contextlib.contextmanager
def spying(pid: int, name: str, enabled: bool) -> Iterator[None]:
    """Sample process ``pid`` (all threads, children too) with py-spy while the block runs.

    Writes ``benchmark-results/<name>.pyspy`` (collapsed stacks) and prints the functions with
    the most samples (self and inclusive).
    """
    if not enabled:
        yield
        return
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.pyspy"
    spy = Path(sys.executable).parent / "py-spy"
    args = [
        str(spy),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        "100",
        "--format",
        "raw",
        "-o",
        str(out),
        "--nonblocking",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it has
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if out.exists():
            print_hot_spots(out)


def hot_spots(
    collapsed: Path, top: int = 20
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(self, inclusive, total) sample counts per function of a py-spy collapsed-stack file."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count
    by_count = lambda d: sorted(d.items(), key=lambda kv: -kv[1])[:top]  # noqa: E731
    return by_count(own), by_count(incl), total


def print_hot_spots(collapsed: Path, top: int = 20) -> None:
    own, incl, total = hot_spots(collapsed, top)
    if not total:
        print(f"(no samples in {collapsed})")
        return
    print(f"\nprofile {collapsed.name}: {total} samples (CPU, all threads)")
    print("  self%  function")
    for frame, count in own:
        print(f"  {100 * count / total:5.1f}  {frame[:110]}")
    print("  incl%  function")
    for frame, count in incl[:top]:
        print(f"  {100 * count / total:5.1f}  {frame[:110]}")
