"""Keep-alive HTTP/1.1 connections to one API server, shared by all requests.

A TLS handshake with the API server costs more than the small request it
carries, and the caller's identity travels in per-request ``Impersonate-*``
headers, so one connection can serve any user's requests one after another.
A connection is lent to one exchange at a time and comes back only when h11
says both the request and the response ended cleanly; anything else (a
broken-off response, a watch kubectl left, an upgrade to exec or
port-forward) closes it or keeps it out of the pool for good.
"""
from __future__ import annotations

from typing import Callable, Protocol as Interface

import h11
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py.tcp import no_delay

log = Logger()


class Exchange(Interface):
    """What a connection reports to the request it is lent to."""

    def dataReceived(self, data: bytes) -> None: ...

    def connectionLost(self, reason) -> None: ...


class PooledConnection(Protocol):
    """One TLS connection to the API server and its HTTP/1.1 client state."""

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.http = h11.Connection(h11.CLIENT)
        self.exchange: Exchange | None = None
        #: How many exchanges this connection has been lent to.
        self.uses = 0
        self.lost = False
        self._expiry = None
        self._lost_waiters: list[Deferred] = []

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def lend(self, exchange: Exchange) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.exchange = exchange
        self.uses += 1

    def give_back(self) -> None:
        """The exchange is over: back to the pool if the connection can carry
        another request, otherwise closed. The exchange has unregistered the
        producers it set up; a transport it paused is resumed here so that an
        idle connection still notices the server closing it."""
        self.exchange = None
        if self.lost:
            return
        self.transport.resumeProducing()
        states = (self.http.our_state, self.http.their_state)
        if states == (h11.DONE, h11.DONE):
            self.http.start_next_cycle()
            self.pool.take_back(self)
        elif states == (h11.IDLE, h11.IDLE):  # never used (the caller went away first), or read as is
            self.pool.take_back(self)
        else:
            self.transport.loseConnection()

    def next_cycle_read_as_is(self) -> None:
        """The exchange's request ended and its response was read to its
        exact end without h11 (relayed as framed, kube/bodyframing.py):
        a new h11 state carries the next request."""
        self.http = h11.Connection(h11.CLIENT)

    def when_lost(self) -> Deferred:
        """Fires once the connection is closed."""
        waiter = Deferred()
        if self.lost:
            waiter.callback(None)
        else:
            self._lost_waiters.append(waiter)
        return waiter

    def dataReceived(self, data: bytes) -> None:
        if self.exchange is None:
            # An idle HTTP/1.1 connection has nothing to say before a request.
            log.warn("unsolicited bytes from the API server on an idle connection")
            self.transport.abortConnection()
            return
        self.exchange.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        if self.pool is not None:
            self.pool.forget(self)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.connectionLost(reason)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)


class UpstreamPool:
    """Idle connections to one API server, most recently used first.

    ``idle_timeout`` is well below the API server's own idle timeout (90 s in
    Go's net/http defaults) so that we, not the server, close idle
    connections; the rare race where the server closes one just as a request
    goes out is covered by the exchange retrying idempotent requests once on
    a new connection.
    """

    def __init__(self, reactor, endpoint: Callable[[], IStreamClientEndpoint], *,
                 max_idle: int = 32, idle_timeout: float = 30.0) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle_connections: list[PooledConnection] = []
        self._closed = False

    async def acquire(self, *, fresh: bool = False) -> PooledConnection:
        """An idle connection (unless ``fresh``), or a new one."""
        if not fresh and self._idle_connections:
            return self._idle_connections.pop()
        connection = PooledConnection(self)
        await connectProtocol(self._endpoint(), connection)
        return connection

    @property
    def idle(self) -> int:
        return len(self._idle_connections)

    def close(self) -> Deferred:
        """Close the idle connections; fires when they are gone. Connections
        lent out close when their exchange ends."""
        self._closed = True
        connections, self._idle_connections = self._idle_connections, []
        waits = [connection.when_lost() for connection in connections]
        for connection in connections:
            connection.transport.loseConnection()
        return gatherResults(waits)

    def take_back(self, connection: PooledConnection) -> None:
        if self._closed or len(self._idle_connections) >= self._max_idle:
            connection.transport.loseConnection()
            return
        connection._expiry = self._reactor.callLater(self._idle_timeout, connection.transport.loseConnection)
        self._idle_connections.append(connection)

    def forget(self, connection: PooledConnection) -> None:
        if connection in self._idle_connections:
            self._idle_connections.remove(connection)

