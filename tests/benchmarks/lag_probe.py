"""Probes loaded into the Celery processes of ``bench_scheduling.py`` (not a benchmark itself).

* :class:`ProbeScheduler` - the router's ``ConfigScheduler`` that also records, for every task it
  sends, when the entry was due and when it was sent;
* a ``task_prerun`` handler - records when a worker started each task.

Both write to Redis lists (``BENCH_PROBE_URL``), buffered and flushed at most every 0.5 s so the
probes cost little next to what they measure.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import redis
from celery.signals import task_prerun, worker_process_shutdown

from workers.scheduler import ConfigScheduler

_LOCK = threading.Lock()
_BUFFERS: dict[str, list[str]] = {"beat": [], "start": []}
_FLUSHED = [time.monotonic()]
_CLIENT: list[redis.Redis] = []


def _record(kind: str, row: list[Any], force: bool = False) -> None:
    with _LOCK:
        _BUFFERS[kind].append(json.dumps(row))
        if force or time.monotonic() - _FLUSHED[0] > 0.5:
            flush()


def flush() -> None:
    """Push the buffered rows to Redis (callers hold the lock or are shutting down)."""
    if not _CLIENT:
        _CLIENT.append(redis.Redis.from_url(os.environ["BENCH_PROBE_URL"]))
    pipe = _CLIENT[0].pipeline(transaction=False)
    for kind, rows in _BUFFERS.items():
        if rows:
            pipe.rpush(f"probe:{kind}", *rows)
            rows.clear()
    pipe.execute()
    _FLUSHED[0] = time.monotonic()


class ProbeScheduler(ConfigScheduler):
    """ConfigScheduler that records (task id, entry, due, sent) for every task it sends."""

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        due = (entry.last_run_at + entry.schedule.run_every).timestamp()
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        _record("beat", [result.id, entry.name, due, time.time()])
        return result

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = super().tick(*args, **kwargs)
        if delay > 0:  # idle: nothing left due right now, push what is buffered
            with _LOCK:
                flush()
        return delay


@task_prerun.connect
def _started(task_id: str | None = None, **_: Any) -> None:
    _record("start", [task_id, time.time()])


@worker_process_shutdown.connect
def _flush_at_exit(**_: Any) -> None:
    with _LOCK:
        flush()
