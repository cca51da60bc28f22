"""FewerCallsTLS: the same TLS, checks and bytes as Twisted's, in fewer calls.

Real TLS on 127.0.0.1 with the real reactor: every handshake test of
tests.test_tls again with FewerCallsTLS on both ends, bulk transfers both
ways (against itself and against Twisted's own TLS transport), a clean close
right after a large write, and the sizes it works with.
"""
from __future__ import annotations

import itertools
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import BufferingTLSTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py.pki import client_tls_options, server_tls_options
from teleport_py.tls_transport import (
    READ_SIZE,
    SSL_MODE_ENABLE_PARTIAL_WRITE,
    FewerCallsTLS,
    FewerCallsTLSFactory,
    TLSClientEndpoint,
    sealed_size,
    twisted_internals_missing,
)
from tests.support.pki import HOST_CA, USER_CA
from tests.test_tls import (
    CLIENT_KEY,
    SERVER_CERT,
    SERVER_KEY,
    Collector,
    GreeterFactory,
    Outcome,
    TLSHandshakeTests,
    user_cert,
)

PAYLOAD = os.urandom(3 * 1024 * 1024 + 12345)


class FewerCallsHandshakeTests(TLSHandshakeTests):
    """Certificate, host name, ALPN and SNI checks hold with FewerCallsTLS on both ends."""

    async def connect(self, server_options, client_options, host="127.0.0.1") -> Outcome:
        factory = GreeterFactory()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            FewerCallsTLSFactory(server_options, False, factory))
        self.addCleanup(port.stopListening)
        endpoint = TLSClientEndpoint(client_options, TCP4ClientEndpoint(reactor, host, port.getHost().port))
        client = await endpoint.connect(Factory.forProtocol(Collector))
        await client.lost
        await DeferredList([connection.lost for connection in factory.connections])
        return Outcome(client.received, factory.handshakes)


class Sink(Protocol):
    """Counts what arrives (and the size of each delivery); closes after ``expect`` bytes."""

    def __init__(self, expect: int):
        self.expect = expect
        self.chunks: list[bytes] = []
        self.size = 0
        self.reason = None
        self.lost = Deferred()

    def dataReceived(self, data):
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.expect:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class Sender(Protocol):
    """Writes PAYLOAD in pieces of ``piece`` bytes as a streaming producer
    (pausing when TLS says so), then closes."""

    def __init__(self, piece: int | tuple[int, ...]):
        self.pieces = itertools.cycle(piece if isinstance(piece, tuple) else (piece,))
        self.offset = 0
        self.paused = False
        self.pauses = 0
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.offset < len(PAYLOAD):
            piece = next(self.pieces)
            self.transport.write(PAYLOAD[self.offset : self.offset + piece])
            self.offset += piece
        if self.offset >= len(PAYLOAD) and self.transport is not None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            self.transport = None

    def stopProducing(self):
        self.offset = len(PAYLOAD)

    def connectionLost(self, reason):
        self.lost.callback(None)


