"""The audit log paged in the backend (``AuditLog.search_page``), on memory,
SQLite and a real etcd: 1,500 events over three days (some sharing a
timestamp), read page by page with a cursor, unfiltered and filtered. Every
matching event comes exactly once, in time order; a page reads about its own
size from the backend (counted at the backend, and for etcd at its API),
never the log before it."""
from __future__ import annotations

import json
import os
import random
import uuid
from datetime import datetime, timedelta, timezone

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from teleport_py.auth.audit import MIN_BATCH, AuditLog, InvalidCursor
from teleport_py.backend import MemoryBackend, SQLiteBackend
from teleport_py.backend.etcd import EtcdBackend
from tests.support.etcd import shared_etcd, unique_prefix

DAY0 = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)
EVENTS = 1500
USERS = ("alice", "bob", "carol")
TYPES = ("exec", "kube.request", "user.login")


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def make_events(seed: int = 7) -> list[dict]:
    """Events every ~2.9 minutes over three days (so across two midnights),
    every tenth sharing the timestamp of the one before."""
    rng = random.Random(seed)
    events, when = [], DAY0
    for i in range(EVENTS):
        if i % 10:
            when += timedelta(seconds=rng.randint(1, 340), microseconds=rng.randint(0, 999999))
        events.append({"event": rng.choice(TYPES), "time": rfc3339(when), "uid": str(uuid.UUID(int=rng.getrandbits(128))),
                       "user": rng.choice(USERS), "n": i})
    return events


def in_order(events: list[dict]) -> list[dict]:
    """Time order, ties by uid: the order the log keeps."""
    return sorted(events, key=lambda e: (datetime.fromisoformat(e["time"].replace("Z", "+00:00")), e["uid"]))


class CountingBackend:
    """The backend, counting the items each ``get_range`` answered."""

    def __init__(self, backend):
        self._backend = backend
        self.read = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    async def get_range(self, prefix, limit=None, start=None):
        items = await self._backend.get_range(prefix, limit, start=start)
        self.read += len(items)
        return items


