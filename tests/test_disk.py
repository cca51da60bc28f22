"""Durable writes: private files, appends, writes at an offset."""
from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from teleport_py import disk


class DiskTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "f")

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()

    def test_append_creates_a_private_file_and_appends(self):
        disk.append(self.path, b"one\n")
        disk.append(self.path, b"two\n", sync=False)
        self.assertEqual(self.read(), b"one\ntwo\n")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_write_at_drops_what_was_past_the_offset(self):
        disk.write_at(self.path, 0, b"abcdef")
        disk.write_at(self.path, 3, b"XY")
        self.assertEqual(self.read(), b"abcXY")
        disk.write_at(self.path, 5, b"")
        self.assertEqual(self.read(), b"abcXY")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_sync_directory_of_a_missing_directory_fails(self):
        disk.sync_directory(self.dir)
        self.assertRaises(FileNotFoundError, disk.sync_directory, os.path.join(self.dir, "missing"))


class FileThreadTests(SynchronousTestCase):
    """The ordered worker thread: started with the spool, flushed and stopped with the reactor."""

    def test_before_stop_runs_before_the_thread_stops(self):
        triggers = []

        class Reactor:
            def addSystemEventTrigger(self, phase, event, f, *args):
                triggers.append((phase, event, f))

            def callFromThread(self, f, *args, **kwargs):
                f(*args, **kwargs)

        flushed = []
        disk.file_thread(Reactor(), "test-files", before_stop=lambda: flushed.append(True))
        self.assertEqual([(p, e) for p, e, _ in triggers], [("before", "shutdown"), ("during", "shutdown")])
        triggers[0][2]()
        self.assertEqual(flushed, [True])
        triggers[1][2]()  # stops the pool's thread

    def test_work_runs_in_order_on_another_thread_and_errors_are_errbacks(self):
        import threading

        handed_back = []

        class Reactor:
            def addSystemEventTrigger(self, phase, event, f, *args):
                self.stop = f

            def callFromThread(self, f, *args, **kwargs):
                handed_back.append((f, args))

        reactor = Reactor()
        run = disk.file_thread(reactor, "test-files")
        threads, results = [], []
        first = run(lambda: threads.append(threading.get_ident()) or "first")
        failed = run(lambda: 1 / 0)
        second = run(lambda: threads.append(threading.get_ident()) or "second")
        for d in (first, failed, second):
            d.addBoth(results.append)
        reactor.stop()  # queued work is done before the thread ends
        self.assertEqual(len(set(threads)), 1)
        self.assertNotEqual(threads[0], threading.get_ident())
        self.assertEqual(results, [])  # nothing fires on the worker thread
        for f, args in handed_back:
            f(*args)
        self.assertEqual(results[0], "first")
        self.assertTrue(results[1].check(ZeroDivisionError))
        self.assertEqual(results[2], "second")
        self.assertNoResult(run(lambda: None))  # after stop, nothing more runs
