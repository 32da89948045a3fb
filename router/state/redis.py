"""Redis state store: the backend of the distributed (Celery) runtime.

Features:
    * one round trip per operation: every multi-step update is a Lua script (atomic, and a
      compare-and-set where it checks something), reads that need several keys are pipelined;
    * leases are ``SET PX`` keys holding ``"<token>:<holder>"``; the fencing token comes from
      ``INCR`` on a counter that outlives the lease, so it only grows; cursor and provider-state
      writes compare the lease value inside the same script;
    * heartbeats are one key per process holding its alive-until instant on the *server's*
      clock (``TIME`` in a script), so hosts with skewed clocks agree on who is alive;
    * the key schema lives in :mod:`router.state.keys`, ledger records in
      :mod:`router.state.records`; no ``KEYS`` command, cleanup tools use ``SCAN``.

Connection string:
    ``redis://[:password@]host:6379/0``, ``rediss://...`` (TLS), ``unix:///path/redis.sock``;
    redis-py query options such as ``?socket_timeout=2`` apply.

Errors:
    ``ConnectionError``/``TimeoutError`` of redis-py (after its own short retries), and a server
    that is loading, read-only or out of memory, become :class:`~router.errors.StateUnavailable`.
    A stored value that does not decode raises :class:`~router.errors.StateCorrupt` for that
    entry only; :meth:`RedisStore.list_entries` and :meth:`RedisStore.count_entries` skip
    damaged entries and log a warning naming them.

Memory: an idle instance costs about 400 bytes (token, cursor, stats hash, a set member; see
``tests/benchmarks/bench_state_store.py``). Use ``maxmemory-policy noeviction``: an evicted
lease or ledger key would silently break the guarantees.

Not for Redis Cluster: the scripts build raw-message keys from the ledger key.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from router.errors import LeaseLost, StateCorrupt, StateUnavailable
from router.models import LedgerEntry, LedgerState
from router.state import redis_lua as lua
from router.state.base import (
    MSGID_TTL,
    HeartbeatState,
    InstancePeek,
    InstanceStats,
    JsonDict,
    Lease,
    LeaseInfo,
    PollStart,
    StateStore,
)
from router.state.keys import Keys
from router.state.records import build_record, dumps, loads, parse_record, patch_pairs

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


#: Failures that pass: the server is unreachable, loading, read-only after a failover, or full.
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ExecAbortError,
)


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    """Turn passing redis-py failures into StateUnavailable (the runtimes retry those)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except TRANSIENT as exc:
            # redis-py's messages name host and port, never the password
            raise StateUnavailable(f"Redis state store unavailable: {exc}") from exc

    return wrapper


def _states(states: Iterable[LedgerState] | None) -> str:
    """``",a,b,"`` for the scripts; None means every state."""
    chosen = LedgerState if states is None else states
    return "," + ",".join(LedgerState(s).value for s in chosen) + ","


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


