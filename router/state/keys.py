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
    er:heartbeat:<host:pid>       string  alive-until (Redis server time, ms); PX = how long a
                                          process that stopped beating is remembered
    er:due                        zset    instance -> next due instant (server time, ms): what
                                          the Celery dispatcher claims (workers.dispatch)
    er:period                     hash    instance -> its PollingPeriod (ms), for re-inserting
    er:mailboxes                  hash    Deployment -> JSON mailbox list its runtime last read
                                          from the CRM (router.mailboxes; no secrets)

The order index is split by state so that "the oldest STAGED entries", the per-state counts and a
purge of old DONE entries cost what they return, not the size of the whole ledger history.

Instance names may contain ``:``; they are escaped (``%`` -> ``%25``, ``:`` -> ``%3A``) so that two
different names can never build the same key. A ledger key or Message-ID is always the *last*
component of its key name, so it needs no escaping: ``er:raw:<instance>:`` is an unambiguous prefix
and a Lua script can build the raw key of any entry by concatenation.

The names *inside* the store that every backend shares - the outbound ledger namespace, ledger
keys of outbound emails, Message-ID index keys and the delivery lease's name - are built here
too, by the module-level functions below (:mod:`router.ledger` is their only caller)::

    _outbound                     ledger namespace of every outbound claim (OUTBOUND)
    out:<email id>                ledger key of a CRM email in that namespace
    in:<instance>:<message-id>    Message-ID index: what <instance> delivered to the CRM
    out:<message-id>              Message-ID index: what the router sent (normalised id)
    <instance>#deliver            lease of an incoming instance's CRM delivery run
"""

from __future__ import annotations

import re

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

#: Ledger namespace of every outbound claim, shared by all outgoing instances. The configuration
#: refuses instance names starting with "_", so no instance can collide with it.
OUTBOUND = "_outbound"
_OUTBOUND_KEY = "out:"


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
        """The set of every instance name."""
        return f"{self.prefix}:instances"

    def lease(self, instance: str) -> str:
        """The lease of ``instance``."""
        return self._per_instance("lease", instance)

    def token(self, instance: str) -> str:
        """The fencing-token counter of ``instance``."""
        return self._per_instance("token", instance)

    def cursor(self, instance: str) -> str:
        """The cursor of ``instance``."""
        return self._per_instance("cursor", instance)

    def pstate(self, instance: str) -> str:
        """The provider state of ``instance``."""
        return self._per_instance("pstate", instance)

    def stats(self, instance: str) -> str:
        """The counters of ``instance``."""
        return self._per_instance("stats", instance)

    def ledger(self, instance: str) -> str:
        """The ledger hash of ``instance``."""
        return self._per_instance("ledger", instance)

    def seq(self, instance: str) -> str:
        """The creation-sequence counter of ``instance``'s ledger."""
        return self._per_instance("seq", instance)

    def order_prefix(self, instance: str) -> str:
        """The order index of ``instance`` for one state is this string followed by the state."""
        return self._per_instance("order", instance) + ":"

    def order(self, instance: str, state: str) -> str:
        """The order index of ``instance``'s entries in ``state``."""
        return self.order_prefix(instance) + state

    def raw_prefix(self, instance: str) -> str:
        """Every raw key of ``instance`` is this string followed by the ledger key."""
        return self._per_instance("raw", instance) + ":"

    def raw(self, instance: str, key: str) -> str:
        """The staged bytes of ``instance``'s entry ``key``."""
        return self.raw_prefix(instance) + key

    def msgid(self, message_id: str) -> str:
        """The Message-ID index entry of ``message_id``."""
        return f"{self.prefix}:msgid:{message_id}"

    def heartbeat(self, process: str) -> str:
        """The heartbeat of runtime process ``process`` (``host:pid``)."""
        return self._per_instance("heartbeat", process)

    def due(self) -> str:
        """The sorted set of every scheduled instance's next due instant (ms, server clock)."""
        return f"{self.prefix}:due"

    def period(self) -> str:
        """The hash of every scheduled instance's polling period (ms)."""
        return f"{self.prefix}:period"

    def mailbox_lists(self) -> str:
        """The hash of every Deployment's recorded CRM mailbox list."""
        return f"{self.prefix}:mailboxes"

    def pattern(self) -> str:
        """A SCAN MATCH pattern covering every key of this prefix (for cleanup and audits)."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":*"


# -- names shared by every backend ----------------------------------------------------------------
def outbound_key(email_id: str) -> str:
    """Ledger key of a CRM email in the :data:`OUTBOUND` namespace."""
    return f"{_OUTBOUND_KEY}{email_id}"


def email_id_of(key: str) -> str:
    """The CRM email id an :func:`outbound_key` was built from."""
    return key.removeprefix(_OUTBOUND_KEY)


def seen_index(instance: str, message_id: str) -> str:
    """Message-ID index key of what ``instance`` delivered (UIDVALIDITY resets rely on it)."""
    return f"in:{instance}:{message_id}"


def sent_index(message_id: str) -> str:
    """Message-ID index key of an email the router sent (``message_id`` already normalised)."""
    return f"{_OUTBOUND_KEY}{message_id}"


def delivery_lease(instance: str) -> str:
    """Name of the lease an incoming instance's CRM delivery run holds."""
    return f"{instance}#deliver"
