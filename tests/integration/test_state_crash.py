"""State survives crashes: SQLite under kill -9, concurrent processes on one file, Redis restarts.

The SQLite writer runs in a subprocess (stage, transitions, lease renewals, cursor writes in a
tight loop) and is SIGKILLed at random moments; after each kill the database must open cleanly and
hold exactly what the writer had committed.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from router.errors import StateUnavailable
from router.models import LedgerState
from router.state.sqlite import SqliteStore
from tests.servers.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
INST = "crash:inbox"
KILLS = 12

WRITER = textwrap.dedent(
    """
    import sys, time
    from router.models import LedgerState as S
    from router.state.sqlite import SqliteStore

    store, inst = SqliteStore(sys.argv[1]), sys.argv[2]
    deadline, lease = time.monotonic() + 20, None
    while lease is None and time.monotonic() < deadline:
        lease = store.acquire_lease(inst, "writer", 0.3) or time.sleep(0.02)
    n = (store.get_cursor(inst) or {"next": 0})["next"]
    print("start", n, flush=True)
    while lease is not None:
        key = f"m{n}"
        store.stage(inst, key, b"x" * (n % 977) + b"payload", message_id=f"<{n}@x>")
        store.transition(inst, key, [S.STAGED], S.DELIVERED, activity_id=f"a{n}")
        if n % 3 == 0:
            store.transition(inst, key, [S.DELIVERED], S.DONE, extra={"n": n})
        if n % 5 == 0:
            store.drop_raw(inst, key)
        lease = store.renew_lease(lease, 0.3)
        if lease is None:
            break
        store.set_cursor(lease, {"next": n + 1, "pad": "y" * (n % 500)})
        print(n + 1, flush=True)
        n += 1
    """
)


def _run_writer_until_killed(db: Path, rng: random.Random) -> tuple[int, int]:
    """Start the writer, SIGKILL it after a random moment; return (start, last reported)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), INST],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first and first[0] == b"start", "writer did not start"
        time.sleep(rng.uniform(0.02, 0.35))
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    reported = [int(line) for line in out.split() if line.isdigit()]
    start = int(first[1])
    return start, max(reported, default=start)


def _check_database(db: Path, committed: int) -> int:
    """Integrity, cursor and ledger agree with what the writer reported; return the cursor."""
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = SqliteStore(db)
    try:
        cursor = store.get_cursor(INST)
        assert cursor is not None and set(cursor) == {"next", "pad"}
        nxt = cursor["next"]
        # the kill may land between the cursor commit and the print, never before the commit
        assert nxt in (committed, committed + 1)
        _check_ledger(store, nxt)
        return int(nxt)
    finally:
        store.close()


def _check_ledger(store: SqliteStore, nxt: int) -> None:
    entries = store.list_entries(INST)
    # m<next> may be staged (the kill came before its cursor write), nothing beyond it
    assert [e.key for e in entries[:nxt]] == [f"m{n}" for n in range(nxt)]
    assert [e.key for e in entries[nxt:]] in ([], [f"m{nxt}"])
    assert sum(store.count_entries(INST).values()) == len(entries)
    for n, entry in enumerate(entries[:nxt]):
        assert entry.state == (LedgerState.DONE if n % 3 == 0 else LedgerState.DELIVERED)
        assert (entry.activity_id, entry.message_id) == (f"a{n}", f"<{n}@x>")
        expected_raw = None if n % 5 == 0 else b"x" * (n % 977) + b"payload"
        assert store.get_raw(INST, entry.key) == expected_raw


def test_sqlite_store_survives_kill_9_at_random_moments(tmp_path: Path) -> None:
    db, rng = tmp_path / "state.db", random.Random(os.getpid())
    cursor = 0
    for _ in range(KILLS):
        start, reported = _run_writer_until_killed(db, rng)
        assert start == cursor, "a restarted writer resumes exactly at the durable cursor"
        cursor = _check_database(db, reported)
    assert cursor > KILLS, "the writer made progress between kills"


RACER = textwrap.dedent(
    """
    import sys, time
    from router.models import LedgerState as S
    from router.state.sqlite import SqliteStore

    store, me, at = SqliteStore(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    time.sleep(max(0.0, at - time.time()))
    won = [k for k in range(60)
           if store.transition("race", f"k{k}", [S.STAGED], S.DELIVERED, activity_id=me)]
    print(" ".join(map(str, won)), flush=True)
    """
)


def test_processes_racing_on_one_sqlite_file_each_transition_wins_once(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    for k in range(60):
        store.stage("race", f"k{k}", b"x")
    at = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(db), f"p{i}", str(at)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        for i in range(4)
    ]
    wins: dict[int, str] = {}
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        for k in map(int, out.split()):
            assert k not in wins, f"k{k} was won twice"
            wins[k] = f"p{i}"
    assert sorted(wins) == list(range(60))
    for k, winner in wins.items():
        entry = store.get_entry("race", f"k{k}")
        assert entry is not None and entry.activity_id == winner
    store.close()


@pytest.mark.redis
def test_redis_store_keeps_state_across_a_server_crash_and_reconnects(
    private_redis: PrivateRedis,
) -> None:
    from router.state.redis import RedisStore

    store = RedisStore.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    lease = store.acquire_lease(INST, "worker", 120)
    assert lease is not None
    store.set_cursor(lease, {"uid": 41})
    store.stage(INST, "7:41", b"raw bytes", message_id="<41@x>")
    store.transition(INST, "7:41", [LedgerState.STAGED], LedgerState.DELIVERED)
    store.record_poll(INST, processed=1)

    assert private_redis.proc is not None
    private_redis.proc.kill()  # kill -9: only what AOF (fsync always) holds survives
    private_redis.proc.wait(10)
    private_redis.proc = None
    for during_outage in (
        lambda: store.ping(),
        lambda: store.get_cursor(INST),
        lambda: store.set_cursor(lease, {"uid": 42}),
        lambda: store.stage(INST, "7:42", b"x"),
        lambda: store.list_entries(INST),
    ):
        with pytest.raises(StateUnavailable):
            during_outage()

    private_redis.start()
    assert store.get_cursor(INST) == {"uid": 41}
    entry = store.get_entry(INST, "7:41")
    assert entry is not None and entry.state == LedgerState.DELIVERED
    assert store.get_raw(INST, "7:41") == b"raw bytes"
    assert store.get_stats(INST).processed == 1
    info = store.get_lease(INST)
    assert info is not None and info.token == lease.token
    store.set_cursor(lease, {"uid": 42})  # scripts are loaded again after the restart
    assert store.get_cursor(INST) == {"uid": 42}
    assert store.acquire_lease(INST, "other", 30) is None
    store.close()
