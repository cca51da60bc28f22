"""TCP_NODELAY on plain and TLS-wrapped connections, with real sockets on 127.0.0.1."""
from __future__ import annotations

import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from teleport_py.pki import server_tls_options
from teleport_py.tcp import no_delay
from tests.support.pki import API_CERT, API_KEY


class Probe(Protocol):
    """Calls no_delay and reports the socket option it finds afterwards."""

    def __init__(self, made: defer.Deferred):
        self.made = made

    def connectionMade(self):
        transport = self.transport
        tcp = getattr(transport, "transport", transport)  # under TLS: the TCP transport
        before = tcp.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        no_delay(transport)
        after = tcp.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.made.callback((before, after))
        transport.loseConnection()


class NoDelayTests(TestCase):
    async def probe(self, wrap_tls: bool):
        made = defer.Deferred()
        factory = Factory.forProtocol(lambda: Probe(made))
        if wrap_tls:
            factory = TLSMemoryBIOFactory(server_tls_options(API_CERT, API_KEY, require_client_certificate=False),
                                          False, factory)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        result = await made
        client.transport.loseConnection()
        return result

    async def test_plain_tcp(self):
        self.assertEqual(await self.probe(wrap_tls=False), (0, 1))

    async def test_under_tls(self):
        self.assertEqual(await self.probe(wrap_tls=True), (0, 1))

    def test_other_transports_are_left_alone(self):
        no_delay(StringTransport())
