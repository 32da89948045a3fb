"""Build the CRM adapter a ``<Deployment>`` names: ``dataverse``, ``memory`` or
``package.module:Class``.

Use :func:`make_crm` wherever a Deployment becomes a live adapter (the context does it once per
Deployment and shares it between the instances that use it; ``test-access`` does it per
Deployment). :data:`MEMORY_CRMS` keeps one in-memory CRM per Deployment name in this process,
so tests and demos can look inside.
"""

from __future__ import annotations

import importlib

from router.config import Deployment
from router.crm.base import CrmAdapter
from router.crm.dataverse import DataverseAdapter
from router.crm.memory import MemoryCrm
from router.errors import ConfigError

#: CRM adapters by Deployment ``<Adapter>`` value.
CRM_ADAPTERS = {
    "dataverse": "router.crm.dataverse:DataverseAdapter",
    "memory": "router.crm.memory:MemoryCrm",
}

#: One MemoryCrm per Deployment name in this process, so tests and demos can look inside.
MEMORY_CRMS: dict[str, CrmAdapter] = {}


def make_crm(dep: Deployment) -> CrmAdapter:
    """Build the adapter a Deployment names in ``<Adapter>``."""
    if dep.adapter == "memory":
        return MEMORY_CRMS.setdefault(dep.name, _memory_crm())
    if dep.adapter == "dataverse":
        return DataverseAdapter.from_deployment(dep)
    if ":" in dep.adapter:
        return _custom_crm(dep)
    raise ConfigError(
        f"Deployment {dep.name!r}: unknown <Adapter> {dep.adapter!r} "
        "(use dataverse, memory or package.module:Class)"
    )


def _custom_crm(dep: Deployment) -> CrmAdapter:
    """``<Adapter>package.module:Class</Adapter>``: a CrmAdapter, built by ``from_deployment``."""
    module, _, attr = dep.adapter.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Deployment {dep.name!r}: cannot load <Adapter> {dep.adapter!r}: {exc}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, CrmAdapter)):
        raise ConfigError(
            f"Deployment {dep.name!r}: <Adapter> {dep.adapter!r} is not a CrmAdapter "
            "(router.crm.base.CrmAdapter)"
        )
    return cls.from_deployment(dep)


def _memory_crm() -> CrmAdapter:
    return MemoryCrm()
