"""A probe loaded into beat and worker processes: when each poll was due, sent and started.

Used by ``tests/e2e/test_dispatch_two_beats.py`` and ``tests/benchmarks/bench_scheduling.py``:

* beat runs :class:`ProbeScheduler` (``-S tests.support.dispatch_probe:ProbeScheduler``, the
  dispatcher) or :class:`ProbeEntryScheduler` (one entry per instance, the baseline); both
  record ``[task id, instance, due, sent, beat pid]`` for every instance they send;
* a worker started with ``-I tests.support.dispatch_probe`` records ``[task id, instance,
  started]`` whenever it starts polling an instance (inside a ``poll_batch`` too).

Rows go to Redis lists ``probe:beat`` and ``probe:start`` at ``DISPATCH_PROBE_URL``, buffered
and flushed at most every 0.5 s, so the probe costs little next to what it measures.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import redis
from celery import current_task
from celery.signals import worker_process_shutdown

from router.models import Direction
from router.state.base import InstancePeek
from router.state.redis import Claim
from workers import tasks
from workers.dispatch import Dispatcher, Message
from workers.scheduler import ConfigScheduler, EntryScheduler

_LOCK = threading.Lock()
_BUFFERS: dict[str, list[str]] = {"beat": [], "start": []}
_FLUSHED = [time.monotonic()]
_CLIENT: list[redis.Redis] = []


def _record(kind: str, row: list[Any]) -> None:
    with _LOCK:
        _BUFFERS[kind].append(json.dumps(row))
        if time.monotonic() - _FLUSHED[0] > 0.5:
            flush()


def flush() -> None:
    """Push the buffered rows to Redis (callers hold the lock or are shutting down)."""
    if not _CLIENT:
        _CLIENT.append(redis.Redis.from_url(os.environ["DISPATCH_PROBE_URL"]))
    pipe = _CLIENT[0].pipeline(transaction=False)
    for kind, rows in _BUFFERS.items():
        if rows:
            pipe.rpush(f"probe:{kind}", *rows)
            rows.clear()
    pipe.execute()
    _FLUSHED[0] = time.monotonic()


class ProbeDispatcher(Dispatcher):
    """The dispatcher, recording each claimed instance with the id of the task it goes in."""

    def plan(self, claim: Claim) -> list[Message]:
        due = dict(claim.due)
        messages = super().plan(claim)
        for message in messages:
            message.options["task_id"] = task_id = str(uuid.uuid4())
            names = message.args[0] if isinstance(message.args[0], list) else message.args
            for name in names:
                _record("beat", [task_id, name, due[name], time.time(), os.getpid()])
        return messages


class ProbeScheduler(ConfigScheduler):
    """ConfigScheduler (the dispatcher) that records every instance it sends."""

    dispatcher_class = ProbeDispatcher

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = super().tick(*args, **kwargs)
        with _LOCK:
            flush()
        return delay


class ProbeEntryScheduler(EntryScheduler):
    """EntryScheduler (one beat entry per instance) that records every task it sends."""

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        due = (entry.last_run_at + entry.schedule.run_every).timestamp()
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if entry.name != "housekeeping":
            _record("beat", [result.id, entry.args[0], due, time.time(), os.getpid()])
        return result

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = super().tick(*args, **kwargs)
        if delay > 0:  # idle: nothing left due right now, push what is buffered
            with _LOCK:
                flush()
        return delay


_run_for = tasks.run_for


def _probed_run_for(
    task: str,
    instance: str,
    direction: Direction,
    body: tasks.Body,
    peek: InstancePeek | None = None,
) -> tasks.Summary | None:
    if task == tasks.poll.name:
        request_id = current_task.request.id if current_task else None
        _record("start", [request_id, instance, time.time()])
    return _run_for(task, instance, direction, body, peek)


def install() -> None:
    """Record in this (worker) process every instance a poll starts on."""
    tasks.run_for = _probed_run_for


@worker_process_shutdown.connect
def _flush_at_exit(**_: Any) -> None:
    with _LOCK:
        flush()


def read(url: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """The recorded rows: (beat rows, start rows)."""
    client = redis.Redis.from_url(url)
    beat = [json.loads(r) for r in client.lrange("probe:beat", 0, -1)]
    start = [json.loads(r) for r in client.lrange("probe:start", 0, -1)]
    return beat, start


def starts_by_instance(starts: list[list[Any]]) -> dict[str, list[float]]:
    """Every start time of each instance, sorted."""
    found: dict[str, list[float]] = defaultdict(list)
    for _, instance, at in starts:
        found[instance].append(at)
    return {name: sorted(times) for name, times in found.items()}


if os.environ.get("DISPATCH_PROBE_URL") and os.environ.get("DISPATCH_PROBE_WORKER"):
    install()
