"""FailoverEndpoint over real TCP ports: a closed address is skipped, the
one that answered is tried first from then on, none answering is one error."""
from __future__ import annotations

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from teleport_py.failover import FailoverEndpoint
from tests.support.procs import free_port


class _Counting(Factory):
    protocol = Protocol

    def __init__(self):
        self.accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return super().buildProtocol(addr)


class FailoverEndpointTests(TestCase):
    async def listening(self):
        factory = _Counting()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    async def connect(self, endpoint):
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        protocol.transport.loseConnection()
        return protocol

    async def test_a_closed_address_is_skipped_and_the_answering_one_preferred(self):
        factory, port = await self.listening()
        closed = free_port()
        endpoint = FailoverEndpoint(reactor, [("127.0.0.1", closed), ("127.0.0.1", port)])
        await self.connect(endpoint)
        await self.connect(endpoint)
        self.assertEqual(endpoint._preferred, 1)
        self.assertEqual(factory.accepted, 2)

    async def test_none_answering_is_one_connect_error_naming_each(self):
        first, second = free_port(), free_port()
        endpoint = FailoverEndpoint(reactor, [("127.0.0.1", first), ("127.0.0.1", second)])
        with self.assertRaises(error.ConnectError) as caught:
            await endpoint.connect(Factory.forProtocol(Protocol))
        self.assertIn(f"127.0.0.1:{first}", str(caught.exception))
        self.assertIn(f"127.0.0.1:{second}", str(caught.exception))

    def test_each_address_once_while_another_connection_changes_the_preference(self):
        """Two connections start on the dead first address; the first fails
        over to the second, which becomes preferred; the other, refused
        later, still tries the second address, not the first again (it did:
        an agent's call to Auth failed with 'no address answered: A; A' in
        tests.test_e2e_ha while B was up)."""
        tried = []

        class Pending:
            def __init__(self, name):
                self.name = name

            def connect(self, factory):
                d = defer.Deferred()
                tried.append((self.name, d))
                return d

        endpoint = FailoverEndpoint(reactor, [("127.0.0.1", 1), ("127.0.0.1", 2)])
        endpoint._endpoints = [("a", Pending("a")), ("b", Pending("b"))]
        first = endpoint.connect(Factory.forProtocol(Protocol))
        second = endpoint.connect(Factory.forProtocol(Protocol))
        tried[0][1].errback(error.ConnectionRefusedError())
        self.assertEqual(tried[2][0], "b")
        tried[2][1].callback("connected to b")
        self.assertEqual(self.successResultOf(first), "connected to b")
        self.assertEqual(endpoint._preferred, 1)
        tried[1][1].errback(error.ConnectionRefusedError())
        self.assertEqual([name for name, _ in tried], ["a", "a", "b", "b"])
        tried[3][1].callback("connected to b again")
        self.assertEqual(self.successResultOf(second), "connected to b again")

    def test_needs_an_address(self):
        self.assertRaises(ValueError, FailoverEndpoint, reactor, [])
