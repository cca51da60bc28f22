"""The agent's audit spool: durable before upload, deleted only once stored."""
from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.events import KUBE_REQUEST, make_event
from teleport_py.kube.event_spool import EventSpool


def inline(f, *args):
    return maybeDeferred(f, *args)


class FakeAuth:
    """Stores events by uid, like the Auth audit log; can be made to fail."""

    def __init__(self):
        self.stored = {}
        self.calls = 0
        self.failing = False
        self.hold: Deferred | None = None

    def upload(self, batch):
        self.calls += 1
        if self.failing:
            raise ConnectionError("auth unreachable")
        if self.hold is not None:
            hold, self.hold = self.hold, None
            return hold.addCallback(lambda _: self._store(batch))
        return succeed(self._store(batch))

    def _store(self, batch):
        for event in batch:
            self.stored.setdefault(event["uid"], []).append(event)


class SpoolTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.clock = Clock()
        self.auth = FakeAuth()

    def spool(self, run_blocking=inline):
        return EventSpool(self.clock, self.dir, self.auth.upload, run_blocking=run_blocking, delay=1.0,
                          max_backoff=8.0)

    def commit(self):
        """End the reactor turn: the group emitted in it is written."""
        self.clock.advance(0)

    def spooled_lines(self) -> int:
        total = 0
        for name in os.listdir(self.dir):
            with open(os.path.join(self.dir, name), "rb") as f:
                total += len(f.read().splitlines())
        return total

    def event(self, n):
        return make_event(KUBE_REQUEST, 1000.0 + n, user="alice", request_path=f"/api/{n}")

    def test_written_before_upload_and_deleted_after(self):
        spool = self.spool()
        spool.emit(self.event(1))
        spool.emit(self.event(2))
        self.commit()
        self.assertEqual(self.spooled_lines(), 2)
        self.assertEqual(self.auth.stored, {})
        self.clock.advance(1)
        self.assertEqual(len(self.auth.stored), 2)
        self.assertEqual(self.spooled_lines(), 0)

    def test_events_survive_restart_and_are_uploaded_exactly_once(self):
        self.auth.failing = True
        spool = self.spool()
        events = [self.event(n) for n in range(5)]
        for event in events:
            spool.emit(event)
        self.commit()
        self.clock.advance(1)
        spool.stop()
        self.assertEqual(self.spooled_lines(), 5)
        # "Restart": a new spool over the same directory uploads what the old one left.
        self.auth.failing = False
        restarted = self.spool()
        restarted.schedule_upload()
        self.clock.advance(0)
        self.assertEqual(sorted(self.auth.stored), sorted(e["uid"] for e in events))
        self.assertTrue(all(len(copies) == 1 for copies in self.auth.stored.values()))
        self.assertEqual(self.spooled_lines(), 0)

    def test_failed_upload_retries_with_capped_backoff(self):
        self.auth.failing = True
        spool = self.spool()
        spool.emit(self.event(1))
        self.commit()
        attempts = []
        for step in (1, 1, 2, 4, 8, 8):
            self.clock.advance(step)
            attempts.append(self.auth.calls)
        self.assertEqual(attempts, [1, 2, 3, 4, 5, 6])
        self.auth.failing = False
        self.clock.advance(8)
        self.assertEqual(len(self.auth.stored), 1)
        self.assertEqual(self.spooled_lines(), 0)

    def test_events_emitted_during_an_upload_are_uploaded_next(self):
        spool = self.spool()
        self.auth.hold = Deferred()
        held = self.auth.hold
        spool.emit(self.event(1))
        self.commit()
        self.clock.advance(1)
        spool.emit(self.event(2))
        self.commit()
        held.callback(None)
        self.assertEqual(len(self.auth.stored), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.auth.stored), 2)
        self.assertEqual(self.spooled_lines(), 0)

    def test_torn_line_is_dropped_not_fatal(self):
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "000000000001.jsonl"), "wb") as f:
            f.write(b'{"uid": "a", "event": "kube.request"}\n{"uid": "b", "ev')
        spool = self.spool()
        spool.schedule_upload()
        self.clock.advance(0)
        self.assertEqual(list(self.auth.stored), ["a"])

    def test_spool_files_are_private(self):
        spool = self.spool()
        spool.emit(self.event(1))
        self.commit()
        (name,) = os.listdir(self.dir)
        self.assertEqual(os.stat(os.path.join(self.dir, name)).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)

    def test_a_window_of_events_is_one_write_in_order(self):
        writes = []

        def recording(f, *args):
            writes.append(f.__name__)
            return maybeDeferred(f, *args)

        spool = self.spool(recording)
        events = [self.event(n) for n in range(3)]
        for event in events:
            spool.emit(event)
        self.assertEqual((writes, self.spooled_lines()), ([], 0))
        self.commit()
        self.assertEqual(writes, ["append"])
        self.assertEqual(self.spooled_events(), [e["uid"] for e in events])

    def test_events_emitted_while_writing_are_the_next_group(self):
        held = []
        spool = self.spool(lambda f, *args: self._deferred_for(held, f, args))
        spool.emit(self.event(1))
        self.commit()
        spool.emit(self.event(2))
        spool.emit(self.event(3))
        self.commit()
        self.assertEqual(len(held), 1)  # the first write has not finished
        self.release(held, 0)
        self.commit()
        self.assertEqual([len(args[0]) for _, args, _ in held], [1, 2])
        self.release(held, 1)
        self.assertEqual(self.spooled_lines(), 3)

    def test_flush_commits_the_open_window_now(self):
        spool = self.spool()
        spool.emit(self.event(1))
        spool.emit(self.event(2))
        flushed = spool.flush()
        self.assertIsNone(self.successResultOf(flushed))
        self.assertEqual(self.spooled_lines(), 2)
        self.clock.advance(1)  # the cancelled window writes nothing twice
        self.assertEqual(self.spooled_lines(), 0)
        self.assertEqual(len(self.auth.stored), 2)

    def test_flush_waits_for_the_write_in_progress_and_the_next_group(self):
        held = []
        spool = self.spool(lambda f, *args: self._deferred_for(held, f, args))
        spool.emit(self.event(1))
        self.commit()
        spool.emit(self.event(2))
        flushed = spool.flush()
        self.assertNoResult(flushed)
        self.release(held, 0)
        self.assertNoResult(flushed)
        self.release(held, 1)
        self.successResultOf(flushed)
        self.assertEqual(self.spooled_lines(), 2)

    def test_durable_fires_once_its_group_is_on_disk(self):
        held = []
        spool = self.spool(lambda f, *args: self._deferred_for(held, f, args))
        self.assertIsNone(spool.durable())
        spool.emit(self.event(1))
        first = spool.durable()
        self.commit()
        spool.emit(self.event(2))
        spool.emit(self.event(3))
        second = spool.durable()
        self.commit()
        self.assertEqual(len(held), 1)  # events 2 and 3 wait for the write in flight
        self.assertNoResult(first)
        self.release(held, 0)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.commit()
        self.assertEqual([len(args[0]) for _, args, _ in held], [1, 2])  # one fsync for the group
        self.release(held, 1)
        self.successResultOf(second)
        self.assertIsNone(spool.durable())

    def test_failed_write_keeps_its_events_and_retries(self):
        failures = [OSError("disk full")]

        def failing_once(f, *args):
            if failures:
                return fail(failures.pop())
            return maybeDeferred(f, *args)

        spool = self.spool(failing_once)
        events = [self.event(1), self.event(2)]
        spool.emit(events[0])
        durable = spool.durable()
        self.commit()
        self.assertEqual(self.spooled_lines(), 0)
        self.assertNoResult(durable)  # fail closed: a response waiting for it keeps waiting
        spool.emit(events[1])
        self.clock.advance(1)
        self.successResultOf(durable)
        self.assertEqual(self.spooled_events(), [e["uid"] for e in events])
        self.assertEqual(len(self.auth.stored), 0)
        self.clock.advance(1)
        self.assertEqual(len(self.auth.stored), 2)
        self.flushLoggedErrors(OSError)

    def spooled_events(self) -> list:
        uids = []
        for name in sorted(os.listdir(self.dir)):
            with open(os.path.join(self.dir, name), "rb") as f:
                uids += [json.loads(line)["uid"] for line in f]
        return uids

    @staticmethod
    def _deferred_for(held, f, args):
        d = Deferred()
        held.append((f, args, d))
        return d

    @staticmethod
    def release(held, index):
        f, args, d = held[index]
        d.callback(f(*args))
