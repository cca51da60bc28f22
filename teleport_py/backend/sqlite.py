"""The default backend: one SQLite file, written by one dedicated thread.

One thread owns the connection, so writes are serialized without locks and a
read-check-write (create, update, compare-and-swap) is atomic. WAL with
``synchronous=FULL`` makes a write durable before its Deferred fires.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
from contextlib import contextmanager

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from .interface import DELETE, PUT, BackendInUseError, Event, Item, StoreBackend, store_each

log = Logger()

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_expires ON items (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""

_COLUMNS = "key, value, expires, revision"
_LIVE = "(expires IS NULL OR expires > ?)"


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string after every string starting with ``prefix``
    (``None``: no bound), so prefix scans are range scans and no key character
    is ever a wildcard."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _key_range(prefix: str, first: str | None = None) -> tuple[str, tuple]:
    start = (first if first is not None else prefix).encode("utf-8")
    end = prefix_end(prefix.encode("utf-8"))
    if end is None:
        return "key >= ?", (start,)
    return "key >= ? AND key < ?", (start, end)


def _open_private(path: str) -> None:
    """Create the file owner-only (it holds CA keys); SQLite gives its -wal and
    -shm files the same mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode != 0o600:
            log.warn("backend file mode tightened path={path} mode={mode:o}", path=path, mode=mode)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _lock_exclusively(path: str) -> int:
    """
    Hold ``<path>.lock`` for as long as the store is open. Watches and the
    revision counter live in the process that opened the file, so a second
    process writing the same file (a second auth started by mistake) would
    go unseen by the first; refuse it instead. The kernel drops the lock when
    the process dies, even by kill -9.
    """
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BackendInUseError(f"{path} is already open in another process (lock {lock_path})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class _SQLiteStore:
    """Synchronous store on one connection; only the backend's thread calls it.
    Every method that writes returns ``(result, events)``."""

    def __init__(self, path: str):
        _open_private(path)
        self._lock = _lock_exclusively(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except BaseException:
            os.close(self._lock)
            raise
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL journal mode, got {mode!r}")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown backend schema version {version}")
            self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            self._revision = self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        except BaseException:
            self._db.close()
            os.close(self._lock)
            raise

    @contextmanager
    def _transaction(self):
        revision = self._revision
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._revision,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._revision = revision
            raise

    def _select(self, where: str, parameters: tuple, limit: int | None = None) -> list[Item]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM items WHERE {where} ORDER BY key LIMIT ?",
            (*parameters, -1 if limit is None else limit),
        )
        return [Item(key.decode("utf-8"), value, expires, revision) for key, value, expires, revision in rows]

    def _live(self, key: str, now: float) -> Item | None:
        found = self._select(f"key = ? AND {_LIVE}", (key.encode("utf-8"), now))
        return found[0] if found else None

    def _store(self, item: Item):
        self._revision += 1
        stored = attrs.evolve(item, revision=self._revision)
        self._db.execute(
            f"INSERT OR REPLACE INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?)",
            (stored.key.encode("utf-8"), stored.value, stored.expires, stored.revision),
        )
        return stored, [Event(PUT, stored)]

    def _remove(self, items: list[Item]) -> list[Event]:
        self._db.executemany("DELETE FROM items WHERE key = ?", [(item.key.encode("utf-8"),) for item in items])
        events = []
        for item in items:
            self._revision += 1
            events.append(Event(DELETE, attrs.evolve(item, revision=self._revision)))
        return events

    def get(self, key: str, now: float) -> Item | None:
        return self._live(key, now)

    def get_range(self, prefix: str, limit: int | None, now: float, start: str | None = None) -> list[Item]:
        where, parameters = _key_range(prefix, start)
        return self._select(f"{where} AND {_LIVE}", (*parameters, now), limit)

    def put(self, item: Item, now: float):
        with self._transaction():
            return self._store(item)

    def put_all(self, items: list[Item], now: float):
        with self._transaction():
            return store_each(self._store, items)

    def create(self, item: Item, now: float):
        with self._transaction():
            if self._live(item.key, now) is not None:
                return None, []
            return self._store(item)

    def update(self, item: Item, now: float):
        with self._transaction():
            if self._live(item.key, now) is None:
                return None, []
            return self._store(item)

    def compare_and_swap(self, item: Item, expected: bytes, now: float):
        with self._transaction():
            current = self._live(item.key, now)
            if current is None or current.value != expected:
                return None, []
            return self._store(item)

    def delete(self, key: str, now: float):
        with self._transaction():
            current = self._live(key, now)
            if current is None:
                return False, []
            return True, self._remove([current])

    def delete_range(self, prefix: str, now: float):
        with self._transaction():
            doomed = self.get_range(prefix, None, now)
            return len(doomed), self._remove(doomed)

    def sweep(self, now: float):
        # Checked outside a transaction so an idle sweep writes nothing.
        if not self._select("expires <= ?", (now,), 1):
            return 0, []
        with self._transaction():
            doomed = self._select("expires <= ?", (now,))
            return len(doomed), self._remove(doomed)

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)


class SQLiteBackend(StoreBackend):
    """An ``IBackend`` in one SQLite file, open in one process at a time (a
    second open fails with ``BackendInUseError``)."""

    def __init__(self, reactor, store: _SQLiteStore, pool: ThreadPool, sweep_interval: float,
                 close_on_shutdown: bool = True):
        super().__init__(reactor, store, sweep_interval)
        self._pool = pool
        # Without this, an unclosed backend's thread would keep the process
        # alive. A service that closes it itself, in its own order (the auth
        # service: after its listener drained), opens it without.
        self._shutdown_trigger = (
            reactor.addSystemEventTrigger("before", "shutdown", self._close_on_shutdown) if close_on_shutdown else None
        )

    @classmethod
    def open(cls, reactor, path: str, *, sweep_interval: float = 1.0, close_on_shutdown: bool = True) -> Deferred:
        """Fire with a backend on ``path``, creating the file (0600) and schema."""
        pool = ThreadPool(minthreads=1, maxthreads=1, name=f"sqlite-backend {path}")
        pool.start()

        def failed(failure):
            pool.stop()
            return failure

        opening = deferToThreadPool(reactor, pool, _SQLiteStore, path)
        return opening.addCallbacks(lambda store: cls(reactor, store, pool, sweep_interval, close_on_shutdown), failed)

    def _run(self, operation, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, operation, *args)

    def _close_on_shutdown(self) -> Deferred:
        self._shutdown_trigger = None
        return self.close()

    def _release(self) -> Deferred:
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        # Queued behind every pending operation, so those finish first; the
        # pool's thread is idle by the time stop() joins it.
        return self._run(self._store.close).addBoth(self._stop_pool)

    def _stop_pool(self, result):
        self._pool.stop()
        return result
