"""Leases and their holders: who works on an instance, for how long, and which names they take.

Use these whenever code takes, renews or clears a lease; nothing else formats a holder, parses
one or derives a lease TTL:

* :func:`holder_id` names the thread that works (``host:pid:thread``, shown by ``status``);
  :func:`tool_holder` names a one-off command (``state-reset@host:pid:thread``);
* :func:`holder_is_dead` is the one rule that says a holder died (see "Dead holders" below);
* :func:`lease_ttl` is the TTL of every cycle's lease: ``MaxThreadExecution``;
* :func:`instance_leases` lists the leases of an instance: the poll / send lease (the instance's
  own name) and the delivery lease (``<name>#deliver``, built by :mod:`router.state.keys`);
* :func:`take_poll_lease`, :func:`take_delivery_lease` and :func:`take_operator_lease` take them;
* :func:`release_own_leases` and :func:`release_dead_leases` clear what a stuck or crashed
  process left behind, so the instance need not wait for the TTL;
* :func:`settle_leases` ends what a failed cycle left held (its release may have failed too);
* :data:`PULSE` is this process's heartbeat (written by the runtimes' beat thread).

Dead holders. Every runtime process (a Celery pool process, ``email-router run``) writes a
heartbeat to the state store every :data:`HEARTBEAT_INTERVAL` seconds, valid for
:data:`HEARTBEAT_TTL`. A cycle that finds its lease taken asks :func:`holder_is_dead`; when the
holder's heartbeat lapsed (it was killed, lost its machine, or cannot reach the store), the
lease is released by compare-and-set on its token and taken. A live holder is never released:
its heartbeat is fresh, whatever host it runs on. Holders that never beat (operator tools,
pauses, ``email-router poll``) are never called dead; their leases end with their TTL.

Why two pollers never work one mailbox at once: a process stops taking leases (self-fencing)
once its own heartbeat has not been written for :data:`FENCE_AFTER` seconds, before others may
call it dead (``HEARTBEAT_TTL``). A process that was frozen (a VM pause, SIGSTOP) and resumes
after its lease was taken over still holds the old token: its cursor writes raise LeaseLost and
every ledger move is a compare-and-set, so the overlap cannot stage, deliver or send a message
twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from router.config import SystemConfiguration
from router.errors import RouterError
from router.ledger.moves import HANDLED
from router.state import keys
from router.state.base import HeartbeatState, Lease, PollStart, StateStore

log = logging.getLogger(__name__)

_Taken = TypeVar("_Taken")

#: Seconds an operator command (``state reset``) may hold an instance's lease: it only writes
#: two small records, and a crashed command must not keep the mailbox waiting for long.
OPERATOR_LEASE_TTL = 30.0

#: Seconds a heartbeat keeps its process alive: after that without a beat, its leases are free.
HEARTBEAT_TTL = 15.0
#: Seconds between two beats (three chances to beat before the TTL runs out).
HEARTBEAT_INTERVAL = 5.0
#: Seconds without a beat after which a process takes no new lease: shorter than the TTL, so
#: it stands aside before any other process may call it dead.
FENCE_AFTER = 10.0
#: Seconds the store remembers a process that stopped beating (at least twice the lease TTL):
#: a holder forgotten sooner could no longer be told dead from "never beat".
HEARTBEAT_MEMORY = 86400.0


def holder_id() -> str:
    """Who is working: ``host:pid:thread`` (the lease holder ``status`` shows).

    Use it as the holder of every lease a cycle takes; :func:`holder_is_dead` parses it back.
    """
    return f"{_process_prefix()}{threading.get_ident() % 100000}"


def tool_holder(tool: str) -> str:
    """The holder of a lease taken by the one-off command ``tool`` (``tool@host:pid:thread``).

    The prefix tells ``status`` readers it is an operator, and never looks dead to
    :func:`holder_is_dead` (its host part is not a host name).
    """
    return f"{tool}@{holder_id()}"


def _process_prefix() -> str:
    """``host:pid:``, the part of :func:`holder_id` shared by every thread of this process."""
    return f"{process_id()}:"


def process_id() -> str:
    """``host:pid``: this process, as its heartbeat and the holders of its threads name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_of(holder: str) -> str | None:
    """The ``host:pid`` of a :func:`holder_id`; None for a tool or any other format."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if not host or "@" in host or not pid.isdigit():
        return None
    return f"{host}:{pid}"


def holder_is_dead(holder: str, store: StateStore | None = None) -> bool:
    """True when the process ``holder`` names is dead: the rule before freeing its lease.

    Dead is: its heartbeat in ``store`` lapsed, or - for a process that never beat, or when no
    store is given - it was a process of this host that no longer exists. A fresh heartbeat
    always means alive (whatever the host), and so do this process, an operator tool and a
    holder in another format. A store that cannot answer means "alive": when in doubt, the
    lease ends with its TTL.
    """
    process = _process_of(holder)
    if process is None or process == process_id():
        return False
    state = HeartbeatState.UNKNOWN if store is None else _heartbeat_of(store, process)
    if state is HeartbeatState.UNKNOWN:
        return _local_process_gone(process)
    return state is HeartbeatState.LAPSED


def _heartbeat_of(store: StateStore, process: str) -> HeartbeatState:
    try:
        return store.heartbeat_state(process)
    except RouterError as exc:
        log.warning("heartbeat of %s not readable: %s", process, exc)
        return HeartbeatState.ALIVE


def _local_process_gone(process: str) -> bool:
    """True when ``process`` (``host:pid``) is of this host and no longer runs."""
    host, _, pid = process.partition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def lease_ttl(system: SystemConfiguration) -> float:
    """Seconds a cycle's lease lasts: ``MaxThreadExecution``, a cycle's time limit.

    Use it for every lease a poll, delivery or send cycle takes or renews, and wherever a
    runtime needs the cycle's time limit (Celery's soft limit is the same number).
    """
    return system.max_thread_execution / 1000.0


def instance_leases(name: str) -> tuple[str, ...]:
    """Names of every lease instance ``name`` can hold: its poll / send lease, then delivery."""
    return (name, keys.delivery_lease(name))


def take_poll_lease(
    store: StateStore, name: str, holder: str, system: SystemConfiguration
) -> Lease | None:
    """The lease of one poll or send cycle of ``name``; None while someone else holds it.

    A lease held by a dead process (:func:`holder_is_dead`) is freed and taken; a fenced
    process (see :class:`Pulse`) takes none.
    """
    return _take(store, name, holder, system)


def take_delivery_lease(
    store: StateStore, name: str, holder: str, system: SystemConfiguration
) -> Lease | None:
    """The lease of one CRM delivery run of ``name``'s staged messages; None while held.

    Separate from the poll lease, so a poll and a redelivered CRM task can overlap, but two
    deliveries of the same instance cannot. Dead holders and fencing as for the poll lease.
    """
    return _take(store, keys.delivery_lease(name), holder, system)


def begin_poll(
    store: StateStore, name: str, holder: str, system: SystemConfiguration
) -> PollStart | None:
    """:func:`take_poll_lease` and the reads a poll cycle starts from (cursor, provider state,
    the entries due for post-processing), in one store call (one Redis round trip).

    None while someone else holds the lease (dead holders and fencing as for
    :func:`take_poll_lease`). End the cycle with :meth:`StateStore.end_poll` (or
    ``release_lease`` when it must not be recorded).
    """

    def begin(ttl: float) -> PollStart | None:
        return store.begin_poll(name, holder, ttl, HANDLED)

    start = _take_with(store, name, system, begin)
    if start is not None:
        _CYCLE.took(start.lease)
    return start


def _take(
    store: StateStore, lease_name: str, holder: str, system: SystemConfiguration
) -> Lease | None:
    def acquire(ttl: float) -> Lease | None:
        return store.acquire_lease(lease_name, holder, ttl)

    lease = _take_with(store, lease_name, system, acquire)
    if lease is not None:
        _CYCLE.took(lease)
    return lease


def _take_with(
    store: StateStore,
    lease_name: str,
    system: SystemConfiguration,
    acquire: Callable[[float], _Taken | None],
) -> _Taken | None:
    """``acquire(ttl)``, once more after a dead holder's lease was freed; None if fenced."""
    if not PULSE.admits(store, system):
        return None
    ttl = lease_ttl(system)
    taken = acquire(ttl)
    if taken is None and _release_if_dead(store, lease_name):
        taken = acquire(ttl)
    return taken


