"""Twisted's memory-BIO TLS transport, with fewer Python calls per byte.

``twisted.protocols.tls`` encrypts a write 16 KiB at a time (one
``SSL_write``, one ``bio_read`` and one TCP write per TLS record) and hands
the application every decrypted record on its own. On the kubectl path
every byte crosses four such TLS ends (the agent decrypts the API server
and encrypts the tunnel, the proxy decrypts the tunnel and encrypts to
kubectl), and per record those calls cost more than the cipher itself
(docs/benchmarks.md, session 6). Here:

- a write goes to OpenSSL in pieces of up to ``WRITE_PIECE`` (the contexts
  of ``pki.tls`` clear ``SSL_MODE_ENABLE_PARTIAL_WRITE``, so one
  ``SSL_write`` seals every record of a piece), and the records leave in one
  TCP write;
- every record decrypted from one network read reaches the application as
  one ``dataReceived`` (records are still decrypted one ``SSL_read`` each);
- the TCP connection beneath reads up to ``READ_SIZE`` at a time.

Nothing about trust changes: the handshake, certificate checks, ALPN and
close_notify are Twisted's and OpenSSL's as before. Every buffer stays
bounded: a write is sealed as it comes (as before), a delivery is at most
one network read's records, and the TCP transport pauses its producer past
``READ_SIZE`` of unsent bytes (Twisted's rule, with this size).
"""
from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: OpenSSL's ``SSL_MODE_ENABLE_PARTIAL_WRITE`` (ssl.h), which pyOpenSSL sets
#: on every context and does not export: with it, ``SSL_write`` returns after
#: one record.
SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1

#: Plaintext handed to one ``SSL_write``: 16 records.
WRITE_PIECE = 256 * 1024
#: Bytes the TCP transport reads at once (Twisted: 64 KiB), and its unsent
#: bytes before it pauses a producer.
READ_SIZE = 256 * 1024
#: Writes this big skip the small-write aggregator.
AGGREGATE_BELOW = 16 * 1024
#: One TLS record's plaintext at most.
_RECORD = 2**14


def sealed_size(plaintext: int) -> int:
    """What ``plaintext`` bytes can become on the wire, at most (TLS 1.2
    AES-GCM adds 29 bytes a record, TLS 1.3 22), plus room for a
    handshake message such as a KeyUpdate."""
    return plaintext + (plaintext >> 9) + 1024


class FewerCallsTLS(BufferingTLSTransport):
    """``BufferingTLSTransport`` with the write, send and receive paths
    above. Small writes still wait for the end of the reactor turn, to leave
    in one record; a write of ``AGGREGATE_BELOW`` or more is sealed at once
    (after what waits), rather than copied into the aggregator first."""

    def __init__(self, factory, wrappedProtocol, _connectWrapped=True):
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        # BufferingTLSTransport binds ``write`` to its aggregator the same way
        # (and to a null one at connectionLost, which still applies).
        self.write = self._write_or_aggregate

    def _write_or_aggregate(self, data) -> None:
        if len(data) < AGGREGATE_BELOW:
            self._aggregator.write(data)
        else:
            self._aggregator.flush()
            TLSMemoryBIOProtocol.write(self, data)

    def writeSequence(self, sequence) -> None:
        self.write(b"".join(sequence))

    def makeConnection(self, transport):
        if hasattr(transport, "bufferSize") and hasattr(transport, "socket"):
            transport.bufferSize = READ_SIZE
        super().makeConnection(transport)

    def _write(self, data):
        if self._lostTLSConnection:
            return
        sent = 0
        with memoryview(data) as view:
            while sent < len(view):
                piece = view[sent : sent + WRITE_PIECE]
                try:
                    count = self._tlsConnection.send(piece)
                except WantReadError:
                    self._bufferedWrite(bytes(view[sent:]))
                    break
                except Error:
                    self._tlsShutdownFinished(Failure())
                    break
                sent += count
                self._flushSendBIO(sealed_size(count))

    def _flushSendBIO(self, expected: int = 2**15):
        """Everything OpenSSL sealed, in as few TCP writes as the BIO allows."""
        while True:
            try:
                data = self._tlsConnection.bio_read(expected)
            except WantReadError:
                return
            self.transport.write(data)
            if len(data) < expected:
                return

    def _flushReceiveBIO(self):
        """Twisted's loop (decrypt until OpenSSL wants more), delivering the
        records of one read together; what was decrypted before a close or
        an error is delivered before it is handled."""
        records = []
        while not self._lostTLSConnection:
            try:
                records.append(self._tlsConnection.recv(2 * _RECORD))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(records)
                records = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._deliver(records)
                records = []
                self._tlsShutdownFinished(Failure())
        self._deliver(records)
        self._flushSendBIO()

    def _deliver(self, records: list) -> None:
        if records and not self._aborted:
            ProtocolWrapper.dataReceived(self, records[0] if len(records) == 1 else b"".join(records))


#: The parts of Twisted's ``TLSMemoryBIOProtocol`` that ``FewerCallsTLS``
#: overrides or calls. They are not Twisted's public API (setup.cfg allows
#: Twisted 24.10 to 26): should a release rename one, Twisted's own
#: ``BufferingTLSTransport`` is used instead, correct and slower.
#: tests/test_tls_transport.py fails when that happens, so it is noticed.
TWISTED_INTERNALS = (
    "_write", "_flushSendBIO", "_flushReceiveBIO", "_bufferedWrite", "_tlsShutdownFinished", "_shutdownTLS",
    "_lostTLSConnection", "_aborted",
)


def twisted_internals_missing() -> list[str]:
    return [name for name in TWISTED_INTERNALS if not hasattr(BufferingTLSTransport, name)]


class FewerCallsTLSFactory(TLSMemoryBIOFactory):
    protocol = BufferingTLSTransport if twisted_internals_missing() else FewerCallsTLS


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """``twisted.internet.endpoints.wrapClientTLS`` with ``FewerCallsTLS``:
    TLS from ``creator`` over what ``endpoint`` connects."""

    def __init__(self, creator, endpoint):
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, factory):
        wrapping = FewerCallsTLSFactory(self._creator, True, factory)
        return self._endpoint.connect(wrapping).addCallback(lambda protocol: protocol.wrappedProtocol)
