"""Stopping and starting real processes under load (see tests/e2e.py):
SIGTERM drains in-flight kubectl requests within teleport.shutdown_timeout
and exits 0; a stopped agent's cluster leaves ``tsh kube ls`` at once; a
started agent's cluster is listed within 2 s of its tunnel coming up."""
from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from teleport_py.auth.client import AuthClient
from teleport_py.config import DEFAULT_SHUTDOWN_TIMEOUT
from teleport_py.identityfile import IdentityFile
from tests.e2e import Deployment, coroutine_test
from tests.support.kubeenv import default_kubectl

#: Twisted's own shutdown after the drain (thread pools, logs), and a loaded machine.
MARGIN = 5.0


class LifecycleTests(TestCase):
    timeout = 600

    def admin(self, d: Deployment) -> AuthClient:
        """Auth's API as tctl on the auth host sees it, from this process (fast to poll)."""
        identity = IdentityFile.load(d.path("data", "admin"))
        pool = HTTPConnectionPool(reactor, persistent=False)
        return AuthClient.direct(reactor, f"127.0.0.1:{d.auth_port}", trusted_cas=identity.host_cas,
                                 certificate=identity.certificate, private_key=identity.private_key, pool=pool)

    async def listed(self, d: Deployment) -> set[str]:
        out = (await d.tsh("kube", "ls")).out
        return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}

    def watch(self, d: Deployment, name: str, timeout_seconds: int | None):
        """``kubectl get --raw`` of a pod watch: the API server ends it after
        ``timeout_seconds`` (None: never), and kubectl then exits 0."""
        query = "watch=1" + (f"&timeoutSeconds={timeout_seconds}" if timeout_seconds else "")
        return d.spawn(name, [default_kubectl(), "get", "--raw", f"/api/v1/namespaces/default/pods?{query}"],
                       env=d.env())

    async def stop_timed(self, process) -> tuple[int, float]:
        started = reactor.seconds()
        code = await process.stop(grace=DEFAULT_SHUTDOWN_TIMEOUT + 30)
        return code, reactor.seconds() - started

    @coroutine_test
    async def test_sigterm_drains_says_goodbye_and_registration_is_fast(self):
        d = await Deployment(self, self.mktemp()).start()
        await d.login_with_kube_access("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        await d.kubectl("get", "pods")

        # The agent under load: a watch the API server ends after 3 s, and one it never ends.
        finishing = self.watch(d, "watch-3s", 3)
        endless = self.watch(d, "watch-endless", None)
        await deferLater(reactor, 1.0, lambda: None)
        self.assertTrue(finishing.running and endless.running, finishing.log_tail() + endless.log_tail())
        code, took = await self.stop_timed(d.agent)
        self.assertEqual(code, 0, d.agent.log_tail())
        # In flight at SIGTERM and finished by the API server: completed normally.
        self.assertEqual(await finishing.exited, 0, finishing.log_tail())
        # The endless one is cut at the deadline, and the agent stops then.
        self.assertGreaterEqual(took, DEFAULT_SHUTDOWN_TIMEOUT - 1.5, d.agent.log_tail())
        self.assertLess(took, DEFAULT_SHUTDOWN_TIMEOUT + MARGIN, d.agent.log_tail())
        await endless.exited
        self.assertNotIn(b"Traceback", d.agent.output())
        # Its goodbye: gone from tsh kube ls now, not 90 s later (the heartbeat TTL).
        self.assertNotIn("my-cluster", await self.listed(d))

        # A started agent is listed within 2 s of its tunnel coming up.
        admin = self.admin(d)
        await d.start_agent()
        await d.agent.wait_for_output(r"reverse tunnel up", timeout=90)
        tunnel_up = reactor.seconds()
        while not any(s["metadata"]["name"] == "my-cluster" for s in await admin.list("kube_server")):
            self.assertLess(reactor.seconds() - tunnel_up, 2.0, d.agent.log_tail())
            await deferLater(reactor, 0.05, lambda: None)
        self.assertLess(reactor.seconds() - tunnel_up, 2.0)
        self.assertIn("my-cluster", await self.listed(d))

        # auth+proxy under load: the in-flight watch completes, then exit 0.
        finishing = self.watch(d, "watch-3s-main", 3)
        await deferLater(reactor, 1.0, lambda: None)
        self.assertTrue(finishing.running, finishing.log_tail())
        code, took = await self.stop_timed(d.main)
        self.assertEqual(code, 0, d.main.log_tail())
        self.assertEqual(await finishing.exited, 0, finishing.log_tail())
        self.assertLess(took, DEFAULT_SHUTDOWN_TIMEOUT + MARGIN, d.main.log_tail())
        self.assertNotIn(b"Traceback", d.main.output())

        # An agent whose proxy is gone still stops promptly (its goodbye cannot reach Auth).
        code, took = await self.stop_timed(d.agent)
        self.assertEqual(code, 0, d.agent.log_tail())
        self.assertLess(took, DEFAULT_SHUTDOWN_TIMEOUT + MARGIN, d.agent.log_tail())
        self.assertFalse(os.path.exists(d.path("twistd.pid")))
