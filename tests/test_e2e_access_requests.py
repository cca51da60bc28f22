"""Just-in-time access end to end: real tsh, tctl and kubectl through the
real chain (proxy, reverse tunnel, agent) to a real kube-apiserver.

alice holds no kube access; she requests the ``kube-access`` role, bob
reviews, and her kubectl works until ``tsh request drop`` (then is refused)
and, back on the request, until its ``max_duration`` ends, and fails after. A denied request changes nothing."""
from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import PASSWORD, Deployment, coroutine_test
from tests.support.request_roles import REVIEWER_ROLE, requester_role
from tests.support.seed import KUBE_ACCESS_ROLE

#: How long approved access lasts: long enough for a few kubectl calls on a
#: busy machine, short enough to watch it end.
ACCESS_SECONDS = 45

REQUESTER_ROLE = requester_role(f"{ACCESS_SECONDS}s")


class AccessRequestFlowTests(TestCase):
    timeout = 400

    async def pending_id(self, d: Deployment, env) -> str:
        """The id of the one PENDING request bob sees, once it is there."""
        for _ in range(120):
            out = (await d.tsh("request", "ls", env=env)).out
            found = re.findall(r"^(\S+)\s+alice\s+kube-access\s+\S+\s+PENDING", out, re.MULTILINE)
            if found:
                return found[-1]
            await deferLater(reactor, 0.5, lambda: None)
        raise AssertionError(f"no pending request from alice:\n{out}")

    @coroutine_test
    async def test_request_review_use_and_expire(self):
        d = await Deployment(self, self.mktemp()).start()
        for name, text in (("kube-access", KUBE_ACCESS_ROLE), ("requester", REQUESTER_ROLE), ("reviewer", REVIEWER_ROLE)):
            await d.tctl("create", "-f", d.write(f"{name}.yaml", text))
        await d.add_user("alice", "requester")
        await d.add_user("bob", "reviewer")
        await d.add_user("ops", "access,kube-access")
        bob, ops = d.user_env("bob"), d.user_env("ops")
        await d.login("bob", bob)
        await d.login("ops", ops)
        await d.login("alice")
        # The agent is up (ops sees the cluster); alice, without kube access, does not.
        for _ in range(120):
            if "my-cluster" in (await d.tsh("kube", "ls", env=ops)).out:
                break
            await deferLater(reactor, 0.5, lambda: None)
        else:
            raise AssertionError(f"the agent never announced my-cluster:\n{d.agent.log_tail()}")
        self.assertNotIn("my-cluster", (await d.tsh("kube", "ls")).out)
        refused = await d.tsh("kube", "login", "my-cluster", expect=1)
        self.assertIn("not found", refused.err)
        # alice may not review, nor request a role her roles do not name.
        refused = await d.tsh("request", "create", "--roles=editor", "--reason=x", expect=1)
        self.assertIn("do not allow requesting", refused.err)

        # A denied request changes nothing.
        waiting = Deferred.fromCoroutine(d.tsh("request", "create", "--roles=kube-access", "--reason=try", expect=None))
        denied_id = await self.pending_id(d, bob)
        await d.tsh("request", "review", "--deny", denied_id, "--reason=not now", env=bob)
        result = await waiting
        self.assertEqual(result.code, 1, result.out + result.err)
        self.assertIn("denied: not now", result.err)
        await d.tsh("kube", "login", "my-cluster", expect=1)

        # alice cannot review her own request; bob approves it.
        waiting = Deferred.fromCoroutine(d.tsh("request", "create", "--roles=kube-access", "--reason=incident 42"))
        request_id = await self.pending_id(d, bob)
        own = await d.tsh("request", "review", "--approve", request_id, expect=1)
        self.assertIn("your own", own.err)
        shown = (await d.tsh("request", "show", request_id, env=bob)).out
        self.assertIn("incident 42", shown)
        await d.tsh("request", "review", "--approve", request_id, "--reason=go ahead", env=bob)
        result = await waiting
        self.assertIn("Approved: go ahead", result.out)
        self.assertIn("kube-access", result.out)
        self.assertIn(request_id, (await d.tsh("status")).out)

        await d.tsh("kube", "login", "my-cluster")
        pods = await d.kubectl("get", "pods", "-n", "default")
        self.assertEqual(pods.code, 0)
        # 'tsh request drop' takes the elevation back off at once: the next
        # kubectl is refused (the kube certificate kubectl held is gone with it).
        dropped = await d.tsh("request", "drop", request_id)
        self.assertIn(f"Dropped access request {request_id}.", dropped.out)
        self.assertNotIn("Active requests", dropped.out)
        refused = await d.kubectl("get", "pods", "-n", "default", expect=None)
        self.assertNotEqual(refused.code, 0, refused.out)
        self.assertIn('kubernetes cluster "my-cluster" not found', refused.err)
        # Back to the approved request for the rest of the walk (it has time left).
        await d.tsh("login", f"--proxy={d.proxy}", "--user=alice", "--insecure", f"--request-id={request_id}",
                    stdin=PASSWORD.encode() + b"\n")
        events = await d.wait_for_events(
            "kube.request", until=lambda evs: any(e.get("user") == "alice" for e in evs))
        mine = [e for e in events if e.get("user") == "alice"]
        self.assertTrue(all(e.get("access_requests") == [request_id] for e in mine), mine)
        listed = (await d.tctl("requests", "ls")).out
        self.assertRegex(listed, rf"{request_id}\s+alice\s+kube-access\s+\S+\s+APPROVED")

        # The access ends with the request: kubectl fails after, without any action.
        deadline = reactor.seconds() + ACCESS_SECONDS + 60
        while True:
            after = await d.kubectl("get", "pods", "-n", "default", expect=None)
            if after.code != 0:
                break
            self.assertLess(reactor.seconds(), deadline, "kubectl still works long after the request expired")
            await deferLater(reactor, 2, lambda: None)
        self.assertIn("expired", after.err)
        expired = await d.wait_for_events(
            "access_request.expire", until=lambda evs: any(e.get("id") == request_id for e in evs))
        self.assertTrue(expired)
        # A plain login is back to alice's own roles.
        await d.login("alice")
        status = (await d.tsh("status")).out
        self.assertNotIn("kube-access", status)
        self.assertNotIn("Active requests", status)
        await d.tsh("kube", "login", "my-cluster", expect=1)
        events = await d.events("access_request.create", "access_request.review")
        self.assertEqual({e["event"] for e in events if e.get("id") in (request_id, denied_id)},
                         {"access_request.create", "access_request.review"})
