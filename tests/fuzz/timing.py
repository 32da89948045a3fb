"""CPU-time measurements for the bounds tests, robust to a loaded machine and to a stuck parser.

* :func:`best_cpu` - the best of N runs in CPU seconds of this process (``time.process_time``):
  other processes on the machine do not count, and the best run drops GC pauses and hiccups.
* :func:`bounded_cpu` - the same in a forked child with a wall-clock deadline: a parser that
  went quadratic (or hangs in one C call, where no signal can interrupt it) costs the test its
  deadline, not 14 minutes.
* :func:`growth` - CPU time at ``factor`` times the size divided by the time at the size.
  Linear code gives about ``factor`` (less when fixed costs dominate), quadratic ``factor``
  squared; callers compare with :data:`MAX_GROWTH`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Allowed growth for 8 times the input: linear is 8, quadratic 64.
MAX_GROWTH = 20.0
FACTOR = 8
#: Times below this are rounded up to it: the clock and the fixed costs are all they measure.
MIN_SECONDS = 0.0005


def best_cpu(fn: Callable[[T], Any], arg: T, repeat: int = 3) -> float:
    """The least CPU time of ``repeat`` calls ``fn(arg)``; exceptions are the caller's business."""
    best = math.inf
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        with contextlib.suppress(Exception):  # the bound holds for failing inputs too
            fn(arg)
        best = min(best, time.process_time() - started)
    return best


def bounded_cpu(fn: Callable[[T], Any], arg: T, deadline: float, repeat: int = 3) -> float:
    """:func:`best_cpu` in a forked child; ``math.inf`` if it did not finish in ``deadline`` s."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_measure, args=(send, fn, arg, repeat), daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(deadline):
            return float(receive.recv())
        return math.inf
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)
        receive.close()


def _measure(send: Any, fn: Callable[[Any], Any], arg: Any, repeat: int) -> None:
    send.send(best_cpu(fn, arg, repeat))


def growth(fn: Callable[[T], Any], make: Callable[[int], T], size: int) -> float:
    """CPU time of ``fn(make(size * FACTOR))`` over that of ``fn(make(size))``, best of three.

    The big run gets a deadline of :data:`MAX_GROWTH` times the small one (plus slack for
    forking), so a superlinear parser fails the comparison quickly.
    """
    small = max(best_cpu(fn, make(size)), MIN_SECONDS)
    big = bounded_cpu(fn, make(size * FACTOR), deadline=3 * MAX_GROWTH * small + 5.0)
    return big / small
