"""Tests for Splice, the two-way relay with back-pressure."""

import hashlib

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py.pki import client_tls_options, server_tls_options
from teleport_py.tunnel import Splice
from tests.support.pki import API_CERT, API_KEY, KUBE_CA


class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-close and abort like TCP would."""

    write_closed = aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True


def connected():
    relay = Splice()
    a, b = HalfCloseTransport(), HalfCloseTransport()
    relay.a.makeConnection(a)
    relay.b.makeConnection(b)
    return relay, a, b


class SpliceTests(SynchronousTestCase):
    def test_bytes_cross_both_ways(self):
        relay, a, b = connected()
        relay.a.dataReceived(b"GET / HTTP/1.1\r\n")
        relay.b.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(b.value(), b"GET / HTTP/1.1\r\n")
        self.assertEqual(a.value(), b"HTTP/1.1 200 OK\r\n")

    def test_each_transport_throttles_the_other(self):
        _, a, b = connected()
        self.assertIs(a.producer, b)
        self.assertIs(b.producer, a)
        self.assertTrue(a.streaming and b.streaming)

    def test_data_before_partner_connects_is_held_and_source_paused(self):
        relay = Splice()
        a, b = HalfCloseTransport(), HalfCloseTransport()
        relay.a.makeConnection(a)
        self.assertEqual(a.producerState, "paused")
        relay.a.dataReceived(b"early")
        relay.a.readConnectionLost()
        relay.b.makeConnection(b)
        self.assertEqual(b.value(), b"early")
        self.assertTrue(b.write_closed)
        self.assertEqual(a.producerState, "producing")

    def test_half_close_propagates(self):
        relay, a, b = connected()
        relay.a.readConnectionLost()
        self.assertTrue(b.write_closed)
        self.assertFalse(a.write_closed)

    def test_half_close_falls_back_to_close(self):
        relay = Splice()
        a, b = HalfCloseTransport(), StringTransport()
        relay.a.makeConnection(a)
        relay.b.makeConnection(b)
        relay.a.readConnectionLost()
        self.assertTrue(b.disconnecting)

    def test_clean_close_propagates(self):
        relay, a, b = connected()
        relay.a.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(b.disconnecting)
        self.assertFalse(b.aborted)
        self.assertIsNone(b.producer)

    def test_abort_propagates(self):
        relay, a, b = connected()
        relay.b.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(a.aborted)

    def test_partner_arriving_after_close_gets_data_then_close(self):
        relay = Splice()
        a, b = HalfCloseTransport(), HalfCloseTransport()
        relay.a.makeConnection(a)
        relay.a.dataReceived(b"last words")
        relay.a.connectionLost(Failure(ConnectionDone()))
        relay.b.makeConnection(b)
        self.assertEqual(b.value(), b"last words")
        self.assertTrue(b.disconnecting)
        self.assertIsNone(b.producer)


class Collector(Protocol):
    def __init__(self):
        self.received = hashlib.sha256()
        self.size = 0
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received.update(data)
        self.size += len(data)

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class TLSHalfCloseTests(TestCase):
    """The proxy splices kubectl's TLS connection to a tunnel stream: when the
    stream ends right after its last bytes, they must all reach kubectl."""

    async def test_everything_written_before_the_fin_reaches_a_tls_peer(self):
        relay = Splice()
        factory = TLSMemoryBIOFactory(server_tls_options(API_CERT, API_KEY, require_client_certificate=False),
                                      False, Factory.forProtocol(lambda: relay.a))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = Collector()
        await connectProtocol(wrapClientTLS(client_tls_options("127.0.0.1", trusted_cas=[KUBE_CA.certificate]),
                                            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)), client)
        stream = HalfCloseTransport()
        relay.b.makeConnection(stream)
        body = bytes(range(256)) * 4096 * 3  # 3 MiB, more than any buffer on the way
        for offset in range(0, len(body), 50_000):
            relay.b.dataReceived(body[offset:offset + 50_000])
        relay.b.readConnectionLost()
        await client.lost
        self.assertEqual(client.size, len(body))
        self.assertEqual(client.received.hexdigest(), hashlib.sha256(body).hexdigest())
        self.assertTrue(client.reason.check(ConnectionDone), client.reason)
