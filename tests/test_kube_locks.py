"""The agent's view of the locks in force (kube/locks.py), on a fake clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.kube.locks import LockWatch
from teleport_py.pki import UserIdentity

ALICE = UserIdentity(username="alice", roles=("dev",), expires=datetime.now(timezone.utc) + timedelta(hours=1))


def lock(name, **target):
    return {"kind": "lock", "version": "v2", "metadata": {"name": name}, "spec": {"target": target, "message": "m"}}


class LockWatchTests(TestCase):
    def test_polls_and_tells_changes(self):
        clock, answers, changes = Clock(), [[], [lock("a", role="dev")], [lock("a", role="dev")]], []
        watch = LockWatch(clock, lambda: succeed(answers.pop(0)), interval=2)
        watch.on_change = lambda: changes.append(watch.locks)
        watch.start()
        self.assertIsNone(watch.lock_for(ALICE))
        clock.advance(2)
        self.assertEqual(watch.lock_for(ALICE).describe(), 'lock targeting role "dev" is in force: m')
        clock.advance(2)
        self.assertEqual(len(changes), 1)  # the same list again is no change
        watch.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failures_keep_the_last_known_locks(self):
        clock = Clock()
        answers = [succeed([lock("a", user="alice")]), fail(RuntimeError("auth down")), succeed("garbage"),
                   succeed([{"kind": "lock"}, lock("b", user="alice")])]
        watch = LockWatch(clock, lambda: answers.pop(0), interval=2)
        watch.start()
        for _ in range(2):
            clock.advance(2)
            self.assertEqual(watch.lock_for(ALICE).name, "a")
        clock.advance(2)  # a malformed entry is skipped, the good one kept
        self.assertEqual(watch.lock_for(ALICE).name, "b")
        self.flushLoggedErrors()
        watch.stop()
