"""The storage contract the Auth service codes against, and the reactor-side
machinery its implementations share.

An implementation is split in two: a *store* does the actual reads and writes
synchronously (wherever it lives: in memory, or on a database thread), and
``StoreBackend`` wraps it on the reactor thread, turning calls into Deferreds,
reading the clock, sweeping expired items and fanning events out to watchers.
Keeping the clock and the watchers out of the stores means an etcd store only
has to answer the same handful of synchronous questions.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger()

PUT = "put"
DELETE = "delete"
#: Entries one ``put_all`` may take: etcd's default ``--max-txn-ops``, so a
#: caller that works on SQLite works on etcd too.
MAX_PUT_ALL = 128


def check_prefix(prefix) -> None:
    if not isinstance(prefix, str):
        raise TypeError(f"backend keys are str, not {type(prefix).__name__}")
    # Stores order keys by their UTF-8 bytes, so every key must have some.
    prefix.encode("utf-8")


def check_key(key) -> None:
    check_prefix(key)
    if not key:
        raise ValueError("backend keys must not be empty")


def check_value(value) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"backend values must be bytes, not {type(value).__name__}")


def check_expires(expires) -> None:
    if expires is None:
        return
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise TypeError("expires must be a number of seconds or None")
    if not math.isfinite(expires):
        raise ValueError("expires must be finite")


def check_start(prefix: str, start) -> None:
    if start is None:
        return
    check_prefix(start)
    if not start.startswith(prefix):
        raise ValueError("a range's start key must lie under its prefix")


def check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError("limit must be None or a non-negative int")


def _validator(check):
    return lambda instance, attribute, value: check(value)


@attrs.frozen
class Item:
    """One stored value; ``revision`` orders every write the backend made."""

    key: str = attrs.field(validator=_validator(check_key))
    value: bytes = attrs.field(validator=_validator(check_value), repr=False)
    expires: float | None = attrs.field(default=None, validator=_validator(check_expires))
    revision: int = 0

    def is_live(self, now: float) -> bool:
        return self.expires is None or self.expires > now


@attrs.frozen
class Event:
    """A committed change: ``PUT`` with the new item, or ``DELETE`` with the
    last item stored under the key (carrying the delete's own revision)."""

    type: str
    item: Item


class BackendClosedError(Exception):
    """The backend was used after ``close()``."""


class BackendUnavailableError(Exception):
    """The store cannot answer now (a distributed store without a reachable
    member or leader); the operation may or may not have applied, and may
    be tried again later."""


class BackendInUseError(Exception):
    """Another process (or another open in this one) already has the backend's file."""


class IWatcher(Interface):
    def stop() -> None:
        """Deliver no more events to this watcher; safe to call twice."""


class IBackend(Interface):
    """Key/value storage with prefix ranges, TTLs, compare-and-swap and watches.

    Keys are non-empty ``str`` (conventionally ``/``-separated), values are
    ``bytes``, ``expires`` is absolute reactor time or ``None``. An item whose
    ``expires`` is not in the future is invisible to every operation at once.
    Prefixes are plain string prefixes: ``"/roles/a"`` matches ``"/roles/ab"``;
    pass ``"/roles/a/"`` to mean the children of ``/roles/a``. Operations take
    effect, and their Deferreds fire, in the order they were called.
    """

    def get(key: str) -> Deferred:
        """Fire with the live ``Item`` at ``key``, or ``None``."""

    def get_range(prefix: str, limit: int | None = None, start: str | None = None) -> Deferred:
        """Fire with the live items whose keys start with ``prefix``, sorted by
        key, at most ``limit`` of them; with ``start`` (a key under
        ``prefix``), only those at or after it, so a caller pages through a
        range reading each page alone: the next page starts at the last key
        returned plus ``"\\x00"``."""

    def put(key: str, value: bytes, expires: float | None = None) -> Deferred:
        """Store unconditionally; fire with the stored ``Item``."""

    def put_all(entries: Sequence[tuple[str, bytes, float | None]]) -> Deferred:
        """Store every ``(key, value, expires)`` unconditionally in one
        transaction (all or none, one durable write); fire with the stored
        ``Item`` list in order. At most ``MAX_PUT_ALL`` entries, distinct keys."""

    def create(key: str, value: bytes, expires: float | None = None) -> Deferred:
        """Store only if no live item exists; fire with the ``Item`` or ``None``."""

    def update(key: str, value: bytes, expires: float | None = None) -> Deferred:
        """Store only if a live item exists; fire with the ``Item`` or ``None``."""

    def compare_and_swap(
        key: str, expected: bytes, value: bytes, expires: float | None = None
    ) -> Deferred:
        """Store only if the live value is ``expected``; fire with the ``Item``
        or ``None``."""

    def delete(key: str) -> Deferred:
        """Fire with whether a live item was deleted."""

    def delete_range(prefix: str) -> Deferred:
        """Delete the live items under ``prefix``; fire with how many."""

    def watch(prefix: str, callback: Callable[[Event], None]) -> IWatcher:
        """Call ``callback`` on the reactor thread with every ``Event`` under
        ``prefix``, including deletes of expired items."""

    def close() -> Deferred:
        """Finish pending operations and release resources; later calls fail
        with ``BackendClosedError``."""


@implementer(IWatcher)
@attrs.define(eq=False)
class _Watcher:
    prefix: str
    callback: Callable[[Event], None]
    _watchers: dict

    def stop(self) -> None:
        self._watchers.pop(self, None)


def _deliver(watchers: dict, events: list[Event]) -> None:
    for event in events:
        for watcher in list(watchers):
            # A callback may stop a watcher that has not been called yet.
            if watcher in watchers and event.item.key.startswith(watcher.prefix):
                try:
                    watcher.callback(event)
                except Exception:
                    # Keys can be secrets (join tokens), so only the prefix is logged.
                    log.failure("backend watch callback failed prefix={prefix!r}", prefix=watcher.prefix)


def store_each(store_one, items) -> tuple[list, list]:
    """``put_all`` for a store: each item through ``store_one`` (inside the
    store's one transaction); the stored items and all their events."""
    stored, events = [], []
    for item in items:
        one, its_events = store_one(item)
        stored.append(one)
        events.extend(its_events)
    return stored, events


def _deferred(method):
    """Bad arguments fail the returned Deferred, like every other error."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return maybeDeferred(method, *args, **kwargs)

    return wrapper


@implementer(IBackend)
class StoreBackend:
    """The reactor-side half of a backend; see the module docstring.

    Subclasses provide ``_run(function, *args) -> Deferred`` (where the store
    runs) and ``_release() -> Deferred`` (what ``close`` frees).
    """

    def __init__(self, reactor, store, sweep_interval: float):
        self._reactor = reactor
        self._store = store
        # A dict, not a set, so watchers are called in the order they came.
        self._watchers: dict[_Watcher, None] = {}
        self._closing: Deferred | None = None
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(sweep_interval, now=False).addErrback(
            lambda failure: log.failure("backend sweeper stopped", failure)
        )

    def _submit(self, operation, *args) -> Deferred:
        if self._closing is not None:
            raise BackendClosedError()
        return self._run(operation, *args, self._reactor.seconds())

    def _write(self, operation, *args) -> Deferred:
        return self._submit(operation, *args).addCallback(self._publish)

    def _publish(self, outcome):
        result, events = outcome
        _deliver(self._watchers, events)
        return result

    @_deferred
    def get(self, key):
        check_key(key)
        return self._submit(self._store.get, key)

    @_deferred
    def get_range(self, prefix, limit=None, start=None):
        check_prefix(prefix)
        check_limit(limit)
        check_start(prefix, start)
        return self._submit(functools.partial(self._store.get_range, start=start), prefix, limit)

    @_deferred
    def put(self, key, value, expires=None):
        return self._write(self._store.put, Item(key, value, expires))

    @_deferred
    def put_all(self, entries):
        entries = list(entries)
        if len(entries) > MAX_PUT_ALL:
            raise ValueError(f"put_all takes at most {MAX_PUT_ALL} entries, not {len(entries)}")
        return self._write(self._store.put_all, [Item(key, value, expires) for key, value, expires in entries])

    @_deferred
    def create(self, key, value, expires=None):
        return self._write(self._store.create, Item(key, value, expires))

    @_deferred
    def update(self, key, value, expires=None):
        return self._write(self._store.update, Item(key, value, expires))

    @_deferred
    def compare_and_swap(self, key, expected, value, expires=None):
        check_value(expected)
        return self._write(self._store.compare_and_swap, Item(key, value, expires), expected)

    @_deferred
    def delete(self, key):
        check_key(key)
        return self._write(self._store.delete, key)

    @_deferred
    def delete_range(self, prefix):
        check_prefix(prefix)
        return self._write(self._store.delete_range, prefix)

    def watch(self, prefix, callback) -> IWatcher:
        check_prefix(prefix)
        if self._closing is not None:
            raise BackendClosedError()
        watcher = _Watcher(prefix, callback, self._watchers)
        self._watchers[watcher] = None
        return watcher

    def _sweep(self) -> Deferred:
        """Delete expired items so watchers hear about them; errors are logged
        so one bad sweep does not stop the next."""
        return self._write(self._store.sweep).addErrback(
            lambda failure: log.failure("backend sweep failed", failure)
        )

    def close(self) -> Deferred:
        if self._closing is None:
            self._sweeper.stop()
            self._watchers.clear()
            self._closing = self._release().addErrback(
                lambda failure: log.failure("backend close failed", failure)
            )
        # Every caller gets its own Deferred; the shared one stays private.
        closed = Deferred()
        self._closing.addCallback(closed.callback)
        return closed
