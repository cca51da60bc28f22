"""The diagnostic listener (teleport.diag_addr) on a real port, and the
agent's readiness check."""
from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from teleport_py.config import Address, ConfigError, ConnectionLimits, parse_config
from teleport_py.diag import diag_listener
from teleport_py.kube.readiness import API_SERVER_CHECK_TTL, KubeReadiness


class DiagListenerTests(TestCase):
    async def _get(self, port: int, path: str):
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
        return response.code, await readBody(response)

    async def _probe_all(self):
        state = {"missing": "not joined to the cluster yet"}

        async def readiness():
            return state["missing"]

        listener = diag_listener(reactor, Address("127.0.0.1", 0), ConnectionLimits(), readiness)
        listener.startService()
        self.addCleanup(listener.stop_by, reactor.seconds() + 1)
        port = (await listener.ready).getHost().port
        self.assertEqual(await self._get(port, "/healthz"), (200, b"ok\n"))
        self.assertEqual(await self._get(port, "/readyz"), (503, b"not ready: not joined to the cluster yet\n"))
        state["missing"] = None
        self.assertEqual(await self._get(port, "/readyz"), (200, b"ok\n"))
        code, _ = await self._get(port, "/metrics")
        self.assertEqual(code, 404)

    def test_probes(self):
        return Deferred.fromCoroutine(self._probe_all())

    def test_config(self):
        kube = "kubernetes_service: {kube_cluster_name: c}\n"
        config = parse_config("teleport:\n  diag_addr: 0.0.0.0\n" + kube)
        self.assertEqual(config.diag_addr, Address("0.0.0.0", 3000))
        self.assertIsNone(parse_config(kube).diag_addr)
        with self.assertRaises(ConfigError) as e:  # never a setting silently ignored
            parse_config("teleport:\n  diag_addr: 0.0.0.0:3000\n")
        self.assertIn("teleport.diag_addr", str(e.exception))


class KubeReadinessTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.calls = 0
        self.answer: str | None = None
        self.pending: list[Deferred] = []

        async def check(reactor, credentials):
            self.calls += 1
            d = Deferred()
            self.pending.append(d)
            await d
            return self.answer

        self.readiness = KubeReadiness(self.clock, {"my-cluster": _Cluster()}, check=check)

    def ask(self) -> Deferred:
        return Deferred.fromCoroutine(self.readiness())

    def test_not_ready_until_joined_and_tunnel_up(self):
        self.assertEqual(self.successResultOf(self.ask()), "not joined to the cluster yet")
        self.readiness.joined = True
        self.assertEqual(self.successResultOf(self.ask()), "reverse tunnel to the proxy is not up")
        self.assertEqual(self.calls, 0)

    def test_api_server_checks_are_shared_and_cached(self):
        self.readiness.joined = True
        self.readiness.tunnel_up = lambda: True
        first, second = self.ask(), self.ask()
        self.assertEqual(self.calls, 1)  # one check for both probes
        self.answer = "API server of my-cluster unreachable (ConnectionRefusedError)"
        self.pending.pop().callback(None)
        self.assertEqual(self.successResultOf(first), self.answer)
        self.assertEqual(self.successResultOf(second), self.answer)
        self.assertEqual(self.successResultOf(self.ask()), self.answer)  # cached
        self.assertEqual(self.calls, 1)
        self.clock.advance(API_SERVER_CHECK_TTL)
        third = self.ask()
        self.assertEqual(self.calls, 2)
        self.answer = None
        self.pending.pop().callback(None)
        self.assertIsNone(self.successResultOf(third))


class _Cluster:
    credentials = None


class ApiServerReadyTests(TestCase):
    """api_server_ready against a port where nothing listens: one line, no exception."""

    def test_unreachable(self):
        from teleport_py.kube.credentials import ClusterCredentials
        from teleport_py.kube.readiness import api_server_ready
        from tests.support.pki import KUBE_CA
        from tests.support.procs import free_port

        credentials = ClusterCredentials(name="my-cluster", host="127.0.0.1", port=free_port(),
                                         ca_certificates=(KUBE_CA.certificate,))
        d = Deferred.fromCoroutine(api_server_ready(reactor, credentials))
        d.addCallback(self.assertEqual, "API server of my-cluster unreachable (ConnectionRefusedError)")
        return d
