"""The use-cases the runtimes call: poll an instance, deliver what it staged, send, housekeep.

Both runtimes - Celery tasks (``workers/``) and the single-process scheduler (``router.runtime``)
- and the CLI call only these functions, with a :class:`Context`: the loaded configuration, the
state store, and the CRM adapters (one per Deployment, shared by the instances that use it).
Nothing here imports Celery.

* :func:`poll_instance` - incoming: lease, list, fetch, stage, move the cursor, deliver,
  post-process (``router.incoming``).
* :func:`deliver_staged` - incoming: staged messages -> CRM activities (the CRM adapter step).
* :func:`send_cycle` - outgoing: pending CRM emails -> SMTP -> Sent/Failed (``router.outgoing``).
* :func:`housekeeping` - expired ledger entries and leftovers.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from router.config import Configuration, Deployment, ProviderConfiguration, Settings
from router.crm.base import CrmAdapter, DeliveryTarget, Owners
from router.errors import ConfigError
from router.providers.base import Provider
from router.providers.registry import resolve
from router.state.base import StateStore
from router.state.factory import open_store

#: CRM adapters by Deployment ``<Adapter>`` value.
CRM_ADAPTERS = {
    "dataverse": "router.crm.dataverse:DataverseAdapter",
    "memory": "router.crm.memory:MemoryCrm",
}

#: One MemoryCrm per Deployment name in this process, so tests and demos can look inside.
MEMORY_CRMS: dict[str, CrmAdapter] = {}


def default_holder() -> str:
    """Who is working: ``host:pid:thread`` (shown as the lease holder in ``status``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


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
        return default_holder()

    def instance(self, name: str) -> ProviderConfiguration:
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
        return resolve(cfg.provider_class)(cfg)

    def crm(self, cfg: ProviderConfiguration) -> CrmAdapter:
        """The CRM adapter of the instance's Deployment (created once, then shared)."""
        if not cfg.deployment:
            raise ConfigError(f"{cfg.name}: <Deployment> is required to reach the CRM")
        with self._lock:
            if cfg.deployment not in self._crms:
                dep = self.config.deployment(cfg.deployment)
                self._crms[cfg.deployment] = make_crm(dep)
            return self._crms[cfg.deployment]

    def close(self) -> None:
        for crm in self._crms.values():
            crm.close()
        self.store.close()


def make_crm(dep: Deployment) -> CrmAdapter:
    """Build the adapter a Deployment names in ``<Adapter>``."""
    if dep.adapter == "memory":
        return MEMORY_CRMS.setdefault(dep.name, _memory_crm())
    if dep.adapter == "dataverse":
        from router.crm.dataverse import DataverseAdapter

        return DataverseAdapter.from_deployment(dep)
    if ":" in dep.adapter:
        return _custom_crm(dep)
    raise ConfigError(
        f"Deployment {dep.name!r}: unknown <Adapter> {dep.adapter!r} "
        "(use dataverse, memory or package.module:Class)"
    )


def _custom_crm(dep: Deployment) -> CrmAdapter:
    """``<Adapter>package.module:Class</Adapter>``: a CrmAdapter with ``from_deployment(dep)``."""
    import importlib

    module, _, attr = dep.adapter.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Deployment {dep.name!r}: cannot load <Adapter> {dep.adapter!r}: {exc}"
        ) from None
    build = getattr(cls, "from_deployment", None)
    if not (isinstance(cls, type) and issubclass(cls, CrmAdapter) and callable(build)):
        raise ConfigError(
            f"Deployment {dep.name!r}: <Adapter> {dep.adapter!r} is not a CrmAdapter "
            "with a from_deployment(deployment) classmethod"
        )
    adapter: CrmAdapter = build(dep)
    return adapter


def _memory_crm() -> CrmAdapter:
    from router.crm.memory import MemoryCrm

    return MemoryCrm()


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

    Precedence for the state store: ``state_url`` argument, ``ROUTER_STATE_URL``, the file's
    ``<StateStore>``.
    """
    from router.config import load_config

    settings = settings or Settings()
    config = load_config(Path(config_path) if config_path else settings.config)
    url = state_url or settings.state_url or config.system.state_store
    return Context(config, open_store(url, prefix=settings.key_prefix), settings)


#: Use-cases defined in their own modules (which import this one), re-exported lazily.
_REEXPORTS = {
    "send_cycle": "router.outgoing",
    "handle_bounce": "router.outgoing",
}


def __getattr__(name: str) -> object:
    if name in _REEXPORTS:
        import importlib

        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module 'router.service' has no attribute {name!r}")
