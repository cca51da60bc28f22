"""Locks end to end: real tctl, tsh and kubectl through the real chain.

A lock ends a running ``kubectl get -w`` within seconds (agents poll Auth's
locks every 2 s), refuses the next kubectl with the lock's message, and
refuses ``tsh login``; ``tctl rm lock/ID`` lifts it."""
from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import PASSWORD, Deployment, coroutine_test
from tests.support.kubeenv import default_kubectl
from tests.support.sessions import SessionsMixin


class LockFlowTests(TestCase):
    timeout = 300

    @coroutine_test
    async def test_lock_ends_watch_and_refuses(self):
        d = await Deployment(self, self.mktemp()).start()
        await d.login_with_kube_access("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        await d.kubectl("get", "pods", "-n", "default")
        watch = d.spawn("watch", [default_kubectl(), "get", "pods", "-n", "default", "-w"], env=d.env())
        await deferLater(reactor, 3, lambda: None)
        self.assertTrue(watch.running, watch.log_tail())

        locked_at = reactor.seconds()
        out = (await d.tctl("lock", "--user=alice", "--message=security incident", "--ttl=1h")).out
        lock_id = re.search(r'name "([^"]+)"', out).group(1)
        ended = Deferred()
        watch.exited.addBoth(ended.callback)
        for _ in range(40):
            if ended.called:
                break
            await deferLater(reactor, 0.5, lambda: None)
        self.assertTrue(ended.called, f"the watch still runs 20s after the lock:\n{watch.log_tail()}")
        self.assertLess(reactor.seconds() - locked_at, 20)

        refused = await d.kubectl("get", "pods", "-n", "default", expect=1)
        self.assertIn('lock targeting user "alice" is in force: security incident', refused.err)
        login = await d.tsh("login", f"--proxy={d.proxy}", "--user=alice", "--insecure",
                            stdin=PASSWORD.encode() + b"\n", expect=1)
        self.assertIn("security incident", login.err)
        self.assertIn(lock_id, (await d.tctl("get", "locks", "--format=text")).out)
        events = await d.events("lock.created", "client.disconnect")
        self.assertIn("lock.created", {e["event"] for e in events})

        await d.tctl("rm", f"lock/{lock_id}")
        await d.login("alice")
        await d.tsh("kube", "login", "my-cluster")
        for _ in range(20):  # the agents learn of the removal within a poll
            if (await d.kubectl("get", "pods", "-n", "default", expect=None)).code == 0:
                break
            await deferLater(reactor, 0.5, lambda: None)
        else:
            raise AssertionError("kubectl still refused after the lock was removed")
        self.assertIn("lock.deleted", {e["event"] for e in await d.events("lock.deleted")})


class LockEndsExecTests(SessionsMixin, TestCase):
    """A lock ends a running ``kubectl exec -it`` (the kubelet stand-in's shell)."""

    @coroutine_test
    async def test_lock_ends_interactive_exec(self):
        d = await self.deployment()
        binary = default_kubectl()
        terminal, transport = self.terminal(binary, "sh")
        await self.typed(terminal, transport, b"echo before-the-$((6*7))-lock\n", b"before-the-42-lock")
        locked_at = reactor.seconds()
        await d.tctl("lock", "--user=alice", "--message=incident 9")
        code = await terminal.ended  # the test timeout catches a hang
        self.assertNotEqual(code, 0)
        self.assertLess(reactor.seconds() - locked_at, 20)
        refused = await self.kubectl(binary, "exec", self.pod, "--", "true", expect=1)
        self.assertIn('lock targeting user "alice" is in force: incident 9', refused.err)
