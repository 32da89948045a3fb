"""What a push watcher calls when mail arrives: "poll this instance now".

Use :class:`Trigger` as the type of anything that starts a poll: the ``email-router run``
scheduler (:meth:`router.runtime.schedule.Scheduler.poll_now`) and the Celery trigger of
``email-router watch`` (``workers.push:CeleryTrigger``) both have the one method. A trigger is
named in :data:`TRIGGERS` or as ``package.module:attribute`` and loaded at start-up by
:func:`load_trigger`, so that ``router`` never imports the Celery side.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from router.errors import ConfigError

#: Trigger aliases for ``email-router watch --trigger``.
TRIGGERS = {"celery": "workers.push:CeleryTrigger"}


@runtime_checkable
class Trigger(Protocol):
    """Starts the normal poll of one incoming instance as soon as it can (never blocks long)."""

    def poll_now(self, instance: str) -> None:
        """Ask for a poll of ``instance``; a poll already running is followed by another."""


def load_trigger(spec: str) -> Trigger:
    """Build the trigger ``spec`` names (an alias or ``package.module:attribute``).

    The attribute is a class or factory called without arguments. ConfigError says what is
    wrong: an unknown alias, a module that does not import, an object without ``poll_now``.
    """
    path = TRIGGERS.get(spec.strip().lower(), spec.strip())
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        known = ", ".join(sorted(TRIGGERS))
        raise ConfigError(f"trigger {spec!r}: use {known} or package.module:attribute")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"trigger {spec!r}: cannot load {path}: {exc}") from exc
    trigger = factory()
    if not isinstance(trigger, Trigger):
        raise ConfigError(f"trigger {spec!r}: {path}() has no poll_now(instance) method")
    return trigger
