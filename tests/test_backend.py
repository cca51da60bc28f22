"""One suite run against every backend, plus SQLite's own guarantees: files,
persistence, durability across kill -9, and a model-based comparison."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import stat
import sys
import tempfile
import textwrap

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from teleport_py.backend import (
    DELETE,
    PUT,
    BackendClosedError,
    BackendInUseError,
    Event,
    IBackend,
    Item,
    IWatcher,
    MAX_PUT_ALL,
    MemoryBackend,
    SQLiteBackend,
)
from teleport_py.backend.etcd import EtcdBackend
from teleport_py.backend.sqlite import prefix_end
from tests.support.backend import ClockedReactor, async_test
from tests.support.etcd import shared_etcd, unique_prefix

SWEEP = 1.0


class TriggerRecordingReactor(ClockedReactor):
    """Keeps system event triggers instead of registering them for real."""

    def __init__(self, clock: Clock):
        super().__init__(clock)
        self.triggers = {}

    def addSystemEventTrigger(self, phase, event, callable):
        handle = object()
        self.triggers[handle] = (phase, event, callable)
        return handle

    def removeSystemEventTrigger(self, handle):
        del self.triggers[handle]


class BackendTestsMixin:
    """Semantics every ``IBackend`` must share. Subclasses provide
    ``open_backend(clock) -> Deferred[IBackend]``."""

    @async_test
    async def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.backend = await self.open_backend(self.clock)
        self.addCleanup(self.backend.close)

    async def advance(self, seconds):
        """Move time, then wait for any sweep it started: operations complete
        in order, so a read queued after the sweep waits for it."""
        self.clock.advance(seconds)
        await self.backend.get("/barrier")

    def test_provides_interface(self):
        self.assertTrue(verifyObject(IBackend, self.backend))

    @async_test
    async def test_put_get(self):
        self.assertIsNone(await self.backend.get("/roles/a"))
        stored = await self.backend.put("/roles/a", b"v1")
        self.assertEqual((stored.key, stored.value, stored.expires), ("/roles/a", b"v1", None))
        self.assertEqual(await self.backend.get("/roles/a"), stored)
        again = await self.backend.put("/roles/a", b"v2", expires=2000.0)
        self.assertGreater(again.revision, stored.revision)
        self.assertEqual(await self.backend.get("/roles/a"), Item("/roles/a", b"v2", 2000.0, again.revision))

    @async_test
    async def test_put_all_stores_every_entry_in_order(self):
        events = []
        self.backend.watch("/events/", events.append)
        await self.backend.put("/events/b", b"old")
        stored = await self.backend.put_all([("/events/b", b"1", None), ("/events/a", b"2", 3000.0)])
        self.assertEqual([(i.key, i.value, i.expires) for i in stored], [("/events/b", b"1", None), ("/events/a", b"2", 3000.0)])
        self.assertLess(stored[0].revision, stored[1].revision)
        self.assertEqual([await self.backend.get(i.key) for i in stored], stored)
        self.assertEqual([e.item for e in events[1:]], stored)
        self.assertEqual(await self.backend.put_all([]), [])

    @async_test
    async def test_put_all_is_bounded(self):
        entries = [(f"/events/{n:04d}", b"", None) for n in range(MAX_PUT_ALL + 1)]
        with self.assertRaises(ValueError):
            await self.backend.put_all(entries)
        self.assertEqual(await self.backend.get_range("/"), [])
        self.assertEqual(len(await self.backend.put_all(entries[:MAX_PUT_ALL])), MAX_PUT_ALL)

    @async_test
    async def test_put_all_with_a_bad_entry_stores_nothing(self):
        with self.assertRaises(ValueError):
            await self.backend.put_all([("/events/a", b"1", None), ("", b"2", None)])
        self.assertEqual(await self.backend.get_range("/"), [])

    @async_test
    async def test_revisions_increase_across_all_writes(self):
        events = []
        self.backend.watch("/", events.append)
        first = await self.backend.put("/a", b"1")
        await self.backend.delete("/a")
        second = await self.backend.create("/b", b"2")
        await self.backend.compare_and_swap("/b", b"2", b"3")
        await self.backend.delete_range("/")
        revisions = [event.item.revision for event in events]
        self.assertEqual(revisions, sorted(set(revisions)))
        self.assertEqual(len(revisions), 5)
        self.assertLess(first.revision, second.revision)

    @async_test
    async def test_create(self):
        created = await self.backend.create("/tokens/t", b"one", expires=1010.0)
        self.assertEqual(created.value, b"one")
        self.assertIsNone(await self.backend.create("/tokens/t", b"two"))
        self.assertEqual((await self.backend.get("/tokens/t")).value, b"one")
        self.clock.advance(10)
        recreated = await self.backend.create("/tokens/t", b"three")
        self.assertEqual((await self.backend.get("/tokens/t")), recreated)

    @async_test
    async def test_update(self):
        self.assertIsNone(await self.backend.update("/users/alice", b"x"))
        self.assertIsNone(await self.backend.get("/users/alice"))
        await self.backend.put("/users/alice", b"old", expires=1005.0)
        updated = await self.backend.update("/users/alice", b"new", expires=1005.0)
        self.assertEqual((await self.backend.get("/users/alice")), updated)
        self.clock.advance(5)
        self.assertIsNone(await self.backend.update("/users/alice", b"newer"))
        self.assertIsNone(await self.backend.get("/users/alice"))

    @async_test
    async def test_compare_and_swap(self):
        self.assertIsNone(await self.backend.compare_and_swap("/ca", b"", b"x"))
        self.assertIsNone(await self.backend.get("/ca"))
        await self.backend.put("/ca", b"v1")
        self.assertIsNone(await self.backend.compare_and_swap("/ca", b"wrong", b"v2"))
        self.assertEqual((await self.backend.get("/ca")).value, b"v1")
        swapped = await self.backend.compare_and_swap("/ca", b"v1", b"v2", expires=1001.0)
        self.assertEqual(await self.backend.get("/ca"), swapped)
        self.clock.advance(1)
        self.assertIsNone(await self.backend.compare_and_swap("/ca", b"v2", b"v3"))
        self.assertIsNone(await self.backend.get("/ca"))

    @async_test
    async def test_racing_compare_and_swap_has_one_winner(self):
        await self.backend.put("/lock", b"free")
        results = await gatherResults(
            [self.backend.compare_and_swap("/lock", b"free", owner) for owner in (b"alpha", b"beta", b"gamma")]
        )
        winners = [result for result in results if result is not None]
        self.assertEqual(len(winners), 1)
        self.assertEqual(await self.backend.get("/lock"), winners[0])

    @async_test
    async def test_delete(self):
        self.assertFalse(await self.backend.delete("/x"))
        await self.backend.put("/x", b"1")
        self.assertTrue(await self.backend.delete("/x"))
        self.assertIsNone(await self.backend.get("/x"))
        self.assertFalse(await self.backend.delete("/x"))
        await self.backend.put("/y", b"1", expires=1001.0)
        self.clock.advance(1)
        self.assertFalse(await self.backend.delete("/y"))

    @async_test
    async def test_range_is_sorted_and_exact(self):
        keys = ["/roles/b", "/roles/ab", "/roles/a/x", "/roles/a", "/roles%", "/roles_", "/roles/a%", "/rolez", "/r"]
        for key in keys:
            await self.backend.put(key, key.encode())

        async def keys_under(prefix, limit=None):
            return [item.key for item in await self.backend.get_range(prefix, limit)]

        self.assertEqual(await keys_under(""), sorted(keys))
        self.assertEqual(await keys_under("/roles/"), ["/roles/a", "/roles/a%", "/roles/a/x", "/roles/ab", "/roles/b"])
        self.assertEqual(await keys_under("/roles/a/"), ["/roles/a/x"])
        self.assertEqual(await keys_under("/roles/a"), ["/roles/a", "/roles/a%", "/roles/a/x", "/roles/ab"])
        self.assertEqual(await keys_under("/roles%"), ["/roles%"])
        self.assertEqual(await keys_under("/roles_"), ["/roles_"])
        self.assertEqual(await keys_under("/r_les"), [])
        self.assertEqual(await keys_under("/roles/", limit=2), ["/roles/a", "/roles/a%"])
        self.assertEqual(await keys_under("/roles/", limit=0), [])

    @async_test
    async def test_range_from_a_start_key_pages_through_it(self):
        keys = ["/e/a", "/e/a\x00", "/e/ab", "/e/b", "/e/\u00ff", "/e/\U0010ffff", "/f", "/d"]
        for key in keys:
            await self.backend.put(key, key.encode())
        await self.backend.put("/e/aa", b"", expires=1000.5)
        self.clock.advance(1)

        async def keys_from(start, limit=None):
            return [item.key for item in await self.backend.get_range("/e/", limit, start=start)]

        under = ["/e/a", "/e/a\x00", "/e/ab", "/e/b", "/e/\u00ff", "/e/\U0010ffff"]
        self.assertEqual(await keys_from("/e/"), under)
        self.assertEqual(await keys_from("/e/ab"), under[2:])
        self.assertEqual(await keys_from("/e/a\x00", 2), ["/e/a\x00", "/e/ab"])
        self.assertEqual(await keys_from("/e/\u00ff\x00"), ["/e/\U0010ffff"])
        self.assertEqual(await keys_from("/e/\U0010ffff\x00"), [])
        # Page by page (the expired item skipped), each from the last key + NUL.
        pages, start = [], None
        while True:
            page = await keys_from(start, 2)
            if not page:
                break
            pages.append(page)
            start = page[-1] + "\x00"
        self.assertEqual(pages, [under[0:2], under[2:4], under[4:6]])
        with self.assertRaises(ValueError):
            await self.backend.get_range("/e/", start="/d")

    @async_test
    async def test_range_with_non_ascii_keys(self):
        keys = ["/u/\U0010ffff", "/u/\u00ff", "/u/\u00ff\U0010ffff", "/u/z", "/u\U0010ffff", "/v"]
        for key in keys:
            await self.backend.put(key, b"")
        self.assertEqual([item.key for item in await self.backend.get_range("/u/")], sorted(keys)[:4])
        self.assertEqual(
            [item.key for item in await self.backend.get_range("/u/\u00ff")], ["/u/\u00ff", "/u/\u00ff\U0010ffff"]
        )
        self.assertEqual([item.key for item in await self.backend.get_range("/u/\U0010ffff")], ["/u/\U0010ffff"])

    @async_test
    async def test_delete_range(self):
        for key in ["/s/a", "/s/a/1", "/s/a/2", "/s/ab", "/s/b"]:
            await self.backend.put(key, b"")
        await self.backend.put("/s/a/3", b"", expires=1001.0)
        self.clock.advance(1)
        self.assertEqual(await self.backend.delete_range("/s/a/"), 2)
        self.assertEqual([item.key for item in await self.backend.get_range("/s/")], ["/s/a", "/s/ab", "/s/b"])
        self.assertEqual(await self.backend.delete_range("/nothing"), 0)

    @async_test
    async def test_expired_items_are_invisible_at_once(self):
        await self.backend.put("/hb/k1", b"alive", expires=1030.25)
        await self.backend.put("/hb/k2", b"forever")
        await self.advance(30)
        self.assertEqual(len(await self.backend.get_range("/hb/")), 2)
        # Between sweeps: visibility must not wait for one.
        self.clock.advance(0.25)
        self.assertIsNone(await self.backend.get("/hb/k1"))
        self.assertEqual([item.key for item in await self.backend.get_range("/hb/")], ["/hb/k2"])

    @async_test
    async def test_watch_put_and_delete(self):
        events, others = [], []
        self.backend.watch("/roles/", events.append)
        self.backend.watch("/users/", others.append)
        put = await self.backend.put("/roles/r", b"v")
        await self.backend.put("/rolesX", b"v")
        self.assertTrue(await self.backend.delete("/roles/r"))
        self.assertFalse(await self.backend.delete("/roles/r"))
        await self.backend.create("/roles/x", b"v")
        self.assertIsNone(await self.backend.create("/roles/x", b"w"))
        self.assertEqual(
            [(event.type, event.item.key, event.item.value) for event in events],
            [(PUT, "/roles/r", b"v"), (DELETE, "/roles/r", b"v"), (PUT, "/roles/x", b"v")],
        )
        self.assertEqual(events[0], Event(PUT, put))
        self.assertEqual(others, [])

    @async_test
    async def test_watch_stop(self):
        events = []
        watcher = self.backend.watch("/", events.append)
        self.assertTrue(verifyObject(IWatcher, watcher))
        await self.backend.put("/a", b"")
        watcher.stop()
        watcher.stop()
        await self.backend.put("/b", b"")
        self.assertEqual([event.item.key for event in events], ["/a"])

    @async_test
    async def test_watch_sees_expiry(self):
        events = []
        await self.backend.put("/hb/gone", b"last", expires=1005.0)
        await self.backend.put("/hb/stays", b"", expires=2000.0)
        self.backend.watch("/hb/", events.append)
        await self.advance(4)
        self.assertEqual(events, [])
        await self.advance(SWEEP)
        self.assertEqual([(event.type, event.item.key, event.item.value) for event in events], [(DELETE, "/hb/gone", b"last")])
        # The sweep keeps running after its first pass.
        await self.backend.put("/hb/later", b"", expires=self.clock.seconds() + 1)
        await self.advance(SWEEP)
        self.assertEqual([event.item.key for event in events], ["/hb/gone", "/hb/later", "/hb/later"])

    @async_test
    async def test_watchers_are_called_in_registration_order(self):
        calls = []
        for name in ("first", "second", "third"):
            self.backend.watch("/", lambda event, name=name: calls.append(name))
        await self.backend.put("/a", b"")
        self.assertEqual(calls, ["first", "second", "third"])

    @async_test
    async def test_failing_callback_is_isolated(self):
        seen = []

        def broken(event):
            raise RuntimeError("callback bug")

        self.backend.watch("/", broken)
        self.backend.watch("/", seen.append)
        stored = await self.backend.put("/a", b"1")
        self.assertEqual(seen, [Event(PUT, stored)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(await self.backend.get("/a"), stored)

    @async_test
    async def test_callback_may_stop_another_watcher(self):
        seen = []
        watchers = []
        watchers.append(self.backend.watch("/", lambda event: [watcher.stop() for watcher in watchers]))
        watchers.append(self.backend.watch("/", seen.append))
        await self.backend.put("/a", b"")
        await self.backend.put("/b", b"")
        self.assertLessEqual(len(seen), 1)
        self.assertNotIn("/b", [event.item.key for event in seen])

    @async_test
    async def test_bad_arguments_fail_the_deferred(self):
        for call, error in [
            (lambda: self.backend.put("", b""), ValueError),
            (lambda: self.backend.put(b"/bytes", b""), TypeError),
            (lambda: self.backend.put("/\ud800", b""), UnicodeEncodeError),
            (lambda: self.backend.put("/k", "text"), TypeError),
            (lambda: self.backend.put("/k", b"", expires=float("nan")), ValueError),
            (lambda: self.backend.put("/k", b"", expires="soon"), TypeError),
            (lambda: self.backend.compare_and_swap("/k", None, b""), TypeError),
            (lambda: self.backend.get_range("/", limit=-1), ValueError),
            (lambda: self.backend.get(None), TypeError),
            (lambda: self.backend.delete_range(None), TypeError),
        ]:
            result = call()
            self.assertIsInstance(result, Deferred)
            await self.assertFailure(result, error)
        self.assertEqual(await self.backend.get_range(""), [])

    @async_test
    async def test_closed_backend_fails_closed(self):
        events = []
        self.backend.watch("/", events.append)
        await self.backend.close()
        await self.backend.close()
        await self.assertFailure(self.backend.put("/a", b""), BackendClosedError)
        await self.assertFailure(self.backend.get("/a"), BackendClosedError)
        self.assertRaises(BackendClosedError, self.backend.watch, "/", events.append)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(events, [])


class MemoryBackendTests(BackendTestsMixin, TestCase):
    def open_backend(self, clock):
        return succeed(MemoryBackend(clock, sweep_interval=SWEEP))


class EtcdBackendTests(BackendTestsMixin, TestCase):
    """The same suite against a real etcd (tests.support.etcd), each test
    under its own key prefix; etcd's own guarantees are in test_backend_etcd."""

    async def _open(self, clock):
        server = await shared_etcd()
        return await EtcdBackend.open(ClockedReactor(clock), [server.url], unique_prefix(), sweep_interval=SWEEP)

    def open_backend(self, clock):
        return ensureDeferred(self._open(clock))