#: What the HEARTBEAT script answers.
_HEARTBEAT_STATES = {
    1: HeartbeatState.ALIVE,
    0: HeartbeatState.LAPSED,
    -1: HeartbeatState.UNKNOWN,
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: The fields of an instance's counters hash, in the order :func:`_stats` reads them.
_STATS_FIELDS = ["p", "lp", "ls", "le", "lea"]


def _stats(instance: str, values: list[Any]) -> InstanceStats:
    """The counters from an HMGET of :data:`_STATS_FIELDS`."""
    p, lp, ls, le, lea = (None if v is None else _text(v) for v in values)
    try:
        return InstanceStats(
            processed=int(p or 0),
            last_poll=float(lp) if lp else None,
            last_success=float(ls) if ls else None,
            last_error=le,
            last_error_at=float(lea) if lea else None,
        )
    except ValueError:
        raise StateCorrupt(f"counters of {instance}: stored value is damaged") from None


def _oldest(instance: str, flat: list[Any]) -> float | None:
    """When the entry a LIST script (limit 1) returned was staged; a damaged one counts as now."""
    if not flat:
        return None
    try:
        return parse_record(instance, _text(flat[0]), flat[1]).updated_at
    except StateCorrupt:
        return time.time()


class RedisStore(StateStore):
    """State store on a Redis server; use it whenever more than one process or machine works."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "er", clock: Callable[[], float] = time.time
    ) -> None:
        self._r = client
        self.keys = Keys(prefix)
        self._clock = clock
        self._local = threading.local()  # this thread's batch() pipeline, if any
        self._acquire = client.register_script(lua.ACQUIRE)
        self._renew = client.register_script(lua.RENEW)
        self._release = client.register_script(lua.RELEASE)
        self._fenced_set = client.register_script(lua.FENCED_SET)
        self._create = client.register_script(lua.CREATE)
        self._transition = client.register_script(lua.TRANSITION)
        self._list = client.register_script(lua.LIST)
        self._begin_poll = client.register_script(lua.BEGIN_POLL)
        self._end_poll = client.register_script(lua.END_POLL)
        self._count = client.register_script(lua.COUNT)
        self._delete = client.register_script(lua.DELETE)
        self._purge = client.register_script(lua.PURGE)
        self._beat = client.register_script(lua.BEAT)
        self._heartbeat = client.register_script(lua.HEARTBEAT)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "er", **options: Any) -> RedisStore:
        """Open a pooled client for ``url``; ``options`` go to redis-py's connection pool."""
        options.setdefault("socket_timeout", 10.0)
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("health_check_interval", 30)
        options.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        pool = redis.ConnectionPool.from_url(url, **options)
        return cls(redis.Redis(connection_pool=pool), prefix=prefix)

    def __repr__(self) -> str:  # never show the URL: it may carry a password
        return f"RedisStore(prefix={self.keys.prefix!r})"

    @_guarded
    def ping(self) -> None:
        self._r.ping()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Pipeline the writes nobody waits for an answer to (dropping staged bytes, indexing
        Message-IDs): sent in one round trip when the block ends, even if it ends in an error.

        Measured with bench_ingest (Celery workers): settling a delivered message took three
        round trips (transition, index, drop); inside a delivery chunk's batch it takes one.
        """
        if getattr(self._local, "pipe", None) is not None:
            yield
            return
        pipe = self._r.pipeline(transaction=False)
        self._local.pipe = pipe
        try:
            yield
        finally:
            self._local.pipe = None
            self._send(pipe)

    @_guarded
    def _send(self, pipe: Any) -> None:
        if len(pipe):
            pipe.execute()

    def _writer(self) -> Any:
        """Where a fire-and-forget write goes: the batch's pipeline, or straight to Redis."""
        pipe = getattr(self._local, "pipe", None)
        return self._r if pipe is None else pipe

    def close(self) -> None:
        self._r.close()
        self._r.connection_pool.disconnect()

    # -- leases ---------------------------------------------------------------------------------
    @staticmethod
    def _lease_value(lease: Lease) -> str:
        return f"{lease.token}:{lease.holder}"

    @_guarded
    def acquire_lease(self, instance: str, holder: str, ttl: float) -> Lease | None:
        k = self.keys
        keys = [k.lease(instance), k.token(instance), k.instances()]
        token = self._acquire(keys=keys, args=[holder, _ms(ttl), instance])
        if token is None:
            return None
        return Lease(instance, holder, int(token), self._clock() + ttl)

    @_guarded
    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        keys = [self.keys.lease(lease.instance)]
        if not self._renew(keys=keys, args=[self._lease_value(lease), _ms(ttl)]):
            return None
        return Lease(lease.instance, lease.holder, lease.token, self._clock() + ttl)

    @_guarded
    def release_lease(self, lease: Lease) -> None:
        self._release(keys=[self.keys.lease(lease.instance)], args=[self._lease_value(lease)])

    @_guarded
    def get_lease(self, instance: str) -> LeaseInfo | None:
        key = self.keys.lease(instance)
        pipe = self._r.pipeline(transaction=True)
        pipe.get(key)
        pipe.pttl(key)
        value, pttl = pipe.execute()
        if value is None or pttl < 0:
            return None
        token, holder = _text(value).split(":", 1)
        return LeaseInfo(holder, int(token), self._clock() + pttl / 1000)

    # -- cursor and provider state --------------------------------------------------------------
    def _fenced(self, lease: Lease, target: str, value: JsonDict) -> None:
        keys = [self.keys.lease(lease.instance), target, self.keys.instances()]
        args = [self._lease_value(lease), dumps(value), lease.instance]
        if not self._fenced_set(keys=keys, args=args):
            raise LeaseLost(f"lease of {lease.instance} (token {lease.token}) is no longer held")

    def _get_json(self, key: str, what: str) -> Any:
        raw = self._r.get(key)
        return None if raw is None else loads(raw, what)

    @_guarded
    def get_cursor(self, instance: str) -> JsonDict | None:
        cursor: JsonDict | None = self._get_json(
            self.keys.cursor(instance), f"cursor of {instance}"
        )
        return cursor

    @_guarded
    def set_cursor(self, lease: Lease, cursor: JsonDict) -> None:
        self._fenced(lease, self.keys.cursor(lease.instance), cursor)

    @_guarded
    def get_provider_state(self, instance: str) -> JsonDict:
        what = f"provider state of {instance}"
        state: JsonDict | None = self._get_json(self.keys.pstate(instance), what)
        return state if state is not None else {}

    @_guarded
    def set_provider_state(self, lease: Lease, state: JsonDict) -> None:
        self._fenced(lease, self.keys.pstate(lease.instance), state)

    @_guarded
    def reset_instance(self, instance: str) -> None:
        self._r.delete(self.keys.cursor(instance), self.keys.pstate(instance))

    # -- counters -------------------------------------------------------------------------------
    @_guarded
    def record_poll(self, instance: str, *, processed: int = 0, error: str | None = None) -> None:
        key, stamps = self.keys.stats(instance), self._stamps(error)
        pipe = self._r.pipeline(transaction=True)
        pipe.hincrby(key, "p", processed)
        pipe.hset(key, items=stamps)
        pipe.sadd(self.keys.instances(), instance)
        pipe.execute()

    def _stamps(self, error: str | None) -> list[str]:
        """The counters' field/value pairs a finished poll writes (last poll, success or error)."""
        now = repr(self._clock())
        return ["lp", now, "ls", now] if error is None else ["lp", now, "le", error, "lea", now]

    @_guarded
    def get_stats(self, instance: str) -> InstanceStats:
        return _stats(instance, self._r.hmget(self.keys.stats(instance), _STATS_FIELDS))

    @_guarded
    def peek(self, instances: Iterable[str]) -> dict[str, InstancePeek]:
        """Counters and oldest STAGED entry of every instance: one pipelined round trip."""
        names, staged = list(instances), _states([LedgerState.STAGED])
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.stats(name), _STATS_FIELDS)
            args: list[Any] = [staged, 1, self.keys.order_prefix(name)]
            self._list(keys=[self.keys.ledger(name)], args=args, client=pipe)
        replies = pipe.execute()
        return {
            name: InstancePeek(_stats(name, values), _oldest(name, flat))
            for name, values, flat in zip(names, replies[::2], replies[1::2], strict=True)
        }

    # -- a poll cycle's first and last step: one script each ---------------------------------------
    @_guarded
    def begin_poll(
        self, instance: str, holder: str, ttl: float, states: Iterable[LedgerState]
    ) -> PollStart | None:
        k, wanted = self.keys, _states(states)
        keys = [k.lease(instance), k.token(instance), k.instances(), k.cursor(instance)]
        keys += [k.pstate(instance), k.ledger(instance)]
        args: list[Any] = [holder, _ms(ttl), instance, wanted, k.order_prefix(instance)]
        reply = self._begin_poll(keys=keys, args=args)
        if reply is None:
            return None
        token, cursor, state, flat = reply
        lease = Lease(instance, holder, int(token), self._clock() + ttl)
        return PollStart(
            lease,
            None if cursor is None else loads(cursor, f"cursor of {instance}"),
            {} if state is None else loads(state, f"provider state of {instance}"),
            self._entries(instance, wanted, flat),
        )

    @_guarded
    def end_poll(
        self, lease: Lease, *, processed: int = 0, error: str | None = None
    ) -> InstancePeek:
        k, instance = self.keys, lease.instance
        keys = [k.lease(instance), k.stats(instance), k.instances(), k.ledger(instance)]
        args: list[Any] = [self._lease_value(lease), processed, instance]
        args += [_states([LedgerState.STAGED]), k.order_prefix(instance), len(_STATS_FIELDS)]
        values, flat = self._end_poll(keys=keys, args=[*args, *_STATS_FIELDS, *self._stamps(error)])
        return InstancePeek(_stats(instance, values), _oldest(instance, flat))

    # -- ledger ---------------------------------------------------------------------------------
    def _create_entry(
        self, instance: str, key: str, state: LedgerState, record: str, raw: bytes | None
    ) -> bool:
        k = self.keys
        order = k.order(instance, state.value)
        keys = [k.ledger(instance), k.seq(instance), order, k.raw(instance, key), k.instances()]
        args: list[Any] = [key, record, instance, "0" if raw is None else "1", raw or b""]
        return bool(self._create(keys=keys, args=args))

    @_guarded
    def stage(self, instance: str, key: str, raw: bytes, *, message_id: str | None = None) -> bool:
        pairs = patch_pairs(LedgerState.STAGED, self._clock(), {"message_id": message_id})
        return self._create_entry(
            instance, key, LedgerState.STAGED, build_record(pairs), bytes(raw)
        )

    @_guarded
    def create_entry(
        self, instance: str, key: str, state: LedgerState, **fields: Any
    ) -> LedgerEntry | None:
        record = build_record(patch_pairs(state, self._clock(), fields))
        if not self._create_entry(instance, key, LedgerState(state), record, None):
            return None
        return parse_record(instance, key, record)

    @_guarded
    def get_entry(self, instance: str, key: str) -> LedgerEntry | None:
        record = self._r.hget(self.keys.ledger(instance), key)
        return None if record is None else parse_record(instance, key, record)

    @_guarded
    def transition(
        self,
        instance: str,
        key: str,
        expect: Iterable[LedgerState],
        to: LedgerState,
        **fields: Any,
    ) -> LedgerEntry | None:
        order = self.keys.order_prefix(instance)
        args = [key, _states(expect), order, *patch_pairs(to, self._clock(), fields)]
        result = self._transition(keys=[self.keys.ledger(instance)], args=args)
        if result is None:
            return None
        if result == -1:
            raise StateCorrupt(f"ledger entry {instance}/{key}: stored value is damaged")
        return parse_record(instance, key, result)

    @_guarded
    def list_entries(
        self,
        instance: str,
        states: Iterable[LedgerState] | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """Entries in creation order; a damaged entry is skipped and logged (see get_entry)."""
        wanted = _states(states)
        args: list[Any] = [wanted, limit or 0, self.keys.order_prefix(instance)]
        entries = self._entries(
            instance, wanted, self._list(keys=[self.keys.ledger(instance)], args=args)
        )
        return entries[:limit] if limit else entries

    @staticmethod
    def _entries(instance: str, wanted: str, flat: list[Any]) -> list[LedgerEntry]:
        """The entries of a LIST reply ([key, record, ...]) in the states of ``wanted``."""
        entries = []
        for raw_key, record in zip(flat[::2], flat[1::2], strict=True):
            key = _text(raw_key)
            try:
                entry = parse_record(instance, key, record)
            except StateCorrupt:
                log.warning("state: skipped damaged ledger entry %s/%s", instance, key)
                continue
            if f",{entry.state.value}," in wanted:  # the index is trusted, but verify
                entries.append(entry)
        return entries

    @_guarded
    def count_entries(self, instance: str) -> dict[LedgerState, int]:
        """Sizes of the per-state order indexes: O(states), however long the history."""
        flat = self._count(args=[_states(None), self.keys.order_prefix(instance)])
        return {LedgerState(_text(s)): int(n) for s, n in zip(flat[::2], flat[1::2], strict=True)}

    @_guarded
    def get_raw(self, instance: str, key: str) -> bytes | None:
        raw = self._r.get(self.keys.raw(instance, key))
        return None if raw is None else bytes(raw)  # type: ignore[arg-type]

    @_guarded
    def drop_raw(self, instance: str, key: str) -> None:
        self._writer().delete(self.keys.raw(instance, key))

    @_guarded
    def delete_entry(self, instance: str, key: str) -> None:
        k = self.keys
        args = [key, k.raw(instance, key), _states(None), k.order_prefix(instance)]
        self._delete(keys=[k.ledger(instance)], args=args)

    # -- Message-ID index -----------------------------------------------------------------------
    @_guarded
    def index_message_id(self, message_id: str, instance: str, key: str) -> None:
        self._writer().set(self.keys.msgid(message_id), dumps([instance, key]), ex=MSGID_TTL)

    @_guarded
    def lookup_message_id(self, message_id: str) -> tuple[str, str] | None:
        found = self._get_json(self.keys.msgid(message_id), f"Message-ID index {message_id}")
        return None if found is None else (str(found[0]), str(found[1]))

    # -- heartbeats -----------------------------------------------------------------------------
    @_guarded
    def beat(self, process: str, ttl: float, remember: float) -> None:
        self._beat(keys=[self.keys.heartbeat(process)], args=[_ms(ttl), _ms(remember)])

    @_guarded
    def heartbeat_state(self, process: str) -> HeartbeatState:
        found = int(self._heartbeat(keys=[self.keys.heartbeat(process)]))
        return _HEARTBEAT_STATES[found]

    # -- mailboxes loaded from the CRM ----------------------------------------------------------
    @_guarded
    def set_mailbox_list(self, deployment: str, snapshot: JsonDict) -> None:
        self._writer().hset(self.keys.mailbox_lists(), deployment, dumps(snapshot))

    @_guarded
    def mailbox_lists(self) -> dict[str, JsonDict]:
        found: dict[str, JsonDict] = {}
        for deployment, value in self._r.hgetall(self.keys.mailbox_lists()).items():
            name = _text(deployment)
            try:
                found[name] = loads(value, f"mailbox list of {name}")
            except StateCorrupt as exc:  # one damaged list must not hide the others
                log.warning("%s", exc)
        return found

    # -- the Celery dispatcher's schedule ---------------------------------------------------------
    def due_times(self) -> DueTimes:
        """The due times of this store's instances (:class:`DueTimes`, same server and prefix)."""
        return DueTimes(self._r, self.keys)

    # -- housekeeping ---------------------------------------------------------------------------
    @_guarded
    def instances(self) -> list[str]:
        return sorted(_text(m) for m in self._r.smembers(self.keys.instances()))

    @_guarded
    def purge(self, instance: str, states: Iterable[LedgerState], older_than: float) -> int:
        k = self.keys
        args = [_states(states), repr(float(older_than)), k.raw_prefix(instance)]
        return int(self._purge(keys=[k.ledger(instance)], args=[*args, k.order_prefix(instance)]))


#: Instances per script call when syncing the schedule: one call stays well under a millisecond
#: of server time per thousand, so a sync of 100,000 never blocks Redis for long.
_SYNC_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Claim:
    """What one :meth:`DueTimes.claim` took: the server's ``now`` and each instance's due instant.

    Instants are seconds on the Redis server's clock, so every dispatcher measures lag alike.
    """

    now: float
    due: list[tuple[str, float]]


class DueTimes:
    """The next due instant of every scheduled instance, in Redis; use it from the dispatcher.

    A sorted set (instance -> next due, ms on the server's clock) and a hash of periods
    (:meth:`router.state.keys.Keys.due` / ``period``). :meth:`sync` makes them follow the
    configuration; :meth:`claim` pops what is due and re-inserts it one period later in one
    atomic script, so any number of dispatchers share the work without running one due instant
    twice or skipping one. Get it from :meth:`RedisStore.due_times`.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r, self._keys = client, keys
        self._sync = client.register_script(lua.DUE_SYNC)
        self._drop = client.register_script(lua.DUE_DROP)
        self._claim = client.register_script(lua.DUE_CLAIM)

    def _both(self) -> list[str]:
        return [self._keys.due(), self._keys.period()]

    @_guarded
    def sync(self, periods: Mapping[str, float], phases: Mapping[str, float]) -> tuple[int, int]:
        """Schedule exactly the instances of ``periods`` (seconds); returns (added, dropped).

        A new instance is first due ``phases[name] * period`` from now (0 <= phase < 1); a
        known one keeps its due instant unless its period shrank below the time left.
        """
        scheduled = {_text(n) for n in self._r.hkeys(self._keys.period())}
        gone = sorted(scheduled - set(periods))
        dropped = sum(
            int(self._drop(keys=self._both(), args=gone[i : i + _SYNC_CHUNK]))
            for i in range(0, len(gone), _SYNC_CHUNK)
        )
        names, added = sorted(periods), 0
        for i in range(0, len(names), _SYNC_CHUNK):
            args: list[str] = []
            for name in names[i : i + _SYNC_CHUNK]:
                args += [name, str(_ms(periods[name])), repr(phases.get(name, 0.0))]
            added += int(self._sync(keys=self._both(), args=args))
        return added, dropped

    @_guarded
    def claim(self, limit: int) -> Claim:
        """Take up to ``limit`` instances due by now (earliest first), moved one period on."""
        found = self._claim(keys=self._both(), args=[limit])
        now, rest = int(found[0]) / 1000.0, found[1:]
        pairs = [(_text(rest[i]), int(rest[i + 1]) / 1000.0) for i in range(0, len(rest), 2)]
        return Claim(now, pairs)

    @_guarded
    def due_at(self, name: str) -> float | None:
        """When ``name`` is next due (seconds, server clock); None when it is not scheduled."""
        score = self._r.zscore(self._keys.due(), name)
        return None if score is None else float(score) / 1000.0

    @_guarded
    def scheduled(self) -> int:
        """How many instances are scheduled."""
        return int(self._r.zcard(self._keys.due()))
