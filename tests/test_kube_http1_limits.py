"""The agent's HTTP/1.1 front within ``teleport.connection_limits``: a
kept-alive kubectl connection with nothing to do is closed after
``idle_timeout``, and a request head must arrive within
``read_header_timeout`` of its first byte (else a 408 Status). On a Clock."""
from __future__ import annotations

import json
from types import SimpleNamespace

import h11

from twisted.internet import error
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.config import ConnectionLimits
from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.http1 import MAX_PIPELINED, KubeConnection
from tests.support.kube import FakeRoles, credentials, kubectl_request, role
from tests.support.pki import NOW, USER_CA, user_cert_pem

LIMITS = ConnectionLimits(read_header_timeout=10.0, idle_timeout=60.0)


class KeepAliveAndHeadDeadlineTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.audit = []
        self.clock.advance(NOW.timestamp())
        acceptor = StreamAcceptor(self.clock, clusters={"c1": KubeCluster("c1", {"env": "dev"}, credentials(1))},
                                  user_cas=[USER_CA.certificate], roles=RoleCache(self.clock, FakeRoles(role()).fetch),
                                  emit=self.audit.append, limits=LIMITS)

        async def refused(*args, **kwargs):
            raise error.ConnectionRefusedError()

        class Refusing:
            acquire = request = staticmethod(refused)

        acceptor.connections.pool = acceptor.connections.h2_pool = lambda cluster: Refusing()
        self.kubectl = acceptor.accept_stream({"user_cert": user_cert_pem(), "kube_cluster": "c1"})
        self.transport = StringTransport()
        self.kubectl.makeConnection(self.transport)
        self.addCleanup(self.kubectl.connectionLost, Failure(ConnectionDone()))

    def test_a_connection_that_never_asks_is_closed_when_idle(self):
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.audit, [])  # no request was begun: nothing to audit

    def test_a_head_arriving_too_slowly_is_a_408(self):
        request = kubectl_request(b"GET", b"/api/v1/namespaces/default/pods")
        started = self.clock.seconds()
        for byte in range(len(request) - 1):  # progress does not extend the deadline
            self.kubectl.dataReceived(request[byte:byte + 1])
            self.clock.advance(9.0 / len(request))
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(started + 10 - self.clock.seconds())
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 408 "))
        self.assertIn("did not arrive within 10 s", json.loads(body)["message"])
        self.assertTrue(self.transport.disconnecting)
        # Audited as a request cut short, with what its request line held.
        (event,) = self.audit
        self.assertEqual((event["response_code"], event["success"], event["http_method"], event["request_path"]),
                         (408, False, "GET", "/api/v1/namespaces/default/pods"))
        self.assertEqual(event["reason"], "HTTP/1.1: the request head did not arrive within 10 s")

    def test_a_stalled_target_is_audited_escaped_and_cut(self):
        self.kubectl.dataReceived(b"GET /api/v1/\x1b[31m" + b"x" * 500)
        self.clock.advance(10)
        (event,) = self.audit
        self.assertEqual(event["response_code"], 408)
        self.assertTrue(event["request_path"].startswith("/api/v1/\\x1b[31mxxx"))
        self.assertLessEqual(len(event["request_path"]), 160)
        self.assertTrue(event["request_path"].endswith("..."))

    def test_after_a_response_the_connection_waits_idle_and_the_next_head_has_its_own_deadline(self):
        self.kubectl.dataReceived(kubectl_request(b"GET", b"/api/v1/namespaces/default/pods"))
        self.assertIn(b" 502 ", self.transport.value())  # answered (the API server refused)
        self.clock.advance(30)  # idle, under idle_timeout: no head deadline meanwhile
        self.assertFalse(self.transport.disconnecting)
        self.transport.clear()
        self.kubectl.dataReceived(b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\n")
        self.clock.advance(9)
        self.assertEqual(self.transport.value(), b"")
        self.kubectl.dataReceived(b"host: proxy\r\n\r\n")
        self.assertIn(b" 502 ", self.transport.value())
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_a_closed_connection_leaves_no_timer(self):
        self.kubectl.dataReceived(b"GET / HTTP/1.1\r\n")
        self.kubectl.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class _Streaming:
    """An upstream whose response stays under way until the test ends it."""

    def request_data(self, data):
        pass

    def request_done(self):
        pass

    def downstream_lost(self):
        pass


class _StreamingCaller:
    """A KubeCaller whose every request is forwarded at once and answered
    with a chunked response head (a watch, say) that stays open."""

    def __init__(self, clock):
        self.stream = SimpleNamespace(limits=LIMITS, reactor=clock)
        self.identity = SimpleNamespace(username="alice")

    def canonical(self, connection, method, target, host, headers):
        return SimpleNamespace(names_object_in_body=False)

    async def forward(self, connection, request, held):
        connection.upstream = _Streaming()
        connection.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))

    def cut_short(self, *args):
        pass

    def refused_unparsed(self, *args):
        pass


class PipelinedBytesTests(SynchronousTestCase):
    """What kubectl sends behind a request whose response is under way is
    not read without limit: past MAX_PIPELINED the stream stops being read
    until the exchange ends, then the bytes are read as the next request."""

    def setUp(self):
        self.clock = Clock()
        self.kubectl = KubeConnection(_StreamingCaller(self.clock))
        self.transport = StringTransport()
        self.kubectl.makeConnection(self.transport)
        self.addCleanup(self.kubectl.connectionLost, Failure(ConnectionDone()))
        self.kubectl.dataReceived(kubectl_request(b"GET", b"/api/v1/namespaces/default/pods?watch=1"))
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))

    def test_reading_stops_past_the_bound_and_resumes_when_the_exchange_ends(self):
        self.kubectl.dataReceived(b"x" * MAX_PIPELINED)
        self.assertEqual(self.transport.producerState, "producing")
        self.kubectl.dataReceived(b"x")
        self.assertEqual(self.transport.producerState, "paused")
        # A throttle resuming the stream does not lift the bound: the next read pauses it again.
        self.transport.resumeProducing()
        self.kubectl.dataReceived(b"x")
        self.assertEqual(self.transport.producerState, "paused")
        # The watch ends: the stream is read again, and what waited is the next request (here: garbage, a 400).
        self.kubectl.send(h11.EndOfMessage())
        self.kubectl.upstream_finished()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertIn(b"HTTP/1.1 400 ", self.transport.value())
