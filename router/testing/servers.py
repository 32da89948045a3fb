"""Helpers for tests that need a real server: free ports, bounded waits, skip-or-fail.

Use :func:`require` wherever a test needs a server that may be missing: the test is skipped
on a developer machine and fails under ``CI=true``, so a CI run never passes by skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

#: True under ``CI=1|true|yes``: a missing server then fails the test instead of skipping it.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the test locally when a server is missing; fail it under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required server missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Call ``check`` until it returns True or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def https_test_server(
    tool: str, module: str, workdir: Path, args: Sequence[str]
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Run ``python -m module`` (``crm-sim``, ``graph-sim``) on a free port until the block ends.

    Yields the process, its port and the CA file it wrote (``<workdir>/<tool>-ca.pem``); its
    output goes to ``<workdir>/<tool>.log``, quoted when it does not start within 20 s.
    """
    port, ca_path, log_path = free_port(), workdir / f"{tool}-ca.pem", workdir / f"{tool}.log"
    command = [sys.executable, "-m", module, "--port", str(port), "--ca-out", str(ca_path)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--exit-with-parent", *args], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            if not wait_for(lambda: port_open(port) and ca_path.exists(), timeout=20):
                raise RuntimeError(f"{tool} did not start: {log_path.read_text()}")
            yield proc, port, ca_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
