"""A backend held in a dict: the reference semantics, and the one unit tests use."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed

from .interface import DELETE, PUT, Event, Item, StoreBackend, store_each


class _MemoryStore:
    """Synchronous store; every method that writes returns ``(result, events)``."""

    def __init__(self):
        self._items: dict[str, Item] = {}
        self._revision = 0

    def _live(self, key: str, now: float) -> Item | None:
        item = self._items.get(key)
        return item if item is not None and item.is_live(now) else None

    def _store(self, item: Item):
        self._revision += 1
        stored = attrs.evolve(item, revision=self._revision)
        self._items[stored.key] = stored
        return stored, [Event(PUT, stored)]

    def _remove(self, keys: list[str]) -> list[Event]:
        events = []
        for key in keys:
            self._revision += 1
            removed = attrs.evolve(self._items.pop(key), revision=self._revision)
            events.append(Event(DELETE, removed))
        return events

    def get(self, key: str, now: float) -> Item | None:
        return self._live(key, now)

    def get_range(self, prefix: str, limit: int | None, now: float, start: str | None = None) -> list[Item]:
        # Code point order is UTF-8 byte order, the order the other stores keep.
        keys = sorted(key for key in self._items if key.startswith(prefix) and (start is None or key >= start))
        return [self._items[key] for key in keys if self._items[key].is_live(now)][:limit]

    def put(self, item: Item, now: float):
        return self._store(item)

    def put_all(self, items: list[Item], now: float):
        return store_each(self._store, items)

    def create(self, item: Item, now: float):
        if self._live(item.key, now) is not None:
            return None, []
        return self._store(item)

    def update(self, item: Item, now: float):
        if self._live(item.key, now) is None:
            return None, []
        return self._store(item)

    def compare_and_swap(self, item: Item, expected: bytes, now: float):
        current = self._live(item.key, now)
        if current is None or current.value != expected:
            return None, []
        return self._store(item)

    def delete(self, key: str, now: float):
        if self._live(key, now) is None:
            return False, []
        return True, self._remove([key])

    def delete_range(self, prefix: str, now: float):
        keys = [item.key for item in self.get_range(prefix, None, now)]
        return len(keys), self._remove(keys)

    def sweep(self, now: float):
        keys = sorted(key for key, item in self._items.items() if not item.is_live(now))
        return len(keys), self._remove(keys)


class MemoryBackend(StoreBackend):
    """An ``IBackend`` that forgets everything on close; operations complete
    synchronously, so tests need only a ``Clock``."""

    def __init__(self, reactor, *, sweep_interval: float = 1.0):
        super().__init__(reactor, _MemoryStore(), sweep_interval)

    def _run(self, operation, *args) -> Deferred:
        return maybeDeferred(operation, *args)

    def _release(self) -> Deferred:
        return succeed(None)
