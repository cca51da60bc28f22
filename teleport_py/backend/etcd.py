"""An ``IBackend`` on etcd v3, for several Auth servers sharing one store.

Every key lives under the cluster's prefix. Each stored value is an envelope
(``encode_value``): the ``expires`` the caller gave (reactor time, which
etcd cannot know) and the item's place within its write, then the caller's
bytes. Reads hide items whose ``expires`` passed at once; a lease (rounded
up to LEASE_BUCKET, so writes share a few leases) is only the backstop that
removes an item etcd-side when no Auth server swept it.

``revision`` is etcd's mod_revision times 2**32 plus the item's place within
that etcd revision: a ``put_all`` or a ``delete_range`` changes several keys
in one etcd revision, and the contract wants every event's revision distinct
and increasing.

Watch events all come from one etcd watch on the whole prefix, so callers
hear other Auth servers' writes too. A write's Deferred fires only after the
watch delivered the write's own revision, which keeps the contract's order:
watchers are called before the writer resumes. Operations run one at a
time, in the order they were called, as the contract requires.
"""

from __future__ import annotations

import base64
import heapq
import math
import struct
from typing import Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .etcd_gateway import EtcdError, EtcdTLS, Gateway
from .etcd_watch import ResumingWatch
from .interface import DELETE, PUT, Event, Item, StoreBackend
from .sqlite import prefix_end

log = Logger()

_ENVELOPE = struct.Struct(">BdI")
_ENVELOPE_VERSION = 1
#: Revisions: etcd's, shifted past the place of an item within one etcd revision.
SUB_REVISION_BITS = 32
#: Leases are shared by every item expiring within the same bucket.
LEASE_BUCKET = 60.0
#: Create/update/CAS/delete read, then write if nothing changed meanwhile;
#: after this many lost races in a row the call fails.
MAX_RACES = 32
#: How long a write waits for its own event on the watch.
WATCH_LAG_LIMIT = 30.0
#: A range read with a ``limit`` asks etcd for that many items and as many
#: again (at most this many more), in case some have expired but are not yet
#: deleted; it reads further pages only while too few were live, so a page of
#: a long range (the audit log) costs about its own size.
RANGE_PAGE = 1000
_LEASE_NOT_FOUND = 5  # gRPC NotFound: "etcdserver: requested lease not found"


class EnvelopeError(ValueError):
    """A value under the prefix that this backend did not write."""


def encode_value(value: bytes, expires: float | None, index: int) -> bytes:
    return _ENVELOPE.pack(_ENVELOPE_VERSION, math.inf if expires is None else expires, index) + value


def decode_value(data: bytes) -> tuple[bytes, float | None, int]:
    if len(data) < _ENVELOPE.size:
        raise EnvelopeError("value shorter than its envelope")
    version, expires, index = _ENVELOPE.unpack_from(data)
    if version != _ENVELOPE_VERSION or math.isnan(expires) or expires == -math.inf:
        raise EnvelopeError("unknown value envelope")
    return data[_ENVELOPE.size:], None if expires == math.inf else expires, index


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text) -> bytes:
    if not isinstance(text, str):
        return b""
    return base64.b64decode(text, validate=True)


def _int(value) -> int:
    return int(value) if value is not None else 0


@attrs.frozen
class _Stored:
    """One etcd key-value as read: its item (or None if unreadable) and the
    etcd mod_revision that a conditional write compares against."""

    item: Item | None
    mod_revision: int