class _CycleLeases(threading.local):
    """The leases the current cycle of each thread took (see :func:`settle_leases`)."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []

    def took(self, lease: Lease) -> None:
        # a thread taking a name again is done with its earlier grant of it: the list stays short
        self.leases = [old for old in self.leases if old.instance != lease.instance] + [lease]


_CYCLE = _CycleLeases()


def settle_leases(store: StateStore, *, failed: bool) -> None:
    """End the leases the current thread's cycle took; both runtimes call it after every cycle.

    A cycle releases its leases itself. When it failed, the release may have failed with it
    (the store was unreachable: a Redis restart), and a lease of a live process would block its
    instance for the whole ``MaxThreadExecution``. So after a failed cycle each lease it took
    is released again - compare-and-set on its token, so one already released or taken over
    is left alone - and, while the store cannot be reached, after the process's next beat.
    """
    leases, _CYCLE.leases = _CYCLE.leases, []
    if not failed:
        return
    for lease in leases:
        try:
            store.release_lease(lease)
        except RouterError:
            PULSE.release_later(lease)


def _release_if_dead(store: StateStore, lease_name: str) -> bool:
    """Release ``lease_name`` if a dead process holds it (compare-and-set on its token)."""
    info = store.get_lease(lease_name)
    if info is None or not holder_is_dead(info.holder, store):
        return False
    # only this token is released: if another process took the lease meanwhile, nothing happens
    store.release_lease(Lease(lease_name, info.holder, info.token, info.expires_at))
    log.warning("%s: released the lease of %s, a dead process", lease_name, info.holder)
    return True


def take_operator_lease(store: StateStore, name: str, tool: str) -> Lease | None:
    """The poll lease of ``name`` for a short operator command; None while a cycle holds it."""
    return store.acquire_lease(name, tool_holder(tool), OPERATOR_LEASE_TTL)


def release_own_leases(store: StateStore, name: str) -> None:
    """Release the leases of ``name`` held by this process (shutdown with a cycle stuck)."""
    mine = _process_prefix()
    _release_if(store, name, lambda holder: holder.startswith(mine))


def release_dead_leases(store: StateStore, name: str) -> None:
    """Release leases of ``name`` left by dead processes (at start, before the first cycle).

    After a crash (kill -9, power loss) the instance would otherwise wait for the lease TTL
    (MaxThreadExecution). A live holder is never touched (see :func:`holder_is_dead`).
    """
    _release_if(store, name, lambda holder: holder_is_dead(holder, store))


def _release_if(store: StateStore, name: str, check: Callable[[str], bool]) -> None:
    for lease_name in instance_leases(name):
        try:
            info = store.get_lease(lease_name)
            if info is not None and check(info.holder):
                store.release_lease(Lease(lease_name, info.holder, info.token, info.expires_at))
                log.info("%s: released the lease held by %s", lease_name, info.holder)
        except RouterError as exc:  # one unreachable lease must not stop the others
            log.warning("%s: lease not released: %s", lease_name, exc)


class Pulse:
    """This process's heartbeat: beaten by a runtime's beat thread, asked before every lease.

    Use the module's :data:`PULSE`. Until :meth:`enable` (or a first :meth:`beat`) the process
    does not take part (one-off commands): it is never fenced. Once enabled, a lease is granted
    only while the last successful beat is younger than :data:`FENCE_AFTER`; otherwise one more
    beat is tried on the spot, and the lease is refused while that fails (self-fencing). So no
    lease is ever taken before the process's first beat is in the store.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beating = False
        self._last_ok: float | None = None
        #: leases of failed cycles whose release did not reach the store (settle_leases)
        self._unreleased: list[Lease] = []

    def enable(self) -> None:
        """This process beats from now on: until a beat succeeds, a lease waits for one."""
        with self._lock:
            self._beating = True

    def beat(self, store: StateStore, system: SystemConfiguration) -> bool:
        """Write this process's heartbeat; False (logged) when the store did not take it."""
        self.enable()
        remember = max(HEARTBEAT_MEMORY, 2 * lease_ttl(system))
        try:
            store.beat(process_id(), HEARTBEAT_TTL, remember)
        except RouterError as exc:
            log.warning("heartbeat not written (leases stop after %.0fs): %s", FENCE_AFTER, exc)
            return False
        with self._lock:
            self._last_ok = self._clock()
            unreleased, self._unreleased = self._unreleased, []
        for lease in unreleased:
            self._release(store, lease)
        return True

    def release_later(self, lease: Lease) -> None:
        """Release ``lease`` after the next successful beat (the store is unreachable now)."""
        with self._lock:
            self._unreleased.append(lease)

    def _release(self, store: StateStore, lease: Lease) -> None:
        if lease.expires_at <= time.time():
            return  # expired meanwhile: nothing to release
        try:
            store.release_lease(lease)
        except RouterError:
            self.release_later(lease)

    def fenced(self) -> bool:
        """True when this process beats but its last beat is older than :data:`FENCE_AFTER`."""
        with self._lock:
            if not self._beating:
                return False
            return self._last_ok is None or self._clock() - self._last_ok > FENCE_AFTER

    def admits(self, store: StateStore, system: SystemConfiguration) -> bool:
        """May this process take a lease now? Beats once more first when it is fenced."""
        if not self.fenced() or self.beat(store, system):
            return True
        log.warning("no heartbeat for more than %.0fs: taking no lease", FENCE_AFTER)
        return False

    def reset(self) -> None:
        """Forget the parent's beats in a freshly forked child (it is another process).

        A new lock, not the inherited one: a parent's thread may have held it at the fork.
        """
        self._lock = threading.Lock()
        self._beating, self._last_ok, self._unreleased = False, None, []


