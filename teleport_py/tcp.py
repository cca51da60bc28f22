"""TCP settings shared by every service."""
from __future__ import annotations

from twisted.internet.interfaces import ITCPTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol


def no_delay(transport) -> None:
    """Send small writes at once (TCP_NODELAY), as Go does on every TCP
    connection: a request head or a tunnel frame held back by Nagle's
    algorithm waits for the peer's delayed ACK, up to 40 ms on Linux, at
    every hop of the kubectl path. Other transports (in-memory ones in
    tests, tunnel streams) are left alone."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)
