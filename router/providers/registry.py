"""Resolve a ``<ProviderClass>`` to a provider class.

Three ways to name a provider, tried in order:

1. an alias from :data:`ALIASES` (``imap``, ``pop3``, ``smtp``, ``memory``, ``memory-out``,
   ``graph-in``, ``graph-out``) or :data:`DIRECTED_ALIASES` - one name for a protocol that
   reads and sends (``graph``), resolved by the instance's ``<Direction>``,
2. an entry point in the group ``email_router.providers`` (installed plug-ins),
3. a ``package.module:Class`` path (or ``package.module.Class``).

A name that matches nothing gets a "did you mean ...?" built from the aliases and entry points,
the entry-point group to register under, and a hint when an installed package registered the
name under a misspelt group. A provider class that cannot be used (its module fails to import,
it is not a provider, it leaves abstract primitives unimplemented) is a ConfigError that says
what to fix, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from importlib.metadata import EntryPoint, entry_points

from router.errors import ConfigError
from router.models import Direction
from router.providers.base import Provider

ENTRY_POINT_GROUP = "email_router.providers"

ALIASES: dict[str, str] = {
    "imap": "router.providers.imap:ImapProvider",
    "pop3": "router.providers.pop3:Pop3Provider",
    "smtp": "router.providers.smtp:SmtpProvider",
    "memory": "router.providers.memory:MemoryIncomingProvider",
    "memory-out": "router.providers.memory:MemoryOutgoingProvider",
    "graph-in": "router.providers.graph_incoming:GraphIncomingProvider",
    "graph-out": "router.providers.graph_outgoing:GraphOutgoingProvider",
}

#: Aliases naming one class per direction; ``resolve`` picks by the instance's ``<Direction>``.
DIRECTED_ALIASES: dict[str, dict[Direction, str]] = {
    "graph": {Direction.INCOMING: ALIASES["graph-in"], Direction.OUTGOING: ALIASES["graph-out"]},
}


def known_names() -> list[str]:
    """Every alias and entry-point name, for help texts and suggestions."""
    names = set(ALIASES) | set(DIRECTED_ALIASES)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve(name: str, direction: Direction | str | None = None) -> type[Provider]:
    """Return the provider class ``name`` refers to, or raise ConfigError saying what to do.

    ``direction`` (the instance's ``<Direction>``) picks the class of a
    :data:`DIRECTED_ALIASES` name (``graph``); without one, such a name resolves to its
    incoming class. Other names ignore it.
    """
    name = name.strip()
    if name.lower() in DIRECTED_ALIASES:
        by_direction = DIRECTED_ALIASES[name.lower()]
        return _import(by_direction[_direction(direction)], name)
    if name.lower() in ALIASES:
        return _import(ALIASES[name.lower()], name)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _check(_load(ep), name)
    if ":" in name or "." in name:
        return _import(name, name)
    raise ConfigError(_unknown(name))


def _direction(value: Direction | str | None) -> Direction:
    """``value`` as a Direction (case-insensitive text too); Incoming when absent or unknown."""
    text = str(value or "").strip().lower()
    return Direction.OUTGOING if text == Direction.OUTGOING.value.lower() else Direction.INCOMING


def _unknown(name: str) -> str:
    """The message for a name that is no alias, entry point or dotted path."""
    hint = difflib.get_close_matches(name.lower(), known_names(), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return (
        f"unknown provider {name!r}{suggestion} (use one of {', '.join(known_names())}, "
        f"package.module:Class, or the name of an entry point in the group "
        f"{ENTRY_POINT_GROUP!r} of an installed package){_misspelt_group(name)}"
    )


def _misspelt_group(name: str) -> str:
    """A hint when an installed package registered ``name`` under a group like ours."""
    for group in entry_points().groups:
        near = difflib.SequenceMatcher(None, group.lower(), ENTRY_POINT_GROUP).ratio() > 0.8
        if group != ENTRY_POINT_GROUP and near and entry_points(group=group, name=name):
            return (
                f"; an installed package registers {name!r} in the entry-point group "
                f"{group!r}: rename that group to {ENTRY_POINT_GROUP!r} and reinstall it"
            )
    return ""


def _load(ep: EntryPoint) -> object:
    """Load an entry point; its import failing is a ConfigError naming the package's module."""
    try:
        return ep.load()
    except Exception as exc:  # any error raised while importing the plug-in's module
        raise ConfigError(
            f"provider {ep.name!r}: entry point {ep.value!r} cannot be loaded: "
            f"{type(exc).__name__}: {exc}; fix or reinstall the package that provides it"
        ) from None


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
    except Exception as exc:  # the module itself raised while being imported (a bug in it)
        raise ConfigError(
            f"provider {name!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}; fix that module"
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
    if inspect.isabstract(obj):
        missing = sorted(obj.__abstractmethods__)
        raise ConfigError(
            f"provider {name!r} ({obj.__qualname__}) does not implement "
            f"{', '.join(missing)}: define them in the class (see router.providers.base)"
        )
    return obj