class PagingTestsMixin:
    timeout = 120

    async def open_backend(self):
        raise NotImplementedError

    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self):
        backend = await self.open_backend()
        self.addCleanup(backend.close)
        self.backend = CountingBackend(backend)
        self.log = AuditLog(self.backend, reactor, "example")
        self.events = make_events()
        await self.log.append_all([dict(e) for e in self.events])

    async def pages(self, start, end, size, types=(), user=""):
        """Every page from the first on, and the items each read from the backend."""
        pages, reads, after = [], [], ""
        while True:
            before = self.backend.read
            page, after = await self.log.search_page(start, end, types, size, user, after)
            reads.append(self.backend.read - before)
            pages.append(page)
            if not after:
                return pages, reads
            self.assertEqual(len(page), size, "only the last page may be short")
            self.assertLess(len(pages), EVENTS, "paging never ended")

    def assert_complete(self, pages, expected):
        got = [e["uid"] for page in pages for e in page]
        self.assertEqual(len(got), len(set(got)), "an event came twice")
        self.assertEqual(got, [e["uid"] for e in expected])

    def test_unfiltered_pages_are_complete_in_order_and_each_costs_its_size(self):
        async def run():
            start, end = DAY0 + timedelta(hours=2), DAY0 + timedelta(days=2, hours=10)
            expected = in_order([e for e in self.events if start <= datetime.fromisoformat(
                e["time"].replace("Z", "+00:00")) < end])
            self.assertGreater(len(expected), 1000)
            pages, reads = await self.pages(start, end, 50)
            self.assert_complete(pages, expected)
            # Each page reads one batch, two where it crosses midnight, never the log before it.
            self.assertLessEqual(max(reads), 2 * MIN_BATCH, reads)
            self.assertLess(sum(reads), len(expected) + 2 * len(pages) * MIN_BATCH)
        return ensureDeferred(run())

    def test_filtered_pages_hold_only_matches_once_in_order(self):
        async def run():
            start, end = DAY0, DAY0 + timedelta(days=4)
            for types, user in ((["exec"], "alice"), (["kube.request", "user.login"], ""), ([], "carol")):
                expected = in_order([e for e in self.events if (not types or e["event"] in types)
                                     and (not user or e["user"] == user)])
                for size in (1, 7, 100):
                    if size == 1 and len(expected) > 200:
                        continue
                    pages, _ = await self.pages(start, end, size, types, user)
                    self.assert_complete(pages, expected)
                    self.assertTrue(all((not types or e["event"] in types) and (not user or e["user"] == user)
                                        for page in pages for e in page))
        return ensureDeferred(run())

    def test_events_sharing_a_timestamp_split_across_pages(self):
        async def run():
            # Pages of 1 over the first 40 events, several of which share their time.
            expected = in_order(self.events)[:40]
            end = datetime.fromisoformat(expected[-1]["time"].replace("Z", "+00:00")) + timedelta(microseconds=1)
            pages, _ = await self.pages(DAY0, end, 1)
            self.assert_complete(pages, in_order([e for e in self.events if datetime.fromisoformat(
                e["time"].replace("Z", "+00:00")) < end]))
        return ensureDeferred(run())

    def test_a_cursor_is_checked_and_never_reaches_outside_the_range(self):
        async def run():
            start, end = DAY0 + timedelta(days=1), DAY0 + timedelta(days=1, hours=1)
            for bad in ("nonsense", "2026-13-45/00000000000000000000-x", "../roles/", "2026-11-21/1-x", "x" * 2000):
                with self.assertRaises(InvalidCursor):
                    await self.log.search_page(start, end, (), 10, "", bad)
            # A cursor from before the range starts at the range; one after it ends at once.
            expected = in_order([e for e in self.events if start <= datetime.fromisoformat(
                e["time"].replace("Z", "+00:00")) < end])
            early = "2020-01-01/00000000000000000000-x"
            page, _ = await self.log.search_page(start, end, (), 1000, "", early)
            self.assertEqual([e["uid"] for e in page], [e["uid"] for e in expected])
            late = "2030-01-01/00000000000000000000-x"
            self.assertEqual(await self.log.search_page(start, end, (), 1000, "", late), ([], ""))
        return ensureDeferred(run())


class MemoryPagingTests(PagingTestsMixin, TestCase):
    async def open_backend(self):
        return MemoryBackend(reactor)


class SQLitePagingTests(PagingTestsMixin, TestCase):
    async def open_backend(self):
        path = os.path.join(self.mktemp(), "backend.sqlite")
        os.makedirs(os.path.dirname(path))
        return await SQLiteBackend.open(reactor, path)


class EtcdPagingTests(PagingTestsMixin, TestCase):
    async def open_backend(self):
        server = await shared_etcd()
        backend = await EtcdBackend.open(reactor, [server.url], unique_prefix("audit"))
        self.kvs = []
        gateway = backend._store._gateway
        call = gateway.call

        async def counted(path, body, **options):
            answer = await call(path, body, **options)
            if path == "kv/range":
                self.kvs.append(len(answer.get("kvs") or []))
            return answer
        gateway.call = counted
        return backend

    def test_etcd_answers_about_a_page_per_page(self):
        """What etcd itself sends for one page in the middle of the log."""
        async def run():
            first, after = await self.log.search_page(DAY0, DAY0 + timedelta(days=4), (), 50, "", "")
            self.kvs.clear()
            page, _ = await self.log.search_page(DAY0, DAY0 + timedelta(days=4), (), 50, "", after)
            self.assertEqual(len(page), 50)
            self.assertLessEqual(sum(self.kvs), 2 * 2 * MIN_BATCH, self.kvs)
        return ensureDeferred(run())
