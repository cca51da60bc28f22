"""teleport_py.limits: what every listener allows, with a Clock and in-memory
transports, plus real TLS on 127.0.0.1 for the handshake deadline and the
per-source limit."""
from __future__ import annotations

import json
import socket

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from teleport_py.config import ConnectionLimits
from teleport_py.limits import LINGER, AfterHandshake, LimitedTLSFactory, limit_http
from teleport_py.pki import server_tls_options
from tests.support.pki import PROXY_CERT, PROXY_KEY
from tests.support.proxy import connect_tls, web_client

LIMITS = ConnectionLimits(max_connections=2, handshake_timeout=5.0, read_header_timeout=10.0,
                          idle_timeout=60.0, max_header_bytes=4096)


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


def _site(clock: Clock, limits: ConnectionLimits = LIMITS):
    return limit_http(server.Site(Hello(), reactor=clock), limits)


def _connect(site) -> tuple[Protocol, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1234))
    transport = StringTransport(lenient=True)
    channel.makeConnection(transport)
    return channel, transport


def _aborted(transport: StringTransport) -> bool:
    """StringTransport.abortConnection marks ``disconnected`` (its docstring says ``aborted``)."""
    return getattr(transport, "disconnected", False)


def _status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


def _error_message(transport: StringTransport) -> str:
    return json.loads(transport.value().split(b"\r\n\r\n", 1)[1])["error"]["message"]


class BoundedHTTPChannelTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.channel, self.transport = _connect(_site(self.clock))

    def test_a_request_within_limits_is_served_and_keeps_the_connection(self):
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(_status(self.transport), 200)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(LIMITS.read_header_timeout + 1)  # idle, not reading a head: no deadline
        self.assertFalse(self.transport.disconnecting)

    def test_a_line_longer_than_the_limit_is_431_and_nothing_more_is_read(self):
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 5000)
        self.assertEqual(_status(self.transport), 431)
        self.assertIn("larger than 4096 bytes", _error_message(self.transport))
        self.assertTrue(self.transport.disconnecting)
        answered = self.transport.value()
        self.channel.dataReceived(b"b" * 100_000 + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.transport.value(), answered)
        self.assertEqual(self.channel._buffer, b"")  # dropped, not kept
        self.assertFalse(_aborted(self.transport))
        self.clock.advance(LINGER)
        self.assertTrue(_aborted(self.transport))

    def test_many_short_header_lines_over_the_limit_are_431(self):
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
        self.assertEqual(_status(self.transport), 431)

    def test_a_head_arriving_too_slowly_is_408(self):
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            self.channel.dataReceived(b"X: y\r\n")  # progress does not extend the deadline
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(1)
        self.assertEqual(_status(self.transport), 408)
        self.assertIn("within 10 s", _error_message(self.transport))

    def test_each_request_head_has_its_own_deadline(self):
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.clock.advance(8)
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(8)  # 16 s since the first head began, 8 s into this one
        self.assertNotIn(b" 408 ", self.transport.value())
        self.channel.dataReceived(b"\r\n")
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200"), 2)

    def test_a_pipelined_partial_head_gets_a_deadline(self):
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nX: y\r\n")
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200"), 1)
        self.clock.advance(LIMITS.read_header_timeout)
        self.assertIn(b" 408 ", self.transport.value())

    def test_an_idle_connection_is_closed_after_the_idle_timeout(self):
        self.clock.advance(LIMITS.idle_timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_the_deadline_ends_with_the_connection(self):
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Inner(Protocol):
    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class AfterHandshakeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.inner = Inner()
        self.built = []
        self.protocol = AfterHandshake(self.clock, 5.0, lambda t: self.built.append(t) or self.inner)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_no_handshake_within_the_timeout_aborts(self):
        self.clock.advance(4.9)
        self.assertFalse(_aborted(self.transport))
        self.clock.advance(0.1)
        self.assertTrue(_aborted(self.transport))
        self.assertEqual(self.built, [])

    def test_after_the_handshake_the_built_protocol_gets_the_transport_and_data(self):
        self.clock.advance(4)
        self.protocol.handshakeCompleted()
        self.clock.advance(100)
        self.assertFalse(_aborted(self.transport))
        self.assertEqual(self.built, [self.transport])
        self.assertIs(self.inner.transport, self.transport)
        self.protocol.dataReceived(b"abc")
        self.assertEqual(self.inner.received, b"abc")

    def test_nothing_to_serve_hangs_up(self):
        protocol = AfterHandshake(self.clock, 5.0, lambda t: None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        self.assertTrue(_aborted(transport))


class PerSourceLimitTests(SynchronousTestCase):
    def setUp(self):
        tls = server_tls_options(PROXY_CERT, PROXY_KEY, require_client_certificate=False)
        self.factory = LimitedTLSFactory(Clock(), LIMITS, tls, lambda t: Inner())

    def connect(self, host: str):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        if protocol is not None:
            protocol.makeConnection(StringTransport())
        return protocol

    def test_a_source_past_max_connections_is_refused_others_are_not(self):
        first, second = self.connect("10.0.0.1"), self.connect("10.0.0.1")
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(self.connect("10.0.0.1"))
        self.assertIsNone(self.connect("10.0.0.1"))
        self.assertIsNotNone(self.connect("10.0.0.2"))
        self.assertEqual(self.factory.open_connections("10.0.0.1"), 2)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.open_connections("10.0.0.1"), 1)
        self.assertIsNotNone(self.connect("10.0.0.1"))
        self.assertIsNone(self.connect("10.0.0.1"))

    def test_counts_go_away_with_the_connections(self):
        protocols = [self.connect("10.0.0.1"), self.connect("10.0.0.1")]
        for protocol in protocols:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.open_connections("10.0.0.1"), 0)
        self.assertEqual(self.factory._open, {})


class RealSocketTests(TestCase):
    """The same limits on a real port with real TLS."""

    async def listen(self, limits: ConnectionLimits) -> int:
        tls = server_tls_options(PROXY_CERT, PROXY_KEY, require_client_certificate=False)

        class Greet(Protocol):
            def connectionMade(self):
                self.transport.write(b"hi")
                self.transport.loseConnection()

        factory = LimitedTLSFactory(reactor, limits, tls, lambda t: Greet())
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def test_a_connection_that_never_starts_tls_is_closed(self):
        port = await self.listen(ConnectionLimits(handshake_timeout=0.2))
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.setblocking(False)
        closed: Deferred = Deferred()

        def poll():
            try:
                data = sock.recv(1)
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True
            return data == b""

        for _ in range(100):
            if poll():
                closed.callback(True)
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(closed.called, "the proxy kept a silent TCP connection open")

    async def test_a_completed_handshake_is_served(self):
        port = await self.listen(ConnectionLimits(handshake_timeout=0.2))
        client = await connect_tls(port, web_client())
        self.assertEqual(client.received, b"hi")

    async def test_a_source_over_its_limit_is_closed_at_accept(self):
        port = await self.listen(ConnectionLimits(max_connections=1, handshake_timeout=30.0))
        held = socket.create_connection(("127.0.0.1", port))  # never starts TLS: holds its place
        self.addCleanup(held.close)
        await deferLater(reactor, 0.2, lambda: None)
        client = await connect_tls(port, web_client())
        self.assertFalse(client.handshake)
        self.assertEqual(client.received, b"")
        held.close()
        await deferLater(reactor, 0.2, lambda: None)
        client = await connect_tls(port, web_client())
        self.assertEqual(client.received, b"hi")
