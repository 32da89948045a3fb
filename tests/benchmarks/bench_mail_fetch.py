"""Benchmark: downloading a mailbox backlog with the imap and pop3 providers (private Dovecot).

Run: ``.venv/bin/python -m tests.benchmarks.bench_mail_fetch [--messages 2000] [--size 3000]``
(needs the dovecot binaries; starts and stops its own server).

Baseline, measured in the same run: one ``UID FETCH`` per message (``fetch_batch=1``, what a
naive provider does). Rows: IMAP with batches of 10 / 50 / 200, and POP3 with one RETR per round
trip and with 50 pipelined RETRs (RFC 2449 PIPELINING). Each row lists, fetches and advances
over the whole backlog in MaxMessageCount-sized polls, like the poll cycle does. The second table
repeats it through a proxy adding ``--rtt-ms`` of round trip, closer to a mail server across a
network.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from typing import Any

from router.config import ProviderConfiguration
from router.providers.base import IncomingProvider, InstanceState
from router.providers.registry import resolve
from tests.servers.dovecot import Dovecot, dovecot_installed, message, running_dovecot

POLL_LIMIT = 500


def drain(cfg: ProviderConfiguration) -> int:
    """List + fetch + advance until nothing is new; return the number of bytes fetched."""
    cursor, total = None, 0
    provider = resolve(cfg.provider_class)(cfg)
    assert isinstance(provider, IncomingProvider)
    provider.open()
    try:
        while True:
            state = InstanceState(cursor, {})
            refs = provider.list_new(state, POLL_LIMIT)
            if not refs:
                return total
            total += sum(len(m.raw) for m in provider.fetch_many(refs))
            cursor = provider.advance(state, refs)
    finally:
        provider.close()


def measure(label: str, cfg: ProviderConfiguration, count: int) -> float:
    started = time.perf_counter()
    fetched = drain(cfg)
    elapsed = time.perf_counter() - started
    print(f"{label:<36} {elapsed:8.3f} s {count / elapsed:10.0f} msg/s {fetched / 1e6:8.1f} MB")
    return elapsed


def table(server: Dovecot, user: str, count: int, ports: dict[str, int]) -> None:
    """One row per variant; ``ports`` may point at a latency proxy instead of Dovecot."""
    imap: dict[str, Any] = {"user": user, "port": ports["imap"]}
    print(f"{'variant':<36} {'time':>10} {'rate':>16} {'data':>11}")
    base = measure(
        "imap fetch_batch=1 (base)", server.provider_config(**imap, fetch_batch=1), count
    )
    ratios = []
    for batch in (10, 50, 200):
        cfg = server.provider_config(**imap, fetch_batch=batch)
        ratios.append((f"batch {batch}", base / measure(f"imap fetch_batch={batch}", cfg, count)))
    for batch in (1, 50):
        pop3 = server.provider_config(user, "pop3", port=ports["pop3"], fetch_batch=batch)
        label = f"pop3 fetch_batch={batch}" + (" (no pipelining)" if batch == 1 else "")
        ratios.append((f"pop3 {batch}", base / measure(label, pop3, count)))
    print("vs baseline: " + ", ".join(f"{name} {ratio:.1f}x" for name, ratio in ratios) + "\n")


def fill(server: Dovecot, count: int, size: int) -> str:
    user = server.new_user()
    for start in range(0, count, 500):
        numbers = range(start, min(count, start + 500))
        server.append_many(user, [message(i, size=size) for i in numbers])
    return user


def run(server: Dovecot, count: int, size: int, rtt_ms: float) -> None:
    print(f"loopback, {count} messages of ~{size} bytes, polls of {POLL_LIMIT}")
    table(server, fill(server, count, size), count, server.ports)
    small = min(count, 300)
    print(f"{rtt_ms:g} ms round trip (latency proxy), {small} messages")
    user = fill(server, small, size)
    proxies = {k: LatencyProxy(server.ports[k], rtt_ms / 2000) for k in ("imap", "pop3")}
    try:
        table(server, user, small, {k: p.port for k, p in proxies.items()})
    finally:
        for proxy in proxies.values():
            proxy.close()


class LatencyProxy:
    """Forwards 127.0.0.1:``port`` and delays every chunk by ``delay`` seconds each way."""

    def __init__(self, target: int, delay: float) -> None:
        self.target, self.delay = target, delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                time.sleep(self.delay)
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--rtt-ms", type=float, default=10.0)
    args = parser.parse_args()
    if not dovecot_installed():
        print("dovecot is not installed", file=sys.stderr)
        return 2
    with running_dovecot() as server:
        run(server, args.messages, args.size, args.rtt_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
