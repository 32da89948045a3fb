"""Process-wide memory tuning, applied once at start by the runtimes (``email-router run``, the
Celery app).

glibc's malloc gives every thread that allocates its own arena (up to 8 per core) and keeps what
the thread freed there for reuse. The router's threads (``MaxThreads`` pollers, the Dataverse
adapter's pool) allocate and free multi-megabyte buffers - raw messages, decoded attachments,
``$batch`` bodies - so each arena ends up holding its own high-water mark. Measured with
``tests/benchmarks/bench_ingest.py`` (5,000 messages, 1 % with 1-5 MB attachments, standalone,
10 threads): peak RSS 418 MB with the default, 233 MB with two arenas, at the same throughput.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc ``malloc.h``).
M_ARENA_MAX = -8
#: Arenas the router runs with unless ``MALLOC_ARENA_MAX`` is set in the environment.
DEFAULT_ARENAS = 2


def limit_malloc_arenas(count: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc malloc arenas at ``count``; True when applied.

    Does nothing when the operator set ``MALLOC_ARENA_MAX`` (glibc read it at start) or when the
    C library is not glibc (musl, macOS: no ``mallopt`` or no such parameter).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(M_ARENA_MAX, count))
    log.debug("malloc arenas capped at %d: %s", count, applied)
    return applied
