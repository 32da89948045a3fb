"""The contexts of ``email-router run`` across configuration reloads, and their CRM adapters.

Use :class:`Contexts` in the scheduler: every configuration the scheduler applies gets a new
:class:`~router.context.Context` (so Deployment changes reach the CRM), which takes over the
adapters of unchanged Deployments - keeping their tokens and connections. The adapters of
changed or removed Deployments are closed once no running cycle can still use them: each
context has a generation number, and a cycle runs with the generation it started with.
"""

from __future__ import annotations

import logging
from contextlib import suppress

from router import metrics
from router.config import Configuration, Settings
from router.context import Context
from router.crm.base import CrmAdapter
from router.state.base import StateStore

log = logging.getLogger(__name__)


class Contexts:
    """The current context, its generation, and the retired adapters of older ones."""

    def __init__(self, store: StateStore, settings: Settings) -> None:
        self._store, self._settings = store, settings
        self.current: Context | None = None
        #: Generation of :attr:`current`; a cycle started with it remembers it.
        self.generation = 0
        self._retired: list[tuple[int, CrmAdapter]] = []

    def renew(self, config: Configuration) -> Context:
        """A context for ``config`` that keeps the CRM adapters of unchanged Deployments."""
        ctx = metrics.metered_context(Context(config, self._store, self._settings))
        old, self.current = self.current, ctx
        if old is not None:
            self._retired += [(self.generation, crm) for crm in ctx.adopt_crms(old)]
            self.generation += 1
        return ctx

    def close_retired(self, oldest_running: int | None) -> None:
        """Close the retired adapters no cycle can use: those older than ``oldest_running``."""
        oldest = self.generation if oldest_running is None else oldest_running
        for item in [r for r in self._retired if r[0] < oldest]:
            self._retired.remove(item)
            _close(item[1])

    def close_all(self) -> None:
        """Close every adapter, retired or current (the store stays open: it is shared)."""
        adapters = [crm for _, crm in self._retired]
        adapters += self.current.crm_adapters() if self.current is not None else []
        self._retired.clear()
        for crm in adapters:
            _close(crm)


def _close(crm: CrmAdapter) -> None:
    with suppress(Exception):  # closing is best effort
        crm.close()
