"""The :class:`Context` a use-case runs with: configuration, state store and CRM adapters.

Every entry point - the Celery tasks, ``email-router run``, the one-shot commands - opens one
with :func:`open_context` (or builds one around a store it already has) and hands it to the
use-cases of :mod:`router.service`. The CRM adapters are built on first use, one per Deployment,
and shared by the instances that use it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from router.config import (
    Configuration,
    Deployment,
    ProviderConfiguration,
    Settings,
)
from router.configcheck import load_config
from router.crm.base import CrmAdapter, DeliveryTarget, Owners
from router.crm.factory import make_crm
from router.errors import ConfigError
from router.ledger import holder_id
from router.mailboxes import loaded_config
from router.providers.base import Provider
from router.providers.registry import resolve
from router.state.base import StateStore
from router.state.factory import open_store


@dataclass
class Context:
    """What a use-case needs: configuration, state store and CRM adapters."""

    config: Configuration
    store: StateStore
    settings: Settings = field(default_factory=Settings)
    _crms: dict[str, CrmAdapter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: (configuration, its instances by name): a lookup per cycle was a scan of every instance
    _index: tuple[Configuration | None, dict[str, ProviderConfiguration]] = field(
        default_factory=lambda: (None, {})
    )

    @property
    def holder(self) -> str:
        """Who is working in this thread: the holder of the leases its cycles take."""
        return holder_id()

    def instance(self, name: str) -> ProviderConfiguration:
        """The configuration of instance ``name``; ConfigError when the file has no such one."""
        config, by_name = self._index
        if config is not self.config:  # first use, or the configuration was reloaded
            config = self.config
            by_name = {p.name: p for p in config.providers}
            self._index = (config, by_name)
        if name in by_name:
            return by_name[name]
        try:
            return config.provider(name)  # not there: its KeyError names the known ones
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None

    def provider(self, cfg: ProviderConfiguration) -> Provider:
        """A new, unopened provider for instance ``cfg``."""
        return resolve(cfg.provider_class, cfg.direction)(cfg)

    def crm(self, cfg: ProviderConfiguration) -> CrmAdapter:
        """The CRM adapter of the instance's Deployment (created once, then shared)."""
        if not cfg.deployment:
            raise ConfigError(f"{cfg.name}: <Deployment> is required to reach the CRM")
        with self._lock:
            if cfg.deployment not in self._crms:
                dep = self.config.deployment(cfg.deployment)
                self._crms[cfg.deployment] = make_crm(dep)
            return self._crms[cfg.deployment]

    def crm_adapters(self) -> list[CrmAdapter]:
        """The CRM adapters opened so far: to close them without closing the shared store."""
        with self._lock:
            return list(self._crms.values())

    def adopt_crms(self, old: Context) -> list[CrmAdapter]:
        """Take over the adapters of ``old`` whose Deployment is unchanged; return the others.

        Use it when this context replaces ``old`` after a reload: a kept adapter keeps its token
        and connections; the caller closes the returned ones once no cycle uses them any more.
        """
        retired = []
        # ``old`` keeps its own references: a cycle still running with it must not build a
        # second adapter for a Deployment it already had
        for name, crm in old._crms_by_deployment().items():
            if _deployment_or_none(old.config, name) == _deployment_or_none(self.config, name):
                with self._lock:
                    self._crms.setdefault(name, crm)
            else:
                retired.append(crm)
        return retired

    def close(self) -> None:
        """Close the CRM adapters and the state store: the end of this context's process."""
        for crm in self.crm_adapters():
            crm.close()
        self.store.close()

    def _crms_by_deployment(self) -> dict[str, CrmAdapter]:
        with self._lock:
            return dict(self._crms)


def _deployment_or_none(config: Configuration, name: str) -> Deployment | None:
    try:
        return config.deployment(name)
    except KeyError:
        return None


def delivery_target(cfg: ProviderConfiguration) -> DeliveryTarget:
    """The CRM mailbox/user/queue an incoming instance delivers for."""
    return DeliveryTarget(
        mailbox=cfg.email_address or "",
        user_id=cfg.user_ids[0] if cfg.user_ids else None,
        queue_id=cfg.queue_ids[0] if cfg.queue_ids else None,
    )


def owners(cfg: ProviderConfiguration) -> Owners:
    """The CRM users/queues whose outgoing emails an outgoing instance sends."""
    return Owners(cfg.user_ids, cfg.queue_ids, cfg.email_address or "")


def open_context(
    config_path: str | Path | None = None,
    state_url: str | None = None,
    settings: Settings | None = None,
) -> Context:
    """Load the configuration and open the state store: what every command starts with.

    The state store is chosen by :func:`open_state_store`. The configuration includes the
    mailboxes loaded from the CRM as a runtime last recorded them in that store
    (:func:`router.mailboxes.loaded_config`), so ``poll NAME`` / ``send NAME`` accept them.
    """
    settings = settings or Settings()
    config = load_config(Path(config_path) if config_path else settings.config)
    store = open_state_store(config, settings, state_url)
    return Context(loaded_config(config, store), store, settings)


def context_for(config: Configuration, settings: Settings, state_url: str | None = None) -> Context:
    """A context for a configuration already loaded (by a runtime's watcher): opens its store."""
    return Context(config, open_state_store(config, settings, state_url), settings)


def open_state_store(
    config: Configuration, settings: Settings, state_url: str | None = None
) -> StateStore:
    """The state store of ``config``: ``state_url``, else ``ROUTER_STATE_URL``, else the file's
    ``<StateStore>``."""
    url = state_url or settings.state_url or config.system.state_store
    return open_store(url, prefix=settings.key_prefix)
