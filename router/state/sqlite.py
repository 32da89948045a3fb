"""SQLite state store: the embedded default of the single-process mode (``email-router run``).

Features:
    * WAL journal with ``synchronous=FULL``: every commit is fsynced before it returns, so a
      message counts as staged only once it survives a power cut, not just a process crash (with
      NORMAL, WAL may lose the last commits on power loss, and the mail server would already have
      been told to delete the message - invariant 1). Pass ``synchronous="NORMAL"`` to trade that
      for speed where the disk is already protected.
    * one connection per thread (and per process after a fork); every check-then-write runs in a
      ``BEGIN IMMEDIATE`` transaction, which takes the database's write lock before reading, so
      concurrent threads *and* processes on the same file see compare-and-set semantics;
      ``busy_timeout`` makes a waiting writer queue instead of failing.
    * versioned schema (``meta.schema_version``); a file written by a newer version is refused.

Connection string: ``sqlite:///relative/state.db`` or ``sqlite:////absolute/state.db``, with
optional ``?synchronous=NORMAL`` and ``busy_timeout=<seconds>`` (default 15).

Errors: a locked or unreadable database raises :class:`~router.errors.StateUnavailable`; a ledger
row, cursor or provider state that does not decode raises :class:`~router.errors.StateCorrupt`
for that row only - :meth:`SqliteStore.list_entries` and :meth:`SqliteStore.count_entries` skip
damaged rows and log a warning naming them.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar
from urllib.parse import parse_qsl

from router.errors import ConfigError, LeaseLost, StateCorrupt, StateUnavailable
from router.models import LedgerEntry, LedgerState
from router.state.base import (
    MSGID_TTL,
    HeartbeatState,
    InstanceStats,
    JsonDict,
    Lease,
    LeaseInfo,
    StateStore,
)
from router.state.memory import apply_fields
from router.state.records import check_fields, dumps, loads

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    instance TEXT PRIMARY KEY, holder TEXT, token INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (instance TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS provider_state (instance TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (
    instance TEXT PRIMARY KEY, processed INTEGER NOT NULL, last_poll REAL, last_success REAL,
    last_error TEXT, last_error_at REAL);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL, key TEXT NOT NULL,
    state TEXT NOT NULL, updated_at REAL NOT NULL, data TEXT NOT NULL, UNIQUE (instance, key));
CREATE INDEX IF NOT EXISTS ledger_order ON ledger (instance, seq);
CREATE INDEX IF NOT EXISTS ledger_state_seq ON ledger (instance, state, seq);
CREATE TABLE IF NOT EXISTS raw (
    instance TEXT NOT NULL, key TEXT NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (instance, key));
CREATE TABLE IF NOT EXISTS msgids (
    message_id TEXT PRIMARY KEY, instance TEXT NOT NULL, key TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS msgids_age ON msgids (created_at);
CREATE TABLE IF NOT EXISTS heartbeats (
    process TEXT PRIMARY KEY, alive_until REAL NOT NULL, forget_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mailbox_lists (deployment TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_STATS_UPSERT = """
INSERT INTO stats VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (instance) DO UPDATE SET
    processed = processed + excluded.processed, last_poll = excluded.last_poll,
    last_success = coalesce(excluded.last_success, last_success),
    last_error = coalesce(excluded.last_error, last_error),
    last_error_at = coalesce(excluded.last_error_at, last_error_at)
"""

_LEASE_UPSERT = """
INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (instance) DO UPDATE SET
    holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at
"""

_HEARTBEAT_UPSERT = """
INSERT INTO heartbeats VALUES (?, ?, ?) ON CONFLICT (process) DO UPDATE SET
    alive_until = excluded.alive_until, forget_at = excluded.forget_at
"""

_INSTANCES = """
SELECT instance FROM leases UNION SELECT instance FROM cursors
UNION SELECT instance FROM provider_state UNION SELECT instance FROM stats
UNION SELECT DISTINCT instance FROM ledger ORDER BY 1
"""


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    """Turn sqlite3 errors (locked, I/O, damaged file) into StateUnavailable."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise StateUnavailable(f"SQLite state store failed: {exc}") from exc

    return wrapper


