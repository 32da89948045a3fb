"""Resolve a ``<ProviderClass>`` to a provider class.

Three ways to name a provider, tried in order:

1. an alias from :data:`ALIASES` (``imap``, ``pop3``, ``smtp``, ``memory``, ``memory-out``),
2. an entry point in the group ``email_router.providers`` (installed plug-ins),
3. a ``package.module:Class`` path (or ``package.module.Class``).

A name that matches nothing gets a "did you mean ...?" built from the aliases and entry points.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from router.errors import ConfigError
from router.providers.base import Provider

ENTRY_POINT_GROUP = "email_router.providers"

ALIASES: dict[str, str] = {
    "imap": "router.providers.imap:ImapProvider",
    "pop3": "router.providers.pop3:Pop3Provider",
    "smtp": "router.providers.smtp:SmtpProvider",
    "memory": "router.providers.memory:MemoryIncomingProvider",
    "memory-out": "router.providers.memory:MemoryOutgoingProvider",
}


def known_names() -> list[str]:
    """Every alias and entry-point name, for help texts and suggestions."""
    names = set(ALIASES)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve(name: str) -> type[Provider]:
    """Return the provider class ``name`` refers to, or raise ConfigError saying what to do."""
    name = name.strip()
    if name.lower() in ALIASES:
        return _import(ALIASES[name.lower()], name)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _check(ep.load(), name)
    if ":" in name or "." in name:
        return _import(name, name)
    hint = difflib.get_close_matches(name.lower(), known_names(), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(
        f"unknown provider {name!r}{suggestion} (use one of {', '.join(known_names())}, "
        "or package.module:Class)"
    )


def _import(path: str, name: str) -> type[Provider]:
    module_name, _, attr = (
        path.replace(":", ".").rpartition(".") if ":" not in path else (path.partition(":"))
    )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"provider {name!r}: cannot import module {module_name!r}: {exc}"
        ) from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"provider {name!r}: module {module_name!r} has no {attr!r}") from None
    return _check(obj, name)


def _check(obj: object, name: str) -> type[Provider]:
    if not (isinstance(obj, type) and issubclass(obj, Provider)):
        raise ConfigError(
            f"provider {name!r} is not a subclass of IncomingProvider or OutgoingProvider"
        )
    return obj