#: The heartbeat of this process.
PULSE = Pulse()
# A forked child (a Celery pool process, the provider kit's killed children) is another process:
# it must not inherit the parent's beats, nor a lock a parent's thread held at the fork.
os.register_at_fork(after_in_child=PULSE.reset)


#: Tool name of the lease an operator holds to pause an instance (``console-pause@host:...``).
PAUSE_TOOL = "console-pause"


def take_pause_lease(store: StateStore, name: str, ttl: float) -> Lease | None:
    """Pause ``name`` for ``ttl`` seconds by holding its poll / send lease as an operator.

    Every runtime's next cycle finds the lease held and skips (the same rule that keeps two
    workers off one mailbox), so the pause works alike for ``email-router run`` and Celery.
    None while a cycle holds the lease.
    """
    return store.acquire_lease(name, tool_holder(PAUSE_TOOL), ttl)


def is_pause_holder(holder: str) -> bool:
    """True when ``holder`` is the lease of an operator's pause (:func:`take_pause_lease`)."""
    return holder.startswith(f"{PAUSE_TOOL}@")


def release_pause_lease(store: StateStore, name: str) -> bool:
    """End an operator's pause of ``name``; False when it was not paused that way."""
    info = store.get_lease(name)
    if info is None or not is_pause_holder(info.holder):
        return False
    store.release_lease(Lease(name, info.holder, info.token, info.expires_at))
    return True