def _savepoint(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A nested transaction: undone alone if its block fails, committed with the outer one."""
    conn.execute("SAVEPOINT nested")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK TO nested")
        conn.execute("RELEASE nested")
        raise
    conn.execute("RELEASE nested")


def _alive(pid: int, ref: weakref.ref[threading.Thread], conn: sqlite3.Connection) -> bool:
    """Whether ``conn``'s thread still runs; if not, close ``conn`` (threads come and go).

    Connections inherited over fork are forgotten, never closed: closing one in the child could
    touch the parent's locks and WAL.
    """
    if pid != os.getpid():
        return False
    thread = ref()
    if thread is not None and thread.is_alive():
        return True
    conn.close()
    return False


def _placeholders(values: list[str]) -> str:
    return ",".join("?" * len(values))


def _state_values(states: Iterable[LedgerState]) -> list[str]:
    return [LedgerState(s).value for s in states]


def _data(entry: LedgerEntry) -> str:
    """The JSON column of a ledger row: the fields that are not columns, defaults left out."""
    data = {"m": entry.message_id, "a": entry.activity_id, "r": entry.reason}
    values: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
    if entry.attempts:
        values["n"] = entry.attempts
    if entry.extra:
        values["x"] = entry.extra
    return dumps(values)


def _entry(instance: str, key: str, state: str, updated_at: float, data: str) -> LedgerEntry:
    """Build an entry from a row; raises StateCorrupt when the row does not decode."""
    what = f"ledger entry {instance}/{key}"
    values = loads(data, what)
    try:
        return LedgerEntry(
            instance,
            key,
            LedgerState(state),
            float(updated_at),
            message_id=values.get("m"),
            activity_id=values.get("a"),
            reason=values.get("r"),
            attempts=int(values.get("n", 0)),
            extra=dict(values.get("x", {})),
        )
    except (ValueError, TypeError, AttributeError):
        raise StateCorrupt(f"{what}: stored value is damaged") from None


def enter_wal(conn: sqlite3.Connection, patience: float) -> None:
    """``PRAGMA journal_mode = WAL`` on ``conn``, retried for up to ``patience`` seconds.

    SQLite does not call the busy handler for this pragma: two processes opening a new file at
    once (``run`` and ``console`` started together by the demo) got "database is locked" at
    once, about once in 60 rounds of six processes opening one new file (none in 150 with this).
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SqliteStore(StateStore):
    """State store in one SQLite file; use it when one machine runs everything."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 15.0,
        create: bool = True,
    ) -> None:
        """Open (and with ``create``, make) the file; ``create=False`` opens it read-only.

        Use ``create=False`` for commands that only look (``status``, ``state show``): a missing
        file raises StateUnavailable instead of leaving a new, empty database behind.
        """
        if str(path) == ":memory:":  # every thread would get its own, empty database
            raise ConfigError("StateStore: use memory:// instead of an in-memory SQLite database")
        self.path = Path(path)
        self._clock = clock
        self._synchronous = synchronous
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._all: list[tuple[int, weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        self._read_only = not create
        if self._read_only:
            self._check_exists()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnavailable(f"SQLite state store {self.path}: {exc.strerror}") from exc
        self._init_schema()

    def _check_exists(self) -> None:
        if not self.path.is_file():
            raise StateUnavailable(
                f"SQLite state store {self.path}: no such file (nothing has run with this state "
                "yet); check --state, ROUTER_STATE_URL or <StateStore>"
            )

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SqliteStore:
        """Open ``sqlite:///path[?synchronous=NORMAL&busy_timeout=30]`` (``create``: see init)."""
        path, _, query = _sqlite_path(url).partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True))
        sync = options.pop("synchronous", "FULL").upper()
        timeout = options.pop("busy_timeout", "15")
        if options or sync not in ("FULL", "NORMAL") or not timeout.replace(".", "", 1).isdigit():
            raise ConfigError(
                f"StateStore: {url!r}: the options are synchronous=FULL|NORMAL and "
                "busy_timeout=<seconds>"
            )
        mode: Literal["FULL", "NORMAL"] = "FULL" if sync == "FULL" else "NORMAL"
        return cls(path or "state.db", synchronous=mode, busy_timeout=float(timeout), create=create)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- connections and transactions -----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        target: str | Path = self.path
        if self._read_only:  # mode=ro: SQLite neither creates nor writes the file
            target = f"{self.path.absolute().as_uri()}?mode=ro"
        conn = sqlite3.connect(
            target,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_ms / 1000,
            uri=self._read_only,
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        if not self._read_only:
            enter_wal(conn, self._busy_ms / 1000)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        me = threading.current_thread()
        with self._all_lock:
            self._all = [(pid, t, c) for pid, t, c in self._all if _alive(pid, t, c)]
            self._all.append((os.getpid(), weakref.ref(me), conn))
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own: never share one over fork)."""
        pid, conn = getattr(self._local, "owner", (None, None))
        if conn is None or pid != os.getpid():
            conn = self._connect()
            self._local.owner = (os.getpid(), conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its first read."""
        conn = self._conn()
        if conn.in_transaction and getattr(self._local, "batch", False):
            yield from _savepoint(conn)  # inside batch(): the enclosing transaction commits
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also after a failed COMMIT, or the next BEGIN would fail
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction (one fsync) for every write this thread makes inside the block.

        Measured with bench_ingest (10 threads, synchronous=FULL): settling a delivered message
        took 3 commits, staging one 1 - each an fsync, serialised by SQLite's write lock.
        """
        if getattr(self._local, "batch", False):
            yield
            return
        try:
            with self._tx():
                self._local.batch = True
                try:
                    yield
                finally:
                    self._local.batch = False
        except sqlite3.DatabaseError as exc:
            raise StateUnavailable(f"SQLite state store failed: {exc}") from exc

    @_guarded
    def _init_schema(self) -> None:
        with self._tx() as conn:
            # executescript() would COMMIT first; run statement by statement inside the lock
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateUnavailable(
                    f"{self.path}: written by a newer email-router (schema {row[0]}, "
                    f"this version knows {SCHEMA_VERSION})"
                )

    @_guarded
    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for pid, _, conn in conns:
            if pid == os.getpid():  # a forked child must not close its parent's connections
                conn.close()
        self._local = threading.local()

    # -- leases ---------------------------------------------------------------------------------
    @_guarded
    def acquire_lease(self, instance: str, holder: str, ttl: float) -> Lease | None:
        with self._tx() as conn:
            now = self._clock()
            row = conn.execute(
                "SELECT holder, token, expires_at FROM leases WHERE instance = ?", (instance,)
            ).fetchone()
            if row is not None and row[0] is not None and row[2] > now:
                return None
            lease = Lease(instance, holder, (row[1] if row else 0) + 1, now + ttl)
            conn.execute(_LEASE_UPSERT, (instance, holder, lease.token, lease.expires_at))
            return lease

    @_guarded
    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        now = self._clock()
        cur = self._conn().execute(
            "UPDATE leases SET expires_at = ? WHERE instance = ? AND holder = ? AND token = ?"
            " AND expires_at > ?",
            (now + ttl, lease.instance, lease.holder, lease.token, now),
        )
        if cur.rowcount != 1:
            return None
        return Lease(lease.instance, lease.holder, lease.token, now + ttl)

    @_guarded
    def release_lease(self, lease: Lease) -> None:
        self._conn().execute(
            "UPDATE leases SET holder = NULL, expires_at = 0"
            " WHERE instance = ? AND holder = ? AND token = ?",
            (lease.instance, lease.holder, lease.token),
        )

    @_guarded
    def get_lease(self, instance: str) -> LeaseInfo | None:
        row = (
            self._conn()
            .execute(
                "SELECT holder, token, expires_at FROM leases"
                " WHERE instance = ? AND holder IS NOT NULL AND expires_at > ?",
                (instance, self._clock()),
            )
            .fetchone()
        )
        return LeaseInfo(row[0], row[1], row[2]) if row else None

    # -- cursor and provider state --------------------------------------------------------------
    def _fenced_set(self, table: str, lease: Lease, value: JsonDict) -> None:
        text = dumps(value)
        with self._tx() as conn:
            held = conn.execute(
                "SELECT 1 FROM leases WHERE instance = ? AND holder = ? AND token = ?"
                " AND expires_at > ?",
                (lease.instance, lease.holder, lease.token, self._clock()),
            ).fetchone()
            if held is None:
                raise LeaseLost(
                    f"lease of {lease.instance} (token {lease.token}) is no longer held"
                )
            conn.execute(
                f"INSERT INTO {table} VALUES (?, ?)"
                " ON CONFLICT (instance) DO UPDATE SET value = excluded.value",
                (lease.instance, text),
            )

    def _get_json(self, table: str, instance: str, what: str) -> Any:
        row = (
            self._conn()
            .execute(f"SELECT value FROM {table} WHERE instance = ?", (instance,))
            .fetchone()
        )
        return None if row is None else loads(row[0], f"{what} of {instance}")

    @_guarded
    def get_cursor(self, instance: str) -> JsonDict | None:
        cursor: JsonDict | None = self._get_json("cursors", instance, "cursor")
        return cursor

    @_guarded
    def set_cursor(self, lease: Lease, cursor: JsonDict) -> None:
        self._fenced_set("cursors", lease, cursor)

    @_guarded
    def get_provider_state(self, instance: str) -> JsonDict:
        state: JsonDict | None = self._get_json("provider_state", instance, "provider state")
        return state if state is not None else {}

    @_guarded
    def set_provider_state(self, lease: Lease, state: JsonDict) -> None:
        self._fenced_set("provider_state", lease, state)

    @_guarded
    def reset_instance(self, instance: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM cursors WHERE instance = ?", (instance,))
            conn.execute("DELETE FROM provider_state WHERE instance = ?", (instance,))

    # -- counters -------------------------------------------------------------------------------
    @_guarded
    def record_poll(self, instance: str, *, processed: int = 0, error: str | None = None) -> None:
        now = self._clock()
        ok, failed = (now, None) if error is None else (None, now)
        self._conn().execute(_STATS_UPSERT, (instance, processed, now, ok, error, failed))

    @_guarded
    def get_stats(self, instance: str) -> InstanceStats:
        row = (
            self._conn()
            .execute(
                "SELECT processed, last_poll, last_success, last_error, last_error_at"
                " FROM stats WHERE instance = ?",
                (instance,),
            )
            .fetchone()
        )
        return InstanceStats(*row) if row else InstanceStats()

    # -- ledger ---------------------------------------------------------------------------------
    def _insert(self, conn: sqlite3.Connection, entry: LedgerEntry) -> bool:
        cur = conn.execute(
            "INSERT INTO ledger (instance, key, state, updated_at, data) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (instance, key) DO NOTHING",
            (entry.instance, entry.key, entry.state.value, entry.updated_at, _data(entry)),
        )
        return cur.rowcount == 1

    @_guarded
    def stage(self, instance: str, key: str, raw: bytes, *, message_id: str | None = None) -> bool:
        entry = LedgerEntry(instance, key, LedgerState.STAGED, self._clock(), message_id)
        with self._tx() as conn:
            if not self._insert(conn, entry):
                return False
            conn.execute("INSERT OR REPLACE INTO raw VALUES (?, ?, ?)", (instance, key, raw))
            return True

    @_guarded
    def create_entry(
        self, instance: str, key: str, state: LedgerState, **fields: Any
    ) -> LedgerEntry | None:
        entry = apply_fields(LedgerEntry(instance, key, state, 0.0), fields, self._clock())
        with self._tx() as conn:
            return entry if self._insert(conn, entry) else None

    def _row(self, conn: sqlite3.Connection, instance: str, key: str) -> LedgerEntry | None:
        row = conn.execute(
            "SELECT state, updated_at, data FROM ledger WHERE instance = ? AND key = ?",
            (instance, key),
        ).fetchone()
        return None if row is None else _entry(instance, key, *row)

    @_guarded
    def get_entry(self, instance: str, key: str) -> LedgerEntry | None:
        return self._row(self._conn(), instance, key)

    @_guarded
    def transition(
        self,
        instance: str,
        key: str,
        expect: Iterable[LedgerState],
        to: LedgerState,
        **fields: Any,
    ) -> LedgerEntry | None:
        check_fields(fields)
        expected = set(expect)
        with self._tx() as conn:
            entry = self._row(conn, instance, key)
            if entry is None or entry.state not in expected:
                return None
            new = apply_fields(replace(entry, state=to), fields, self._clock())
            conn.execute(
                "UPDATE ledger SET state = ?, updated_at = ?, data = ?"
                " WHERE instance = ? AND key = ?",
                (to.value, new.updated_at, _data(new), instance, key),
            )
            return new

    @_guarded
    def list_entries(
        self,
        instance: str,
        states: Iterable[LedgerState] | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """Entries in creation order; a damaged row is skipped and logged (see get_entry)."""
        sql = "SELECT key, state, updated_at, data FROM ledger WHERE instance = ?"
        params: list[Any] = [instance]
        if states is not None:
            values = _state_values(states)
            sql += f" AND state IN ({_placeholders(values)})"
            params += values
        entries: list[LedgerEntry] = []
        for key, *row in self._conn().execute(sql + " ORDER BY seq", params):
            if limit is not None and len(entries) >= limit:
                break
            try:
                entries.append(_entry(instance, key, *row))
            except StateCorrupt:
                log.warning("state: skipped damaged ledger entry %s/%s", instance, key)
        return entries

    @_guarded
    def count_entries(self, instance: str) -> dict[LedgerState, int]:
        rows = self._conn().execute(
            "SELECT state, count(*) FROM ledger WHERE instance = ? GROUP BY state", (instance,)
        )
        counts: dict[LedgerState, int] = {}
        for state, n in rows:
            try:
                counts[LedgerState(state)] = n
            except ValueError:
                log.warning("state: %d damaged ledger entries of %s not counted", n, instance)
        return counts

    @_guarded
    def get_raw(self, instance: str, key: str) -> bytes | None:
        row = (
            self._conn()
            .execute("SELECT bytes FROM raw WHERE instance = ? AND key = ?", (instance, key))
            .fetchone()
        )
        return bytes(row[0]) if row else None

    @_guarded
    def drop_raw(self, instance: str, key: str) -> None:
        self._conn().execute("DELETE FROM raw WHERE instance = ? AND key = ?", (instance, key))

    @_guarded
    def delete_entry(self, instance: str, key: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM raw WHERE instance = ? AND key = ?", (instance, key))
            conn.execute("DELETE FROM ledger WHERE instance = ? AND key = ?", (instance, key))

    # -- Message-ID index -----------------------------------------------------------------------
    @_guarded
    def index_message_id(self, message_id: str, instance: str, key: str) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO msgids VALUES (?, ?, ?, ?)",
            (message_id, instance, key, self._clock()),
        )

    @_guarded
    def lookup_message_id(self, message_id: str) -> tuple[str, str] | None:
        row = (
            self._conn()
            .execute("SELECT instance, key FROM msgids WHERE message_id = ?", (message_id,))
            .fetchone()
        )
        return (row[0], row[1]) if row else None

    # -- heartbeats -----------------------------------------------------------------------------
    @_guarded
    def beat(self, process: str, ttl: float, remember: float) -> None:
        now = self._clock()
        with self._tx() as conn:
            conn.execute("DELETE FROM heartbeats WHERE forget_at <= ?", (now,))
            conn.execute(_HEARTBEAT_UPSERT, (process, now + ttl, now + remember))

    @_guarded
    def heartbeat_state(self, process: str) -> HeartbeatState:
        now = self._clock()
        row = (
            self._conn()
            .execute(
                "SELECT alive_until FROM heartbeats WHERE process = ? AND forget_at > ?",
                (process, now),
            )
            .fetchone()
        )
        if row is None:
            return HeartbeatState.UNKNOWN
        return HeartbeatState.ALIVE if row[0] > now else HeartbeatState.LAPSED

    # -- mailboxes loaded from the CRM ----------------------------------------------------------
    @_guarded
    def set_mailbox_list(self, deployment: str, snapshot: JsonDict) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO mailbox_lists VALUES (?, ?)", (deployment, dumps(snapshot))
            )

    @_guarded
    def mailbox_lists(self) -> dict[str, JsonDict]:
        try:
            rows = self._conn().execute("SELECT deployment, value FROM mailbox_lists").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return {}  # a file written before lists were recorded, opened read-only
        return _decoded_lists(rows)

    # -- housekeeping ---------------------------------------------------------------------------
    @_guarded
    def instances(self) -> list[str]:
        return [row[0] for row in self._conn().execute(_INSTANCES)]

    @_guarded
    def purge(self, instance: str, states: Iterable[LedgerState], older_than: float) -> int:
        values = _state_values(states)
        where = (
            f"instance = ? AND state IN ({_placeholders(values)}) AND updated_at < ?",
            [instance, *values, older_than],
        )
        with self._tx() as conn:
            conn.execute(
                f"DELETE FROM raw WHERE instance = ? AND key IN (SELECT key FROM ledger WHERE"
                f" {where[0]})",
                [instance, *where[1]],
            )
            # housekeeping also ages out the global Message-ID index (cheap: indexed by age)
            conn.execute("DELETE FROM msgids WHERE created_at < ?", (self._clock() - MSGID_TTL,))
            return conn.execute(f"DELETE FROM ledger WHERE {where[0]}", where[1]).rowcount


def _decoded_lists(rows: Iterable[tuple[str, str]]) -> dict[str, JsonDict]:
    """The recorded mailbox lists; a damaged one is logged and left out."""
    found: dict[str, JsonDict] = {}
    for deployment, value in rows:
        try:
            found[deployment] = loads(value, f"mailbox list of {deployment}")
        except StateCorrupt as exc:
            log.warning("%s", exc)
    return found


def _sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise ConfigError(f"StateStore: {url!r} is not sqlite:///path (three slashes)")
    return rest[3:] or "state.db"