class _EtcdStore:
    """The store half: each method is a coroutine returning ``(result,
    events)`` for writes (events are always empty: the watch delivers them)."""

    def __init__(self, reactor, gateway: Gateway, prefix: str):
        self._reactor = reactor
        self._gateway = gateway
        self._prefix = prefix.encode("utf-8")
        self.deliver = None  # set by the backend: hands events to its watchers
        self._leases: dict[int, tuple[str, float]] = {}
        # key -> (expires, mod_revision) of items with a TTL, and a heap of them for the sweep.
        self._expiring: dict[str, tuple[float, int]] = {}
        self._due: list[tuple[float, str, int]] = []
        self.watch: ResumingWatch | None = None

    # keys and items

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode("utf-8")

    def _range_of(self, prefix: str, first: str | None = None) -> tuple[str, str]:
        end = prefix_end(self._key(prefix))
        return _b64(self._key(first if first is not None else prefix)), _b64(end if end is not None else b"\x00")

    def _item(self, kv: dict, revision: int | None = None) -> Item | None:
        """The Item in an etcd kv, ``revision`` overriding its own (deletes)."""
        try:
            raw_key = _unb64(kv.get("key"))
            if not raw_key.startswith(self._prefix):
                raise EnvelopeError("key outside the prefix")
            value, expires, index = decode_value(_unb64(kv.get("value", "")))
            if revision is None:
                revision = (_int(kv.get("mod_revision")) << SUB_REVISION_BITS) | index
            return Item(raw_key[len(self._prefix):].decode("utf-8"), value, expires, revision)
        except (ValueError, TypeError) as failure:
            # The key may be a secret (a join token): name only the prefix.
            log.warn("etcd holds a value this backend cannot read under {prefix!r}: {error}",
                     prefix=self._prefix.decode("utf-8", "replace"), error=str(failure))
            return None

    def _stored(self, kv: dict) -> _Stored:
        return _Stored(self._item(kv), _int(kv.get("mod_revision")))

    # the watch

    def on_watch_events(self, raw_events) -> None:
        events = []
        places: dict[int, int] = {}
        for raw in raw_events:
            kv = raw.get("kv") or {}
            etcd_revision = _int(kv.get("mod_revision"))
            place = places.get(etcd_revision, 0)
            places[etcd_revision] = place + 1
            if raw.get("type") == "DELETE":
                previous = raw.get("prev_kv")
                if not isinstance(previous, dict):
                    continue
                item = self._item(previous, (etcd_revision << SUB_REVISION_BITS) | place)
                if item is not None:
                    self._expiring.pop(item.key, None)
                    events.append(Event(DELETE, item))
            else:
                item = self._item(kv)
                if item is not None:
                    self._note_expiry(item, etcd_revision)
                    events.append(Event(PUT, item))
        self.deliver(events)

    def _note_expiry(self, item: Item, etcd_revision: int) -> None:
        if item.expires is None:
            self._expiring.pop(item.key, None)
            return
        self._expiring[item.key] = (item.expires, etcd_revision)
        heapq.heappush(self._due, (item.expires, item.key, etcd_revision))

    async def reread(self) -> int:
        """After a compaction: every item changed since the last delivered
        revision is delivered as a PUT; deletes inside the compacted window
        cannot be recovered and are logged as lost. Returns the revision read."""
        after = self.watch.delivered
        kvs, revision = await self._read_range("", None)
        changed = sorted((kv for kv in kvs if _int(kv.get("mod_revision")) > after),
                         key=lambda kv: _int(kv.get("mod_revision")))
        events = []
        for kv in changed:
            item = self._item(kv)
            if item is not None:
                self._note_expiry(item, _int(kv.get("mod_revision")))
                events.append(Event(PUT, item))
        log.warn("etcd re-read after compaction: {count} changed items delivered; deletes between "
                 "revisions {after} and {revision} were not seen", count=len(events), after=after, revision=revision)
        self.deliver(events)
        return revision

    # etcd calls

    async def _read_range(self, prefix: str, limit: int | None, *, now: float | None = None, first: str | None = None):
        """``(kvs, revision)``: all kvs under ``prefix`` (from ``first`` on) at
        one revision; with ``limit``, pages until ``limit`` live ones (live at
        ``now``) were seen."""
        start, end = self._range_of(prefix, first)
        request = {"key": start, "range_end": end}
        if limit is None:
            answer = await self._gateway.call("kv/range", request, read=True)
            return answer.get("kvs") or [], _int(answer["header"].get("revision"))
        kvs: list[dict] = []
        revision = 0
        live = 0
        while True:
            page = dict(request, limit=str(limit + min(limit, RANGE_PAGE)), **({"revision": str(revision)} if revision else {}))
            answer = await self._gateway.call("kv/range", page, read=True)
            revision = revision or _int(answer["header"].get("revision"))
            batch = answer.get("kvs") or []
            kvs.extend(batch)
            live += sum(1 for kv in batch if (item := self._item(kv)) is not None and item.is_live(now))
            if live >= limit or not answer.get("more") or not batch:
                return kvs, revision
            request["key"] = _b64(_unb64(batch[-1]["key"]) + b"\x00")

    async def _one(self, key: str) -> _Stored:
        answer = await self._gateway.call("kv/range", {"key": _b64(self._key(key))}, read=True)
        kvs = answer.get("kvs") or []
        return self._stored(kvs[0]) if kvs else _Stored(None, 0)

    async def _lease(self, expires: float | None, now: float) -> str | None:
        if expires is None:
            return None
        for bucket in [bucket for bucket, (_, deadline) in self._leases.items() if deadline <= now]:
            del self._leases[bucket]
        bucket = math.ceil(expires / LEASE_BUCKET)
        if bucket not in self._leases:
            deadline = bucket * LEASE_BUCKET + 1
            ttl = max(2, math.ceil(deadline - now) + 1)
            answer = await self._gateway.call("lease/grant", {"TTL": str(ttl)})
            self._leases[bucket] = (answer["ID"], deadline)
        return self._leases[bucket][0]

    async def _put_request(self, item: Item, index: int, now: float) -> dict:
        put = {"key": _b64(self._key(item.key)), "value": _b64(encode_value(item.value, item.expires, index))}
        lease = await self._lease(item.expires, now)
        if lease is not None:
            put["lease"] = lease
        return {"request_put": put}

    async def _txn(self, compare: list[dict], make_success) -> int | None:
        """Run a transaction; the etcd revision it wrote, or None if a
        comparison failed. A lease etcd already expired is granted anew once."""
        for attempt in (1, 2):
            success = await make_success()
            try:
                answer = await self._gateway.call("kv/txn", {"compare": compare, "success": success})
            except EtcdError as failure:
                if failure.code == _LEASE_NOT_FOUND and attempt == 1:
                    self._leases.clear()
                    continue
                raise
            if not answer.get("succeeded"):
                return None
            return _int(answer["header"].get("revision"))
        raise AssertionError("unreachable")

    async def _written(self, etcd_revision: int) -> None:
        """Wait until the watch delivered this write's events. A watch that
        lags past WATCH_LAG_LIMIT (a half-open connection to a vanished peer
        looks like that) fails this call and is reopened."""
        waiting = self.watch.reached(etcd_revision)
        timer = self._reactor.callLater(WATCH_LAG_LIMIT, waiting.cancel)
        try:
            await waiting
        except CancelledError:
            self.watch.reopen()
            raise EtcdError(4, f"write applied at etcd revision {etcd_revision}, but its event did not arrive "
                               f"within {WATCH_LAG_LIMIT:.0f} s; reopening the watch") from None
        finally:
            if timer.active():
                timer.cancel()

    def _compare_mod(self, key: str, mod_revision: int) -> dict:
        return {"target": "MOD", "result": "EQUAL", "key": _b64(self._key(key)), "mod_revision": str(mod_revision)}

    def _stored_item(self, item: Item, etcd_revision: int, index: int = 0) -> Item:
        return attrs.evolve(item, revision=(etcd_revision << SUB_REVISION_BITS) | index)

    # the store interface

    async def get(self, key: str, now: float):
        stored = await self._one(key)
        return stored.item if stored.item is not None and stored.item.is_live(now) else None

    async def get_range(self, prefix: str, limit: int | None, now: float, start: str | None = None):
        if limit == 0:
            return []
        kvs, _ = await self._read_range(prefix, limit, now=now, first=start)
        items = [item for kv in kvs if (item := self._item(kv)) is not None and item.is_live(now)]
        return items[:limit] if limit is not None else items

    async def put(self, item: Item, now: float):
        stored, _ = await self.put_all([item], now)
        return stored[0], []

    async def put_all(self, items: list[Item], now: float):
        if not items:
            return [], []
        if len({item.key for item in items}) != len(items):
            raise ValueError("put_all on etcd needs distinct keys")

        async def puts():
            return [await self._put_request(item, index, now) for index, item in enumerate(items)]

        revision = await self._txn([], puts)
        await self._written(revision)
        return [self._stored_item(item, revision, index) for index, item in enumerate(items)], []

    async def _conditional_put(self, item: Item, now: float, allowed) -> tuple[Item | None, list]:
        """Read the key; if ``allowed(live item or None)``, put ``item``
        unless the key changed meanwhile (then read again)."""
        for _ in range(MAX_RACES):
            current = await self._one(item.key)
            live = current.item if current.item is not None and current.item.is_live(now) else None
            if not allowed(live):
                return None, []

            async def put():
                return [await self._put_request(item, 0, now)]

            revision = await self._txn([self._compare_mod(item.key, current.mod_revision)], put)
            if revision is not None:
                await self._written(revision)
                return self._stored_item(item, revision), []
        raise EtcdError(10, f"gave up after {MAX_RACES} concurrent changes to one key")

    def create(self, item: Item, now: float):
        return self._conditional_put(item, now, lambda live: live is None)

    def update(self, item: Item, now: float):
        return self._conditional_put(item, now, lambda live: live is not None)

    def compare_and_swap(self, item: Item, expected: bytes, now: float):
        return self._conditional_put(item, now, lambda live: live is not None and live.value == expected)

    async def _delete_if_unchanged(self, key: str, mod_revision: int) -> int | None:
        async def delete():
            return [{"request_delete_range": {"key": _b64(self._key(key))}}]

        return await self._txn([self._compare_mod(key, mod_revision)], delete)

    async def delete(self, key: str, now: float):
        for _ in range(MAX_RACES):
            current = await self._one(key)
            if current.item is None or not current.item.is_live(now):
                return False, []
            revision = await self._delete_if_unchanged(key, current.mod_revision)
            if revision is not None:
                await self._written(revision)
                return True, []
        raise EtcdError(10, f"gave up after {MAX_RACES} concurrent changes to one key")

    async def delete_range(self, prefix: str, now: float):
        # Expired items under the prefix go too (their DELETE events are
        # what a sweep would have sent); only live ones are counted.
        start, end = self._range_of(prefix)
        answer = await self._gateway.call("kv/deleterange", {"key": start, "range_end": end, "prev_kv": True})
        if not _int(answer.get("deleted")):
            return 0, []
        await self._written(_int(answer["header"].get("revision")))
        previous = [self._item(kv) for kv in answer.get("prev_kvs") or []]
        return sum(1 for item in previous if item is not None and item.is_live(now)), []

    async def sweep(self, now: float):
        """Delete the items this backend saw being written with an ``expires``
        now past, unless they changed since; others' are etcd's leases' job."""
        swept = 0
        last = 0
        while self._due and self._due[0][0] <= now:
            expires, key, mod_revision = heapq.heappop(self._due)
            if self._expiring.get(key) != (expires, mod_revision):
                continue  # rewritten or deleted since
            revision = await self._delete_if_unchanged(key, mod_revision)
            if revision is not None:
                swept += 1
                last = revision
        if last:
            await self._written(last)
        return swept, []


