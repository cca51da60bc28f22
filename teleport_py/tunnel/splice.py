"""
A two-way relay between two connections with back-pressure: the proxy uses
it to join a kubectl connection to a tunnel stream, the agent to join an
`auth` stream to its Auth connection.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from teleport_py.tcp import no_delay


@implementer(IHalfCloseableProtocol)
class SpliceEnd(Protocol):
    """
    One side of a Splice. Until the other side is connected it holds what
    arrives and pauses its own transport, so nothing is lost or unbounded.
    """

    def __init__(self) -> None:
        self.peer: SpliceEnd | None = None
        self._pending: list[bytes] = []
        self._read_closed = False
        self._lost: Failure | None = None

    @property
    def _relaying(self) -> bool:
        return self.peer.transport is not None and self.peer._lost is None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        peer = self.peer
        if peer.transport is None:
            self.transport.pauseProducing()
            return
        pending, peer._pending = peer._pending, []
        self.transport.writeSequence(pending)
        if peer._read_closed:
            _half_close(self.transport)
        if peer._lost is not None:
            self._close_like(peer._lost)
            return
        # Each transport throttles the other, as in twisted's portforward.
        self.transport.registerProducer(peer.transport, True)
        peer.transport.registerProducer(self.transport, True)
        peer.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._relaying:
            self.peer.transport.write(data)
        else:
            self._pending.append(data)

    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self._relaying:
            _half_close(self.peer.transport)

    def writeConnectionLost(self) -> None:
        """Nothing to do: the other side's FIN already went out."""

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._lost = reason
        if self._relaying:
            self.peer.transport.unregisterProducer()
            self.peer._close_like(reason)

    def _close_like(self, reason: Failure) -> None:
        """A clean close crosses over as a clean close, anything else as an abort."""
        if reason.check(ConnectionDone):
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()


def _half_close(transport) -> None:
    """FIN where the transport has a half-close of its own (TCP, tunnel
    streams), a full close otherwise. TLS has none: Twisted's ProtocolWrapper
    would hand ``loseWriteConnection`` to the TCP connection beneath the TLS
    layer, ending the TCP stream under TLS bytes still buffered (the tail of
    a response lost). Its full close sends what is buffered and close_notify
    first, once no producer is registered; this side has nothing left to
    produce."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport.unregisterProducer()
        transport.loseConnection()
        return
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


class Splice:
    """
    Relay bytes both ways between two connections. Connect protocol `a` to
    one connection and `b` to the other, in either order; data, half-close
    (FIN), clean close and abort each cross over, and a slow side pauses the
    fast side's transport through registerProducer(streaming=True).
    """

    def __init__(self) -> None:
        self.a = SpliceEnd()
        self.b = SpliceEnd()
        self.a.peer, self.b.peer = self.b, self.a
