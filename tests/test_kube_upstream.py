"""The agent's pool of keep-alive API server connections, on in-memory transports and a fake clock."""
from __future__ import annotations

import h11
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.upstream import UpstreamPool
from tests.support.kube import FakeEndpoint


class Exchange:
    def __init__(self):
        self.received = b""
        self.lost = []

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.append(reason)


def complete_exchange(connection):
    """One GET and its whole response through the connection's client state."""
    connection.lend(Exchange())
    connection.http.send_request(b"GET", b"/", [(b"host", b"api")])
    connection.http.send_end()
    connection.http.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    while not isinstance(connection.http.next_event(), h11.EndOfMessage):
        pass


def lose(connection):
    connection.transport.disconnecting = True
    connection.connectionLost(Failure(ConnectionDone()))


class UpstreamPoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.pool = UpstreamPool(self.clock, lambda: self.endpoint, max_idle=2, idle_timeout=30)

    def acquire(self, **kwargs):
        return self.successResultOf(Deferred.fromCoroutine(self.pool.acquire(**kwargs)))

    def test_completed_exchange_is_reused_most_recent_first(self):
        first, second = self.acquire(), self.acquire()
        for connection in (first, second):
            complete_exchange(connection)
            connection.give_back()
        self.assertEqual(self.pool.idle, 2)
        self.assertIs(self.acquire(), second)
        self.assertIs(self.acquire(), first)
        self.assertEqual(len(self.endpoint.transports), 2)
        self.assertEqual(first.http.our_state, h11.IDLE)  # ready for the next request

    def test_unfinished_exchange_closes_the_connection(self):
        connection = self.acquire()
        connection.lend(Exchange())
        connection.http.send_request(b"GET", b"/", [(b"host", b"api")])
        connection.give_back()
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(self.pool.idle, 0)

    def test_exchange_read_as_is_starts_over_with_a_new_h11_state(self):
        connection = self.acquire()
        connection.lend(Exchange())
        connection.http.send_request(b"GET", b"/", [(b"host", b"api")])
        connection.http.send_end()
        connection.http.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        connection.http.next_event()  # the head; the body is read without the client state
        connection.next_cycle_read_as_is()
        connection.give_back()
        self.assertIs(self.acquire(), connection)
        self.assertEqual((connection.http.our_state, connection.http.their_state), (h11.IDLE, h11.IDLE))
        self.assertEqual(connection.http.trailing_data, (b"", False))

    def test_unused_connection_is_kept(self):
        connection = self.acquire()
        connection.give_back()
        self.assertIs(self.acquire(), connection)

    def test_fresh_never_takes_an_idle_connection(self):
        connection = self.acquire()
        connection.give_back()
        self.assertIsNot(self.acquire(fresh=True), connection)
        self.assertEqual(self.pool.idle, 1)

    def test_surplus_idle_connections_are_closed(self):
        connections = [self.acquire() for _ in range(3)]
        for connection in connections:
            connection.give_back()
        self.assertEqual(self.pool.idle, 2)
        self.assertTrue(connections[2].transport.disconnecting)

    def test_idle_timeout_closes_and_reuse_cancels_it(self):
        kept, expired = self.acquire(), self.acquire()
        kept.give_back()
        expired.give_back()
        self.clock.advance(10)
        self.assertIs(self.acquire(), expired)
        complete_exchange(expired)
        self.clock.advance(25)
        self.assertTrue(kept.transport.disconnecting)
        self.assertFalse(expired.transport.disconnecting)

    def test_idle_connection_lost_is_forgotten(self):
        connection = self.acquire()
        connection.give_back()
        lose(connection)
        self.assertEqual(self.pool.idle, 0)
        self.assertIsNot(self.acquire(), connection)

    def test_unsolicited_bytes_on_an_idle_connection_abort_it(self):
        connection = self.acquire()
        connection.give_back()
        connection.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(connection.transport.disconnecting)

    def test_lent_connection_reports_bytes_and_loss_to_its_exchange(self):
        connection = self.acquire()
        exchange = Exchange()
        connection.lend(exchange)
        connection.dataReceived(b"HTTP/1.1")
        lose(connection)
        self.assertEqual(exchange.received, b"HTTP/1.1")
        self.assertEqual(len(exchange.lost), 1)
        self.assertEqual(self.pool.idle, 0)

    def test_close_closes_idle_connections_and_refuses_returns(self):
        idle, lent = self.acquire(), self.acquire()
        idle.give_back()
        closed = self.pool.close()
        self.assertTrue(idle.transport.disconnecting)
        self.assertNoResult(closed)
        lose(idle)
        self.successResultOf(closed)
        lent.give_back()
        self.assertTrue(lent.transport.disconnecting)
        self.assertEqual(self.pool.idle, 0)
