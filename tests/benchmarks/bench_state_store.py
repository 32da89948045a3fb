"""Benchmark of the state stores: per-operation throughput, a big backlog, many idle instances.

Run: ``.venv/bin/python tests/benchmarks/bench_state_store.py [--backlog 5000] [--instances 10000]
[--redis redis://127.0.0.1:6379/15]``. The in-process MemoryStore is the baseline measured in the
same run; the table shows every backend's rate and its ratio to that baseline. Redis keys use a
unique prefix and are deleted (SCAN) afterwards; SQLite files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.models import LedgerState
from router.state.base import StateStore
from router.state.memory import MemoryStore
from router.state.redis import RedisStore
from router.state.sqlite import SqliteStore
from tests.contract.state_helpers import delete_prefix, redis_client

S = LedgerState
RAW = b"x" * 4096


def rate(n: int, fn: Callable[[int], object]) -> float:
    """Operations per second of ``fn(i)`` for i in range(n)."""
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def run_backend(store: StateStore, backlog: int, instances: int) -> dict[str, float]:
    inst = "bench:inbox"
    lease = store.acquire_lease(inst, "bench", 600)
    assert lease is not None
    results = {
        "stage/s": rate(backlog, lambda i: store.stage(inst, f"7:{i}", RAW, message_id=f"<{i}@b>")),
        "set_cursor/s": rate(2000, lambda i: store.set_cursor(lease, {"v": 7, "uid": i})),
        "get_entry/s": rate(2000, lambda i: store.get_entry(inst, f"7:{i % backlog}")),
    }
    start = time.perf_counter()
    staged = store.list_entries(inst, [S.STAGED], limit=100)
    full = store.list_entries(inst)
    counts = store.count_entries(inst)
    results["list+count ms"] = (time.perf_counter() - start) * 1000
    assert len(staged) == 100 and len(full) == backlog and counts == {S.STAGED: backlog}
    results["transition/s"] = rate(
        backlog,
        lambda i: store.transition(inst, f"7:{i}", [S.STAGED], S.DELIVERED, activity_id="a"),
    )
    store.stage(inst, "new", RAW)  # one fresh message behind a long history
    start = time.perf_counter()
    for _ in range(200):
        assert [e.key for e in store.list_entries(inst, [S.STAGED], limit=1)] == ["new"]
    results["oldest-staged us"] = (time.perf_counter() - start) / 200 * 1e6
    results["idle inst/s"] = rate(instances, lambda i: idle_instance(store, f"mbx-{i}"))
    return results


def idle_instance(store: StateStore, name: str) -> None:
    """What one quiet mailbox costs per poll: lease, cursor, counters, release."""
    lease = store.acquire_lease(name, "host:1234:5678", 60)
    assert lease is not None
    store.set_cursor(lease, {"uidvalidity": 1700000000, "uid": 123456})
    store.record_poll(name, processed=0)
    store.release_lease(lease)


def redis_bytes_per_idle_instance(url: str, store: RedisStore, sample: int) -> float:
    client = redis_client(url)
    names = [f"mbx-{i}" for i in range(sample)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        k = store.keys
        for key in (k.token(name), k.cursor(name), k.stats(name), k.lease(name)):
            pipe.memory_usage(key)
    total = sum(int(v or 0) for v in pipe.execute())
    members = int(client.memory_usage(store.keys.instances()) or 0) / max(
        1, client.scard(store.keys.instances())
    )
    client.close()
    return total / sample + members


@contextmanager
def stores(args: argparse.Namespace) -> Iterator[list[tuple[str, StateStore]]]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        opened: list[tuple[str, StateStore]] = [
            ("memory (baseline)", MemoryStore()),
            ("sqlite FULL", SqliteStore(Path(tmp) / "full.db")),
            ("sqlite NORMAL", SqliteStore(Path(tmp) / "normal.db", synchronous="NORMAL")),
        ]
        redis_store = RedisStore.from_url(args.redis, prefix=prefix) if args.redis else None
        if redis_store is not None:
            opened.append(("redis", redis_store))
        try:
            yield opened
        finally:
            for _, store in opened:
                store.close()
            if redis_store is not None:
                delete_prefix(args.redis, redis_store.keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="'' to skip")
    args = parser.parse_args()
    with stores(args) as opened:
        table = [(name, run_backend(store, args.backlog, args.instances)) for name, store in opened]
        extra = ""
        for _, store in opened:
            if isinstance(store, RedisStore):
                per = redis_bytes_per_idle_instance(args.redis, store, min(500, args.instances))
                extra = f"Redis memory per idle instance: {per:.0f} bytes"
    print_table(table, args)
    if extra:
        print(extra)


def print_table(table: list[tuple[str, dict[str, float]]], args: argparse.Namespace) -> None:
    base = table[0][1]
    cols = list(base)
    print(f"backlog={args.backlog} instances={args.instances}; value (ratio to memory baseline)")
    print(f"{'backend':<18}" + "".join(f"{c:>22}" for c in cols))
    for name, res in table:
        cells = "".join(f"{res[c]:>12.0f} ({res[c] / base[c]:>6.2f}x)" for c in cols)
        print(f"{name:<18}{cells}")


if __name__ == "__main__":
    main()