class SQLiteBackendTests(BackendTestsMixin, TestCase):
    def open_backend(self, clock):
        self.path = os.path.join(self.mktemp(), "backend.sqlite")
        os.makedirs(os.path.dirname(self.path))
        return SQLiteBackend.open(ClockedReactor(clock), self.path, sweep_interval=SWEEP)

    async def reopen(self):
        await self.backend.close()
        self.backend = await SQLiteBackend.open(ClockedReactor(self.clock), self.path, sweep_interval=SWEEP)
        self.addCleanup(self.backend.close)

    @async_test
    async def test_persists_across_reopen(self):
        kept = await self.backend.put("/ca/user", b"\x00key", expires=5000.0)
        await self.backend.put("/gone", b"")
        await self.backend.delete("/gone")
        await self.reopen()
        self.assertEqual(await self.backend.get_range(""), [kept])
        later = await self.backend.put("/next", b"")
        self.assertGreater(later.revision, kept.revision + 1)

    @async_test
    async def test_reactor_shutdown_closes_the_backend(self):
        await self.backend.close()
        recorder = TriggerRecordingReactor(self.clock)
        closed_by_caller = await SQLiteBackend.open(recorder, self.path)
        self.assertEqual([trigger[:2] for trigger in recorder.triggers.values()], [("before", "shutdown")])
        await closed_by_caller.close()
        self.assertEqual(recorder.triggers, {})

        closed_by_shutdown = await SQLiteBackend.open(recorder, self.path)
        [(phase, event, shutdown)] = recorder.triggers.values()
        await shutdown()
        await self.assertFailure(closed_by_shutdown.get("/a"), BackendClosedError)

    @async_test
    async def test_a_second_open_is_refused_until_the_first_closes(self):
        await self.backend.put("/a", b"1")
        await self.assertFailure(
            SQLiteBackend.open(ClockedReactor(self.clock), self.path), BackendInUseError
        )
        self.assertEqual((await self.backend.get("/a")).value, b"1")
        await self.reopen()
        self.assertEqual((await self.backend.get("/a")).value, b"1")

    @async_test
    async def test_another_process_holding_the_file_is_refused(self):
        await self.backend.close()
        holder = _KilledWriter(acknowledgements=1, kill=False)
        project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment = {**os.environ, "PYTHONPATH": project_root}
        process = reactor.spawnProcess(holder, sys.executable, [sys.executable, "-c", _WRITER, self.path], env=environment)
        await holder.acknowledged_enough
        await self.assertFailure(SQLiteBackend.open(ClockedReactor(self.clock), self.path), BackendInUseError)
        process.signalProcess("KILL")
        await holder.ended
        # The kernel released the dead holder's lock.
        self.backend = await SQLiteBackend.open(ClockedReactor(self.clock), self.path)
        self.addCleanup(self.backend.close)
        self.assertIsNotNone(await self.backend.get("/durable/00000000"))

    @async_test
    async def test_files_are_private(self):
        await self.backend.put("/ca/user", b"secret")
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(stat.S_IMODE(os.stat(self.path + suffix).st_mode), 0o600, suffix)

    @async_test
    async def test_uses_write_ahead_log(self):
        await self.backend.put("/a", b"")
        inspector = sqlite3.connect(self.path)
        self.addCleanup(inspector.close)
        self.assertEqual(inspector.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    @async_test
    async def test_existing_file_is_tightened(self):
        await self.backend.close()
        os.chmod(self.path, 0o644)
        await self.reopen()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    @async_test
    async def test_not_a_database_fails_to_open(self):
        path = self.mktemp()
        with open(path, "wb") as garbage:
            garbage.write(b"this is not sqlite" * 512)
        os.chmod(path, 0o600)
        await self.assertFailure(SQLiteBackend.open(ClockedReactor(self.clock), path), sqlite3.DatabaseError)

    def test_prefix_end(self):
        self.assertEqual(prefix_end(b"/a"), b"/b")
        self.assertEqual(prefix_end(b"/a\xff\xff"), b"/b")
        self.assertIsNone(prefix_end(b""))
        self.assertIsNone(prefix_end(b"\xff"))

    @async_test
    async def test_acknowledged_writes_survive_kill_9(self):
        await self.backend.close()
        writer = _KilledWriter(acknowledgements=40)
        project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment = {**os.environ, "PYTHONPATH": project_root}
        reactor.spawnProcess(writer, sys.executable, [sys.executable, "-c", _WRITER, self.path], env=environment)
        ended = await writer.ended
        self.assertEqual(ended.signal, signal.SIGKILL, writer.errors)
        self.assertGreaterEqual(len(writer.acknowledged), 40)
        self.backend = await SQLiteBackend.open(ClockedReactor(self.clock), self.path)
        self.addCleanup(self.backend.close)
        stored = {item.key: item.value for item in await self.backend.get_range("/durable/")}
        for number in writer.acknowledged:
            self.assertEqual(stored.get(f"/durable/{number:08d}"), b"%d" % number)


# Writes forever, printing each number once its put has fired; the test kills it.
_WRITER = textwrap.dedent(
    """
    import os, sys
    from twisted.internet import defer, task
    from teleport_py.backend import SQLiteBackend

    async def main(reactor, path):
        backend = await SQLiteBackend.open(reactor, path)
        number = 0
        while True:
            await backend.put(f"/durable/{number:08d}", b"%d" % number)
            os.write(1, b"%d\\n" % number)
            number += 1

    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1])))
    """
)


class _KilledWriter(ProcessProtocol):
    """Collects acknowledged writes; once enough arrived, fires
    ``acknowledged_enough`` and (unless ``kill=False``) sends SIGKILL."""

    def __init__(self, acknowledgements: int, kill: bool = True):
        self.wanted = acknowledgements
        self.kill = kill
        self.acknowledged: list[int] = []
        self.errors = b""
        self.buffer = b""
        self.acknowledged_enough = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.acknowledged.extend(int(line) for line in lines)
        if len(self.acknowledged) >= self.wanted and not self.acknowledged_enough.called:
            self.acknowledged_enough.callback(None)
        if self.kill and len(self.acknowledged) >= self.wanted and self.transport.pid is not None:
            self.transport.signalProcess("KILL")

    def errReceived(self, data):
        self.errors += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)


