"""Redis state store: the backend of the distributed (Celery) runtime.

Features:
    * one round trip per operation: every multi-step update is a Lua script (atomic, and a
      compare-and-set where it checks something), reads that need several keys are pipelined;
    * leases are ``SET PX`` keys holding ``"<token>:<holder>"``; the fencing token comes from
      ``INCR`` on a counter that outlives the lease, so it only grows; cursor and provider-state
      writes compare the lease value inside the same script;
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from router.errors import LeaseLost, StateCorrupt, StateUnavailable
from router.models import LedgerEntry, LedgerState
from router.state import redis_lua as lua
from router.state.base import MSGID_TTL, InstanceStats, JsonDict, Lease, LeaseInfo, StateStore
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
        self._count = client.register_script(lua.COUNT)
        self._delete = client.register_script(lua.DELETE)
        self._purge = client.register_script(lua.PURGE)

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
        now, key = repr(self._clock()), self.keys.stats(instance)
        stamps = ["lp", now, "ls", now] if error is None else ["lp", now, "le", error, "lea", now]
        pipe = self._r.pipeline(transaction=True)
        pipe.hincrby(key, "p", processed)
        pipe.hset(key, items=stamps)
        pipe.sadd(self.keys.instances(), instance)
        pipe.execute()

    @_guarded
    def get_stats(self, instance: str) -> InstanceStats:
        values = self._r.hmget(self.keys.stats(instance), ["p", "lp", "ls", "le", "lea"])
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
        flat = self._list(keys=[self.keys.ledger(instance)], args=args)
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
        return entries[:limit] if limit else entries

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

    # -- housekeeping ---------------------------------------------------------------------------
    @_guarded
    def instances(self) -> list[str]:
        return sorted(_text(m) for m in self._r.smembers(self.keys.instances()))

    @_guarded
    def purge(self, instance: str, states: Iterable[LedgerState], older_than: float) -> int:
        k = self.keys
        args = [_states(states), repr(float(older_than)), k.raw_prefix(instance)]
        return int(self._purge(keys=[k.ledger(instance)], args=[*args, k.order_prefix(instance)]))
