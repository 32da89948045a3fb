"""Background jobs the console starts for an operator: poll now and Test Access.

Use :class:`JobBoard` from the views: :meth:`JobBoard.claim` reserves a job (at most one of a
kind per instance at a time), :meth:`JobBoard.run` runs its work in a thread (the request
returns at once); the board keeps the last few jobs of each instance with their outcome.

The work itself calls what the runtimes and the CLI call, never a copy:

* :func:`poll_now` runs one cycle through :func:`router.runtime.cycle.execute` - the function
  ``email-router run`` runs in its scheduler threads - so the cycle takes the instance's normal
  lease (it can never overlap a worker or the standalone runtime), records its errors in the
  instance's counters and writes the same progress line;
* :func:`check_access` runs ``email-router test-access`` for the instance's Deployment (token,
  WhoAmI) and for the instance itself (its mailbox login), so the console shows exactly what
  the command prints.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.config import ProviderConfiguration
from router.context import Context
from router.runtime.cycle import execute
from router.runtime.pause import describe
from router.runtime.summary import progress_line

#: Jobs kept per instance for its page.
KEEP = 10
#: Seconds Test Access may take (its own timeouts are shorter; this bounds a hung process).
TEST_ACCESS_TIMEOUT = 120.0
#: What a job's work returns: (succeeded, text to show).
Outcome = tuple[bool, str]


@dataclass
class Job:
    """One job an operator started, and how it ended (``ok`` is None while it runs)."""

    instance: str
    kind: str
    user: str
    started: float
    finished: float | None = None
    ok: bool | None = None
    output: str = ""


class JobBoard:
    """The console's running and recent jobs (shared by the server's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, deque[Job]] = {}

    def claim(self, instance: str, kind: str, user: str) -> Job | None:
        """A new job of ``kind`` for ``instance``; None while one of the same kind still runs."""
        with self._lock:
            jobs = self._jobs.setdefault(instance, deque(maxlen=KEEP))
            if any(j.kind == kind and j.ok is None for j in jobs):
                return None
            job = Job(instance, kind, user, time.time())
            jobs.appendleft(job)
            return job

    def run(self, job: Job, work: Callable[[], Outcome], done: Callable[[Job], None]) -> None:
        """Run ``work`` for a claimed ``job`` in a thread; ``done`` gets the finished job."""
        thread = threading.Thread(
            target=self._run, args=(job, work, done), name=f"console-{job.kind}", daemon=True
        )
        thread.start()

    def _run(self, job: Job, work: Callable[[], Outcome], done: Callable[[Job], None]) -> None:
        try:
            ok, output = work()
        except Exception as exc:  # a bug in the work: show it on the page, keep the server up
            ok, output = False, f"crashed: {describe(exc)}"
        with self._lock:
            job.ok, job.output, job.finished = ok, output, time.time()
        done(job)

    def recent(self, instance: str) -> list[Job]:
        """The instance's jobs, newest first."""
        with self._lock:
            return list(self._jobs.get(instance, ()))

    def running(self) -> bool:
        """True while any job runs."""
        with self._lock:
            return any(j.ok is None for jobs in self._jobs.values() for j in jobs)


def poll_now(ctx: Context, cfg: ProviderConfiguration) -> Outcome:
    """One poll (incoming, with delivery) or send cycle, exactly as ``email-router run`` runs it."""
    result = execute(ctx, cfg)
    if result.error is not None:
        return False, describe(result.error)
    assert result.report is not None  # a cycle that did not raise returned its report
    not_run = result.report.not_run()
    if not_run:  # another holder had the lease: nothing ran
        return False, f"{cfg.name}: did not run ({not_run})"
    line = progress_line(result.report, result.duration)
    return True, line or f"{cfg.name}: nothing to do ({result.duration:.2f}s)"


def check_access(config_path: Path, cfg: ProviderConfiguration) -> Outcome:
    """``email-router test-access`` for the instance's Deployment, then for its mailbox.

    The command runs as a child process: the console sits below the CLI's layer, and the
    operator sees exactly what the command prints.
    """
    runs = [("--deployment", cfg.deployment)] if cfg.deployment else []
    runs.append(("--instance", cfg.name))
    outcomes = [_test_access(config_path, option, value) for option, value in runs]
    return all(ok for ok, _ in outcomes), "\n".join(text for _, text in outcomes)


def _test_access(config_path: Path, option: str, value: str) -> Outcome:
    command = [sys.executable, "-m", "router.cli", "test-access"]
    command += ["--config", str(config_path), option, value]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TEST_ACCESS_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"test-access {option} {value}: no answer within {TEST_ACCESS_TIMEOUT:.0f}s"
    return done.returncode == 0, (done.stdout + done.stderr).strip()