class EtcdBackend(StoreBackend):
    """An ``IBackend`` on etcd (see the module docstring); ``open`` it."""

    def __init__(self, reactor, store: _EtcdStore, gateway: Gateway, sweep_interval: float):
        super().__init__(reactor, store, sweep_interval)
        self._gateway = gateway
        self._tail: Deferred = succeed(None)
        store.deliver = lambda events: self._publish((None, events))

    @classmethod
    async def _open(cls, reactor, peers, prefix, tls, sweep_interval):
        if not prefix or not prefix.startswith("/"):
            raise ValueError(f"etcd key prefix {prefix!r} must start with /")
        gateway = Gateway(reactor, peers, tls)
        try:
            start, end = _b64(prefix.encode("utf-8")), _b64(prefix_end(prefix.encode("utf-8")))
            answer = await gateway.call("kv/range", {"key": start, "range_end": end, "count_only": True})
            store = _EtcdStore(reactor, gateway, prefix)
            backend = cls(reactor, store, gateway, sweep_interval)
        except BaseException:
            await gateway.close()
            raise
        store.watch = ResumingWatch(
            reactor, gateway, prefix.encode("utf-8"), prefix_end(prefix.encode("utf-8")),
            _int(answer["header"].get("revision")), store.on_watch_events, store.reread,
        )
        store.watch.start()
        return backend

    @classmethod
    def open(cls, reactor, peers: Sequence[str], prefix: str, *, tls: EtcdTLS | None = None,
             sweep_interval: float = 1.0) -> Deferred:
        """Fire with a backend on ``peers`` (``http(s)://host:port``) under
        ``prefix`` (one per Teleport cluster, e.g. ``/teleport/example``)."""
        return ensureDeferred(cls._open(reactor, list(peers), prefix, tls, sweep_interval))

    def _run(self, operation, *args) -> Deferred:
        """One operation at a time, in call order."""
        result: Deferred = Deferred()

        def run(_):
            running = ensureDeferred(operation(*args))
            running.addBoth(lambda outcome: result.errback(outcome) if isinstance(outcome, Failure)
                            else result.callback(outcome))
            return running.addErrback(lambda _: None)

        self._tail = self._tail.addCallback(run)
        return result

    def _release(self) -> Deferred:
        async def release():
            done: Deferred = Deferred()
            self._tail.addBoth(lambda _: done.callback(None))
            await done
            self._store.watch.stop()
            await self._gateway.close()

        return ensureDeferred(release())