class BulkTests(TestCase):
    def server_options(self):
        return server_tls_options(SERVER_CERT, SERVER_KEY, trusted_cas=[USER_CA.certificate],
                                  require_client_certificate=True)

    def client_options(self):
        return client_tls_options("127.0.0.1", trusted_cas=[HOST_CA.certificate], certificate=user_cert(),
                                  private_key=CLIENT_KEY)

    async def transfer(self, *, fewer_calls_server: bool, fewer_calls_client: bool, piece: int,
                       server_sends: bool) -> tuple[Sink, Sender]:
        sink, sender = Sink(len(PAYLOAD)), Sender(piece)
        server_side, client_side = (sender, sink) if server_sends else (sink, sender)
        server_factory = (FewerCallsTLSFactory if fewer_calls_server else _StockTLSFactory)(
            self.server_options(), False, Factory.forProtocol(lambda: server_side))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server_factory)
        self.addCleanup(port.stopListening)
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        endpoint = (TLSClientEndpoint if fewer_calls_client else wrapClientTLS)(self.client_options(), tcp)
        await endpoint.connect(Factory.forProtocol(lambda: client_side))
        await DeferredList([sink.lost, sender.lost])
        return sink, sender

    async def test_bulk_both_ways_between_fewer_calls_ends(self):
        for server_sends in (False, True):
            sink, sender = await self.transfer(fewer_calls_server=True, fewer_calls_client=True, piece=1024 * 1024,
                                               server_sends=server_sends)
            self.assertEqual(b"".join(sink.chunks), PAYLOAD)
            # Records of one network read arrive together (Twisted's own: 16 KiB each, never more).
            self.assertGreater(max(len(c) for c in sink.chunks), 16 * 1024)
            self.assertLess(max(len(c) for c in sink.chunks), 2 * READ_SIZE)

    async def test_clean_close_after_a_large_write(self):
        """close_notify follows every byte of the write before it."""
        sink, sender = await self.transfer(fewer_calls_server=True, fewer_calls_client=True, piece=len(PAYLOAD),
                                           server_sends=True)
        self.assertEqual(b"".join(sink.chunks), PAYLOAD)
        self.assertTrue(sink.reason.check(ConnectionDone))

    async def test_small_writes(self):
        sink, _ = await self.transfer(fewer_calls_server=True, fewer_calls_client=True, piece=1000,
                                      server_sends=False)
        self.assertEqual(b"".join(sink.chunks), PAYLOAD)

    async def test_small_and_large_writes_keep_their_order(self):
        """Small writes wait for the end of the reactor turn, large ones go
        at once: those waiting go first."""
        sink, _ = await self.transfer(fewer_calls_server=True, fewer_calls_client=True,
                                      piece=(1000, 70000, 10, 300000, 16383, 16384), server_sends=True)
        self.assertEqual(b"".join(sink.chunks), PAYLOAD)

    async def test_interoperates_with_twisted_tls(self):
        for server, client in ((True, False), (False, True)):
            for server_sends in (False, True):
                sink, _ = await self.transfer(fewer_calls_server=server, fewer_calls_client=client,
                                              piece=256 * 1024, server_sends=server_sends)
                self.assertEqual(b"".join(sink.chunks), PAYLOAD)

    async def test_producer_is_paused(self):
        """Flow control still bounds the sender: the TCP transport beneath
        pauses it once more than its buffer size waits to be sent."""
        _, sender = await self.transfer(fewer_calls_server=True, fewer_calls_client=True, piece=64 * 1024,
                                        server_sends=True)
        self.assertGreater(sender.pauses, 0)


class _StockTLSFactory(FewerCallsTLSFactory):
    """Twisted's own TLS transport (``BufferingTLSTransport``), for interop."""

    protocol = BufferingTLSTransport


class SizesTests(SynchronousTestCase):
    def test_the_installed_twisted_has_what_it_relies_on(self):
        """FewerCallsTLS overrides Twisted internals; with a Twisted that
        renamed one, the factory falls back to Twisted's own transport, and
        this says so rather than the suite passing on the slow path."""
        self.assertEqual(twisted_internals_missing(), [])
        self.assertIs(FewerCallsTLSFactory.protocol, FewerCallsTLS)

    def test_contexts_seal_whole_writes(self):
        """pki's contexts clear partial writes, so one SSL_write seals every record of a piece."""
        contexts = [
            server_tls_options(SERVER_CERT, SERVER_KEY, trusted_cas=[], require_client_certificate=False).getContext(),
            client_tls_options("localhost", trusted_cas=[HOST_CA.certificate]).context,
        ]
        for context in contexts:
            self.assertFalse(context.set_mode(0) & SSL_MODE_ENABLE_PARTIAL_WRITE)

    def test_sealed_size_covers_record_overhead(self):
        for plaintext in (1, 2**14, 2**18, 10**6):
            records = -(-plaintext // 2**14)
            self.assertGreaterEqual(sealed_size(plaintext), plaintext + 29 * records)

    def test_tcp_reads_are_larger(self):
        class TCP:
            bufferSize = 65536
            socket = object()

            def getPeer(self):
                return None

        factory = FewerCallsTLSFactory(server_tls_options(
            SERVER_CERT, SERVER_KEY, trusted_cas=[], require_client_certificate=False), False, Factory.forProtocol(Protocol))
        tcp = TCP()
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, FewerCallsTLS)
        protocol.transport = tcp
        tcp.write = lambda data: None
        protocol.makeConnection(tcp)
        self.assertEqual(tcp.bufferSize, READ_SIZE)
