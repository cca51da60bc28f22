"""The background uploader: when uploads run, how failures are retried."""
from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.backoff import JITTER
from teleport_py.uploader import Uploader


class Target:
    """Counts uploads; fails while ``failing``; holds one when given a Deferred."""

    def __init__(self, clock):
        self.clock = clock
        self.times: list[float] = []
        self.failing = False
        self.hold: Deferred | None = None

    def upload_once(self):
        self.times.append(self.clock.seconds())
        if self.failing:
            return fail(ConnectionError("auth unreachable"))
        if self.hold is not None:
            return self.hold
        return succeed(None)


class UploaderTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.target = Target(self.clock)

    def uploader(self, random=lambda: 0.0, **kw):
        kw.setdefault("interval", 1.0)
        kw.setdefault("max_backoff", 8.0)
        uploader = Uploader(self.clock, self.target.upload_once, what="test", random=random, **kw)
        self.addCleanup(uploader.stop)
        return uploader

    def test_runs_when_asked_and_not_before(self):
        uploader = self.uploader()
        uploader.soon(2.0)
        self.clock.advance(1.9)
        self.assertEqual(self.target.times, [])
        self.clock.advance(0.1)
        self.assertEqual(self.target.times, [2.0])
        self.clock.advance(100)
        self.assertEqual(self.target.times, [2.0])  # not periodic: idle until asked

    def test_asking_again_while_scheduled_is_one_upload(self):
        uploader = self.uploader()
        uploader.soon(1.0)
        uploader.soon(1.0)
        uploader.soon(0.5)
        self.clock.advance(1.0)
        self.assertEqual(self.target.times, [1.0])

    def test_asked_for_during_an_upload_follows_it(self):
        uploader = self.uploader()
        self.target.hold = held = Deferred()
        uploader.soon(0)
        self.clock.advance(0)
        uploader.soon(3.0)
        uploader.soon(2.0)
        self.clock.advance(5)
        self.assertEqual(self.target.times, [0.0])  # one at a time
        self.target.hold = None
        held.callback(None)
        self.clock.advance(2.0)
        self.assertEqual(self.target.times, [0.0, 7.0])

    def test_failures_back_off_doubling_to_the_cap(self):
        uploader = self.uploader()
        self.target.failing = True
        uploader.soon(0)
        self.clock.pump([0] + [1] * 40)
        gaps = [b - a for a, b in zip(self.target.times, self.target.times[1:])]
        self.assertEqual(gaps[:6], [1, 2, 4, 8, 8, 8])
        self.target.failing = False
        self.clock.advance(8)
        count = len(self.target.times)
        self.clock.advance(100)
        self.assertEqual(len(self.target.times), count)  # succeeded: stops retrying
        self.flushLoggedErrors()

    def test_success_resets_the_backoff(self):
        uploader = self.uploader()
        self.target.failing = True
        uploader.soon(0)
        self.clock.pump([0, 1, 2, 4])  # failed at 0, 1, 3, 7
        self.target.failing = False
        self.clock.advance(8)  # succeeds at 15
        self.target.failing = True
        uploader.soon(0)
        self.clock.advance(0)
        self.clock.advance(1)
        self.assertEqual(self.target.times, [0, 1, 3, 7, 15, 15, 16])

    def retry_delays(self, random, count=5):
        uploader = self.uploader(random=random)
        self.target.failing = True
        uploader.soon(0)
        self.clock.advance(0)
        delays = []
        for _ in range(count):
            (call,) = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        uploader.stop()
        self.flushLoggedErrors()
        return delays

    def test_jitter_only_shortens_a_retry_by_up_to_a_quarter(self):
        self.assertEqual(self.retry_delays(lambda: 0.0), [1, 2, 4, 8, 8])
        shortest = self.retry_delays(lambda: 1.0)
        self.assertEqual([round(d, 9) for d in shortest], [d * (1 - JITTER) for d in (1, 2, 4, 8, 8)])
        self.assertEqual(JITTER, 0.25)

    def test_periodic_runs_every_interval(self):
        uploader = self.uploader(interval=5.0, periodic=True)
        uploader.soon(0)
        self.clock.pump([0, 5, 5, 5])
        self.assertEqual(self.target.times, [0, 5, 10, 15])

    def test_stop_cancels_what_is_scheduled_and_nothing_starts_after(self):
        uploader = self.uploader(periodic=True)
        uploader.soon(1.0)
        uploader.stop()
        self.clock.advance(10)
        uploader.soon(0)
        self.clock.advance(10)
        self.assertEqual(self.target.times, [])

    def test_a_failure_after_stop_is_not_retried(self):
        uploader = self.uploader()
        self.target.hold = held = Deferred()
        uploader.soon(0)
        self.clock.advance(0)
        uploader.stop()
        held.errback(ConnectionError("gone"))
        self.clock.advance(100)
        self.assertEqual(self.target.times, [0])
