"""Real Celery processes for end-to-end tests: workers, beat and Flower as subprocesses.

The ``celery_procs`` fixture gives a :class:`CeleryProcs` bound to a test's temp dir and
environment (``ROUTER_CONFIG``, ``ROUTER_BROKER_URL``, ``ROUTER_STATE_URL``, a unique
``ROUTER_KEY_PREFIX``). Each process runs in its own session, so :meth:`CeleryProcs.kill`
SIGKILLs the whole process group at once (main process and pool children: a machine dying), and
teardown kills whatever is still running. Every wait is bounded; logs go to files in the temp
dir and their tails are attached to failures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.common import wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    """One started process (group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    args: tuple[str, ...] = ()
    ready_text: str = ""
    stopped: bool = False  # killed or stopped on purpose by the test

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class CeleryProcs:
    """Starts and kills ``celery -A workers`` processes for one test."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: list[Proc] = []

    def _start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.{len(self.procs)}.log"
        env = {**os.environ, **self.env, **(extra_env or {}), "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes the children too
            )
        proc = Proc(name, popen, log, tuple(args))
        self.procs.append(proc)
        return proc

    def worker(
        self, name: str, concurrency: int = 2, queues: str = "incoming,outgoing,crm"
    ) -> Proc:
        """A prefork worker consuming ``queues``; returns once it is ready."""
        args = ["worker", "-n", f"{name}@%h", "-c", str(concurrency), "-Q", queues]
        args += ["--without-gossip", "--without-mingle", "-l", "INFO"]
        proc = self._start(name, args)
        proc.ready_text = " ready."
        self.wait_log(proc, proc.ready_text, 60)
        return proc

    def beat(self, name: str = "beat") -> Proc:
        """Plain ``celery -A workers beat``: the app makes ConfigScheduler the default."""
        proc = self._start(name, ["beat", "-l", "INFO"])
        proc.ready_text = "beat: Starting"
        self.wait_log(proc, proc.ready_text, 60)
        return proc

    def flower(self, port: int, basic_auth: str | None, address: str | None = "127.0.0.1") -> Proc:
        """Flower through the launcher that insists on credentials (``address`` None: its own
        default)."""
        env = {"ROUTER_FLOWER_BASIC_AUTH": basic_auth} if basic_auth else {}
        log = self.workdir / f"flower.{len(self.procs)}.log"
        args = [f"--port={port}"] + ([f"--address={address}"] if address is not None else [])
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "workers.flower", *args],
                cwd=ROOT,
                env={**os.environ, **self.env, **env, "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc("flower", popen, log)
        self.procs.append(proc)
        return proc

    def wait_log(self, proc: Proc, text: str, timeout: float) -> None:
        if not wait_for(lambda: text in proc.log_text() or not proc.alive, timeout, 0.1):
            raise AssertionError(f"{proc.name}: no {text!r} after {timeout}s:\n{proc.tail()}")
        if text not in proc.log_text():
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")

    def kill(self, proc: Proc) -> None:
        """SIGKILL the process and its pool children; wait until they are gone."""
        proc.stopped = True
        _killpg(proc.popen)

    def restart_dead(self) -> list[str]:
        """Start again every worker/beat that exited by itself, as systemd or Kubernetes would.

        Returns the names restarted (the processes that died).
        """
        dead = [p for p in self.procs if p.args and not p.stopped and not p.alive]
        for proc in dead:
            proc.stopped = True  # replaced by the new one
            fresh = self._start(proc.name, list(proc.args))
            fresh.ready_text = proc.ready_text
            self.wait_log(fresh, fresh.ready_text, 60)
        return [p.name for p in dead]

    def stop(self, proc: Proc, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), SIGKILL after ``timeout`` seconds."""
        proc.stopped = True
        if proc.alive:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout)
        _killpg(proc.popen)

    def close(self) -> None:
        for proc in self.procs:
            _killpg(proc.popen)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log.name})\n{p.tail()}" for p in self.procs)


def _killpg(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # not reaped in time: nothing to do
        popen.wait(15)


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, procs: CeleryProcs | None = None
) -> None:
    """Wait for ``check()`` to be true or fail with ``what`` and the processes' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    if check():
        return
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}\n{procs.logs() if procs else ''}"
    )


@pytest.fixture
def celery_procs(tmp_path: Path) -> Iterator[CeleryProcs]:
    """Processes for this test; ``env`` is filled in by the test before starting any."""
    procs = CeleryProcs(tmp_path, {"ROUTER_KEY_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}"})
    try:
        yield procs
    finally:
        procs.close()
