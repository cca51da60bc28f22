"""The proxy's side of ``tsh request search`` (proxy/kube_search.py): one
``kube_search`` stream to an agent serving the cluster, its answer bounded
in size and time, the agent's refusals passed on as the same errors, and
anything malformed a 502. The tunnel is a fake here; the end-to-end test
(tests.test_e2e_resource_requests) runs the real one."""
from __future__ import annotations

import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from teleport_py.auth.errors import AccessDenied, AuthError, BadParameter, NotFound
from teleport_py.proxy import kube_search
from teleport_py.proxy.kube_search import KubeResourceSearch


class Agent:
    host_id = "agent-1"


class FakeTunnel:
    """Connects the proxy's protocol to a transport, then plays ``answer``."""

    def __init__(self, answer: list[bytes] | None, refuse: Exception | None = None):
        self.answer = answer
        self.refuse = refuse
        self.opened = []

    def open_stream(self, kind, metadata, protocol):
        self.opened.append((kind, metadata))
        if self.refuse is not None:
            from twisted.internet.defer import fail
            return fail(self.refuse)
        transport = self.transport = AbortableTransport(protocol)
        protocol.makeConnection(transport)
        if self.answer is not None:
            for chunk in self.answer:
                if transport.aborted:
                    break
                protocol.dataReceived(chunk)
            if not transport.aborted:
                protocol.connectionLost(None)
        return succeed(None)


class AbortableTransport(StringTransport):
    def __init__(self, protocol):
        super().__init__()
        self.protocol = protocol
        self.aborted = False

    def abortConnection(self):
        if not self.aborted:
            self.aborted = True
            self.protocol.connectionLost(None)


class Registry:
    def __init__(self, tunnel):
        self.tunnel = tunnel

    def pick(self, cluster):
        return (self.tunnel, Agent()) if cluster == "c1" and self.tunnel is not None else None


class KubeResourceSearchTests(TestCase):
    def search(self, tunnel, clock=None, cluster="c1"):
        searcher = KubeResourceSearch(clock or Clock(), Registry(tunnel))
        return Deferred.fromCoroutine(searcher.search("PEM", "1.2.3.4:5", cluster, "pod", "default"))

    def test_answer_relayed_with_the_certificate(self):
        items = [{"kind": "pod", "name": "web-0", "namespace": "default", "labels": {}, "id": "/e/pod/c1/default/web-0"}]
        body = json.dumps({"items": items}).encode()
        tunnel = FakeTunnel([body[:10], body[10:]])
        result = self.successResultOf(self.search(tunnel))
        self.assertEqual(result, {"items": items, "truncated": False})
        self.assertEqual(tunnel.opened, [("kube_search", {"user_cert": "PEM", "client_addr": "1.2.3.4:5",
                                                          "kube_cluster": "c1", "kind": "pod",
                                                          "namespace": "default"})])

    def test_refusals_and_bad_answers(self):
        cases = [
            (FakeTunnel([b'{"error": {"code": 403, "message": "no"}}']), AccessDenied, "no"),
            (FakeTunnel([b'{"error": {"code": 400, "message": "bad kind"}}']), BadParameter, "bad kind"),
            (FakeTunnel([b'{"error": {"code": 500, "message": "boom"}}']), AuthError, "boom"),
            (FakeTunnel([b"not json"]), AuthError, "malformed"),
            (FakeTunnel([b'{"items": [1]}']), AuthError, "malformed"),
            (FakeTunnel([b""]), AuthError, "no answer"),
            (FakeTunnel(None, refuse=ValueError("stopping")), BadParameter, "refused the search"),
        ]
        for tunnel, error, text in cases:
            failure = self.failureResultOf(self.search(tunnel), error)
            self.assertIn(text, failure.value.message)
        failure = self.failureResultOf(self.search(FakeTunnel([b"{}"]), cluster="gone"), NotFound)
        self.assertIn('"gone"', failure.value.message)

    def test_answer_is_bounded(self):
        chunk = b" " * 65536
        tunnel = FakeTunnel([chunk] * (kube_search.MAX_ANSWER // len(chunk) + 2))
        failure = self.failureResultOf(self.search(tunnel), AuthError)
        self.assertIn("too large", failure.value.message)
        self.assertTrue(tunnel.transport.aborted)

    def test_slow_agent_is_cut(self):
        clock = Clock()
        tunnel = FakeTunnel(None)
        searching = self.search(tunnel, clock)
        self.assertNoResult(searching)
        clock.advance(kube_search.ANSWER_TIMEOUT)
        self.assertTrue(tunnel.transport.aborted)
        self.failureResultOf(searching, AuthError)
