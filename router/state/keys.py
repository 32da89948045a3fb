"""Every Redis key the router uses, built in one place from a configurable prefix.

Use :class:`Keys` whenever code needs a Redis key name; never format a key anywhere else (rq's
scattered key templates are what this avoids). The schema, with the default prefix ``er``::

    er:instances                  set     every instance the store holds anything for
    er:lease:<instance>           string  "<token>:<holder>", expires with the lease (PX)
    er:token:<instance>           string  fencing-token counter (INCR; only grows)
    er:cursor:<instance>          string  compact JSON cursor
    er:pstate:<instance>          string  compact JSON provider state
    er:stats:<instance>           hash    p (processed), lp, ls, le, lea (last poll/success/error)
    er:ledger:<instance>          hash    ledger key -> entry record (see router.state.records)
    er:seq:<instance>             string  creation-sequence counter of the ledger (INCR)
    er:order:<instance>:<state>   zset    ledger keys now in <state>, scored by creation sequence
    er:raw:<instance>:<key>       string  staged raw message bytes
    er:msgid:<message-id>         string  JSON ["<instance>", "<ledger key>"]

The order index is split by state so that "the oldest STAGED entries", the per-state counts and a
purge of old DONE entries cost what they return, not the size of the whole ledger history.

Instance names may contain ``:``; they are escaped (``%`` -> ``%25``, ``:`` -> ``%3A``) so that two
different names can never build the same key. A ledger key or Message-ID is always the *last*
component of its key name, so it needs no escaping: ``er:raw:<instance>:`` is an unambiguous prefix
and a Lua script can build the raw key of any entry by concatenation.
"""

from __future__ import annotations

import re

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape(component: str) -> str:
    """Escape a key component so it contains no ``:`` (reversibly: ``%`` is escaped too)."""
    return component.replace("%", "%25").replace(":", "%3A")


def unescape(component: str) -> str:
    """Undo :func:`escape`."""
    return component.replace("%3A", ":").replace("%25", "%")


class Keys:
    """The key schema for one prefix; create one per store and ask it for every key name."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "er") -> None:
        if not prefix:
            raise ValueError("the Redis key prefix must not be empty")
        self.prefix = prefix

    def _per_instance(self, kind: str, instance: str) -> str:
        return f"{self.prefix}:{kind}:{escape(instance)}"

    def instances(self) -> str:
        return f"{self.prefix}:instances"

    def lease(self, instance: str) -> str:
        return self._per_instance("lease", instance)

    def token(self, instance: str) -> str:
        return self._per_instance("token", instance)

    def cursor(self, instance: str) -> str:
        return self._per_instance("cursor", instance)

    def pstate(self, instance: str) -> str:
        return self._per_instance("pstate", instance)

    def stats(self, instance: str) -> str:
        return self._per_instance("stats", instance)

    def ledger(self, instance: str) -> str:
        return self._per_instance("ledger", instance)

    def seq(self, instance: str) -> str:
        return self._per_instance("seq", instance)

    def order_prefix(self, instance: str) -> str:
        """The order index of ``instance`` for one state is this string followed by the state."""
        return self._per_instance("order", instance) + ":"

    def order(self, instance: str, state: str) -> str:
        return self.order_prefix(instance) + state

    def raw_prefix(self, instance: str) -> str:
        """Every raw key of ``instance`` is this string followed by the ledger key."""
        return self._per_instance("raw", instance) + ":"

    def raw(self, instance: str, key: str) -> str:
        return self.raw_prefix(instance) + key

    def msgid(self, message_id: str) -> str:
        return f"{self.prefix}:msgid:{message_id}"

    def pattern(self) -> str:
        """A SCAN MATCH pattern covering every key of this prefix (for cleanup and audits)."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":*"
