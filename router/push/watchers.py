"""The set of IDLE watchers of one process, kept in step with the configuration.

Use :class:`PushWatchers` in a runtime: :meth:`PushWatchers.apply` starts a watcher for every
enabled incoming instance with ``<Push>idle</Push>`` and stops those that left the file or
changed (a changed instance gets a new watcher); :meth:`PushWatchers.close` stops them all. An
instance whose provider is not IMAP, or whose configuration does not build, is polled only, with
one log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.config import Configuration, ProviderConfiguration
from router.errors import ConfigError
from router.models import Direction
from router.providers.base import Provider
from router.providers.imap import ImapProvider
from router.providers.registry import resolve
from router.push.idle import IdleWatcher, PushTiming, WatchStats
from router.push.trigger import Trigger

log = logging.getLogger(__name__)

#: IMAP logins in progress at once per process (start-up, reconnects after a server restart).
CONNECT_CONCURRENCY = 16

ProviderFactory = Callable[[ProviderConfiguration], Provider]


def wants_push(cfg: ProviderConfiguration) -> bool:
    """Whether ``cfg`` asks for IDLE push: enabled, incoming, ``<Push>idle</Push>``."""
    return cfg.push == "idle" and cfg.enabled and cfg.direction is Direction.INCOMING


def build_provider(cfg: ProviderConfiguration) -> Provider:
    """The instance's provider, as the polls build it (registry alias or dotted path)."""
    return resolve(cfg.provider_class, cfg.direction)(cfg)


@dataclass
class _Watch:
    cfg: ProviderConfiguration
    watcher: IdleWatcher


class PushWatchers:
    """Every IDLE watcher of this process; each new-mail notification calls ``trigger``."""

    def __init__(
        self,
        trigger: Trigger,
        timing: PushTiming | None = None,
        *,
        provider_factory: ProviderFactory = build_provider,
        connect_concurrency: int = CONNECT_CONCURRENCY,
    ) -> None:
        self.trigger, self.timing = trigger, timing or PushTiming()
        self._factory = provider_factory
        self._gate = threading.BoundedSemaphore(connect_concurrency)
        self._watches: dict[str, _Watch] = {}
        #: instances already reported as not watchable, so a reload does not repeat the line
        self._refused: dict[str, ProviderConfiguration] = {}

    @property
    def names(self) -> list[str]:
        """The instances watched now."""
        return sorted(self._watches)

    def stats(self) -> dict[str, WatchStats]:
        """Each watched instance's :class:`WatchStats`."""
        return {name: w.watcher.stats for name, w in self._watches.items()}

    def apply(self, config: Configuration) -> None:
        """Watch exactly the ``<Push>idle</Push>`` instances of ``config``."""
        wanted = {p.name: p for p in config.providers if wants_push(p)}
        for name in [n for n, w in self._watches.items() if wanted.get(n) != w.cfg]:
            self._unwatch(name)
        for name, cfg in wanted.items():
            if name not in self._watches and self._refused.get(name) != cfg:
                self._watch(cfg)
        self._refused = {n: c for n, c in self._refused.items() if wanted.get(n) == c}

    def close(self, timeout: float = 10.0) -> None:
        """Stop every watcher and wait (bounded, in total) for their threads."""
        watches = list(self._watches.values())
        self._watches.clear()
        for w in watches:
            w.watcher.stop()
        deadline = time.monotonic() + timeout
        for w in watches:
            w.watcher.join(max(0.0, deadline - time.monotonic()))

    def _watch(self, cfg: ProviderConfiguration) -> None:
        try:
            provider = self._factory(cfg)
        except ConfigError as exc:
            self._refuse(cfg, f"its configuration does not build: {exc}")
            return
        if not isinstance(provider, ImapProvider):
            self._refuse(cfg, f"<Push>idle</Push> needs an IMAP provider, not {cfg.provider_class}")
            return
        watcher = IdleWatcher(provider, self.trigger, self.timing, gate=self._gate)
        self._watches[cfg.name] = _Watch(cfg, watcher)
        watcher.start()

    def _unwatch(self, name: str) -> None:
        watch = self._watches.pop(name)
        watch.watcher.stop()  # the thread ends on its own; nothing waits for it here

    def _refuse(self, cfg: ProviderConfiguration, why: str) -> None:
        self._refused[cfg.name] = cfg
        log.warning("%s: not watched (polled every PollingPeriod only): %s", cfg.name, why)
