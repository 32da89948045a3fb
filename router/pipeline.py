"""Delivery that overlaps the fetch: a poll cycle's CRM step, run while the mailbox is read.

Use :class:`DeliveryPipeline` in a poll cycle that delivers what it stages (``email-router run``,
``email-router poll``; the Celery runtime overlaps across tasks instead: a poll queues a ``deliver``
task and the next poll runs beside it). The cycle calls :meth:`~DeliveryPipeline.staged` after each
group it staged and :meth:`~DeliveryPipeline.finish` once staging ended; meanwhile the CRM turns
the earlier groups into activities, so the next FETCH and the CRM's answer wait for each other no
longer. Measured by ``tests/benchmarks/bench_backlog.py --latency 50`` (README, "Dead workers,
Redis restarts and backlogs").

Every run is :func:`router.delivery.deliver_staged` (its own delivery lease, the ledger's moves),
so the guarantees are the delivery step's; the pipeline only decides when a run happens:

* a run starts once a whole delivery chunk (:data:`router.delivery.DELIVERY_CHUNK`) is staged
  and not yet given to a run: a smaller one would cost the CRM's round trips per chunk without
  filling its fan-out (a cycle of ``MaxMessageCount`` 100 is delivered in one chunk at the end);
* at most one run at a time, in one background thread started with the first run; entries
  staged while a run is busy go to the next run (a run takes every staged entry no earlier run
  of the cycle was given: a message is attempted once per cycle, as without the overlap, so
  ``MaxMessageAttempts`` still counts cycles);
* :meth:`~DeliveryPipeline.finish` waits for the run in flight and runs once more, in the calling
  thread, for what is left (and for what earlier cycles left staged); the cycle post-processes
  only after it returns;
* a run that raised (a CRM outage) starts no further run; ``finish`` raises it once staging is
  over, so what was fetched is kept staged for the next cycle;
* leaving the ``with`` block early (the fetch failed) waits for the run in flight, starts none.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from router.context import Context
from router.delivery import DELIVERY_CHUNK, deliver_staged
from router.ledger import InboundLedger
from router.report import CycleReport


class DeliveryPipeline:
    """Runs :func:`~router.delivery.deliver_staged` for instance ``name`` beside the fetch."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future[CycleReport] | None = None
        self._reports: list[CycleReport] = []
        self._error: BaseException | None = None
        self._given: set[str] = set()  # the staged entries handed to a run already
        self._unread = 0  # messages staged since the ledger was last read for a run

    def __enter__(self) -> DeliveryPipeline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._settle()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def staged(self, count: int) -> None:
        """``count`` messages were staged: start a run once a whole chunk waits, unless one is
        running or a run failed (the ledger is only read then, not after every group)."""
        self._unread += count
        if self._unread < DELIVERY_CHUNK or self._error is not None:
            return
        if self._running is not None and not self._running.done():
            return
        self._settle()
        keys = self._new_keys(DELIVERY_CHUNK) if self._error is None else []
        if keys:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"deliver-{self.name}")
            self._running = self._pool.submit(deliver_staged, self.ctx, self.name, keys)

    def finish(self) -> CycleReport:
        """Wait for the run in flight, deliver what is left; the runs' reports added up.

        Raises what a run raised (CrmUnavailable: the rest stays staged for the next cycle).
        """
        self._settle()
        if self._error is not None:
            raise self._error
        if not self._given:  # no run yet: all that is staged, as a cycle without overlap does
            self._reports.append(deliver_staged(self.ctx, self.name))
        elif keys := self._new_keys():
            self._reports.append(deliver_staged(self.ctx, self.name, keys))
        total = CycleReport(self.name)
        for report in self._reports:
            total.merge(report)
        return total

    def _new_keys(self, at_least: int = 1) -> list[str]:
        """The staged entries no run of this cycle was given yet, if ``at_least`` (now given)."""
        staged = InboundLedger(self.ctx.store, self.name).staged()
        keys = [entry.key for entry in staged if entry.key not in self._given]
        self._unread = 0
        if len(keys) < at_least:
            return []
        self._given.update(keys)
        return keys

    def _settle(self) -> None:
        """Wait for the run in flight, if any, and keep its report or its error."""
        running, self._running = self._running, None
        if running is None:
            return
        try:
            self._reports.append(running.result())
        except Exception as exc:  # raised again by finish(), after staging has ended
            self._error = exc