KEYS = st.text(alphabet="ab/%_\u00e9\U0010ffff", min_size=1, max_size=4)
PREFIXES = st.text(alphabet="ab/%_\u00e9\U0010ffff", max_size=3)
VALUES = st.binary(max_size=3)
TTLS = st.none() | st.sampled_from([0.5, 1.0, 2.5, 4.0])


def _visible(result):
    """What a caller can compare across backends (revisions differ by design)."""
    if isinstance(result, Item):
        return (result.key, result.value, result.expires)
    if isinstance(result, list):
        return [_visible(item) for item in result]
    return result


class _Comparison(RuleBasedStateMachine):
    """Drives MemoryBackend, SQLiteBackend and EtcdBackend with the same calls from a
    non-reactor thread and checks both against a dict, and each one's watch
    stream against the same dict."""

    directory: str
    etcd_url: str

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        clocked = ClockedReactor(self.clock)
        path = tempfile.mktemp(dir=self.directory)
        self.backends = [
            self._call(lambda: MemoryBackend(clocked, sweep_interval=SWEEP)),
            self._call(SQLiteBackend.open, clocked, path, sweep_interval=SWEEP),
            self._call(EtcdBackend.open, clocked, [self.etcd_url], unique_prefix("machine"), sweep_interval=SWEEP),
        ]
        self.model: dict[str, Item] = {}
        self.mirrors: list[dict[str, Item]] = [{} for _ in self.backends]
        self.revisions = [[] for _ in self.backends]
        for backend, mirror, revisions in zip(self.backends, self.mirrors, self.revisions):
            self._call(backend.watch, "", functools.partial(self._mirror, mirror, revisions))

    @staticmethod
    def _mirror(mirror, revisions, event):
        revisions.append(event.item.revision)
        if event.type == PUT:
            mirror[event.item.key] = event.item
        else:
            del mirror[event.item.key]

    @staticmethod
    def _call(function, *args, **kwargs):
        return blockingCallFromThread(reactor, function, *args, **kwargs)

    def _each(self, method, *args):
        results = [self._call(getattr(backend, method), *args) for backend in self.backends]
        visible = [_visible(result) for result in results]
        assert all(one == visible[0] for one in visible), (method, args, visible)
        return visible[0]

    def _now(self):
        return self._call(self.clock.seconds)

    def _live(self):
        now = self._now()
        return {key: item for key, item in self.model.items() if item.is_live(now)}

    def _expires(self, ttl):
        return None if ttl is None else self._now() + ttl

    def _write(self, method, key, value, ttl, allowed, *extra):
        expires = self._expires(ttl)
        result = self._each(method, key, *extra, value, expires)
        expected = (key, value, expires) if allowed else None
        assert result == expected, (method, key, result, expected)
        if allowed:
            self.model[key] = Item(key, value, expires)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def put(self, key, value, ttl):
        self._write("put", key, value, ttl, True)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def create(self, key, value, ttl):
        self._write("create", key, value, ttl, key not in self._live())

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def update(self, key, value, ttl):
        self._write("update", key, value, ttl, key in self._live())

    @rule(key=KEYS, expected=VALUES, use_current=st.booleans(), value=VALUES, ttl=TTLS)
    def compare_and_swap(self, key, expected, use_current, value, ttl):
        current = self._live().get(key)
        if use_current and current is not None:
            expected = current.value
        allowed = current is not None and current.value == expected
        self._write("compare_and_swap", key, value, ttl, allowed, expected)

    @rule(key=KEYS)
    def delete(self, key):
        live = key in self._live()
        assert self._each("delete", key) == live
        if live:
            del self.model[key]

    @rule(prefix=PREFIXES)
    def delete_range(self, prefix):
        doomed = [key for key in self._live() if key.startswith(prefix)]
        assert self._each("delete_range", prefix) == len(doomed)
        for key in doomed:
            del self.model[key]

    @rule(key=KEYS)
    def get(self, key):
        current = self._live().get(key)
        assert self._each("get", key) == _visible(current)

    @rule(prefix=PREFIXES, limit=st.none() | st.integers(0, 3))
    def get_range(self, prefix, limit):
        live = self._live()
        expected = [_visible(live[key]) for key in sorted(live) if key.startswith(prefix)][:limit]
        assert self._each("get_range", prefix, limit) == expected

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0]))
    def advance(self, seconds):
        self._call(self.clock.advance, seconds)

    @invariant()
    def backends_match_model(self):
        live = self._live()
        expected = [_visible(live[key]) for key in sorted(live)]
        assert self._each("get_range", "") == expected
        now = self._now()
        for mirror, revisions in zip(self.mirrors, self.revisions):
            assert {key: _visible(item) for key, item in mirror.items() if item.is_live(now)} == {
                key: _visible(item) for key, item in live.items()
            }
            assert revisions == sorted(set(revisions))

    def teardown(self):
        for backend in self.backends:
            self._call(backend.close)


class ModelComparisonTests(TestCase):
    @async_test
    async def test_backends_agree_with_a_dict(self):
        directory = self.mktemp()
        os.makedirs(directory)
        server = await shared_etcd()
        machine = type("Comparison", (_Comparison,), {"directory": directory, "etcd_url": server.url})
        options = settings(
            max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )
        await deferToThread(run_state_machine_as_test, machine, settings=options)
