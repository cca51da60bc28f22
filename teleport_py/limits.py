"""The limits every listener applies, written once (``teleport.connection_limits``).

A listening port serves ``LimitedTLSFactory``: it refuses a source address
past ``max_connections`` before TLS starts, gives the TLS handshake
``handshake_timeout`` to complete (a TCP connection that never starts TLS
is aborted then), and only after the handshake builds the protocol that
serves the connection. An HTTP server on it (the auth API, the proxy's web
API) uses ``BoundedHTTPChannel`` through ``limit_http``: a request head must
arrive within ``read_header_timeout`` and fit in ``max_header_bytes`` (else
one short error answer and the connection ends without reading on), and a
connection idle for ``idle_timeout`` is closed.

Nothing here reads the clock itself: the reactor is passed in, so tests
drive it with a Clock.
"""
from __future__ import annotations

import json
from functools import partial
from http import HTTPStatus
from typing import Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from teleport_py.config import ConnectionLimits
from teleport_py.tcp import no_delay
from teleport_py.tls_transport import FewerCallsTLSFactory

log = Logger()

#: After an error answer, how long the peer may still send (read and
#: dropped, never stored) before the connection is aborted: long enough for
#: a client still writing its request to read the answer, as nginx's
#: lingering close does.
LINGER = 2.0

#: ``build(tls_transport)`` returns the protocol serving a connection whose
#: handshake completed, or None to hang up.
Build = Callable[[object], "IProtocol | None"]


@implementer(IHandshakeListener)
class AfterHandshake(Protocol, TimeoutMixin):
    """The protocol under TLS on a listener. The handshake must complete
    within the timeout; then ``build`` chooses the protocol that serves the
    connection, which gets the TLS transport itself (only reads pass through
    here)."""

    def __init__(self, reactor, timeout: float, build: Build):
        self.callLater = reactor.callLater
        self._timeout = timeout
        self._build = build
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.setTimeout(self._timeout)

    def handshakeCompleted(self) -> None:
        self.setTimeout(None)
        try:
            inner = self._build(self.transport)
        except Exception:
            log.failure("choosing a protocol after the TLS handshake failed peer={peer}", peer=self.transport.getPeer())
            inner = None
        if inner is None:
            self.transport.abortConnection()
            return
        self._inner = inner
        inner.makeConnection(self.transport)

    def timeoutConnection(self) -> None:
        log.info("TLS handshake not completed in {timeout} s peer={peer}",
                 timeout=self._timeout, peer=self.transport.getPeer())
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif reason.check(SSL.Error):
            log.info("TLS handshake refused peer={peer} reason={reason}",
                     peer=self.transport.getPeer(), reason=_describe(reason))


def _describe(reason: Failure) -> str:
    """OpenSSL's own words (e.g. 'certificate expired'); never certificate contents."""
    if reason.check(SSL.Error):
        errors = reason.value.args[0] if reason.value.args else []
        if isinstance(errors, list) and errors:
            return "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple))
    return reason.getErrorMessage()


class _AfterHandshakeFactory(Factory):
    noisy = False  # no "Starting factory" line per listener at info level

    def __init__(self, reactor, timeout: float, build: Build):
        self._reactor = reactor
        self._timeout = timeout
        self._build = build

    def buildProtocol(self, addr) -> AfterHandshake:
        return AfterHandshake(self._reactor, self._timeout, self._build)


class LimitedTLSFactory(FewerCallsTLSFactory):
    """TLS on a listening port, within ``limits``: a source already holding
    ``max_connections`` connections has the next one closed at accept (as
    Teleport's connection limiter does, by client address), and every
    connection is an ``AfterHandshake`` until its handshake is done."""

    noisy = False

    def __init__(self, reactor, limits: ConnectionLimits, creator, build: Build):
        super().__init__(creator, False, _AfterHandshakeFactory(reactor, limits.handshake_timeout, build))
        self._max = limits.max_connections
        self._open: dict[str, int] = {}
        self._source_of: dict[object, str] = {}
        self._refusing: set[str] = set()

    def open_connections(self, source: str) -> int:
        return self._open.get(source, 0)

    def buildProtocol(self, addr):
        source = getattr(addr, "host", str(addr))
        count = self._open.get(source, 0)
        if count >= self._max:
            if source not in self._refusing:
                # Once per crossing of the limit: a flood is one line, not one per connection.
                self._refusing.add(source)
                log.warn("connections from {source} refused: it holds {count} "
                         "(teleport.connection_limits.max_connections)", source=source, count=count)
            return None
        protocol = super().buildProtocol(addr)
        self._open[source] = count + 1
        self._source_of[protocol] = source
        return protocol

    def unregisterProtocol(self, protocol) -> None:
        super().unregisterProtocol(protocol)
        source = self._source_of.pop(protocol, None)
        if source is None:
            return
        count = self._open[source] - 1
        if count:
            self._open[source] = count
        else:
            del self._open[source]
        if count < self._max:
            self._refusing.discard(source)


class BoundedHTTPChannel(HTTPChannel):
    """Twisted's HTTP/1.1 server channel within ``limits``.

    Twisted bounds a request head too (16 KiB), but answers a long line by
    closing without a word and keeps reading what follows until the peer
    stops, and an idle timeout alone lets a head arrive one byte a minute.
    Here a head too large is a 431 and a head too slow a 408, each a JSON
    error like the APIs' own; then nothing more is read (the transport is
    paused): the peer has ``LINGER`` seconds to take the answer before the
    connection is aborted.
    """

    def __init__(self, limits: ConnectionLimits):
        super().__init__()
        self._limits = limits
        self.MAX_LENGTH = limits.max_header_bytes
        self.totalHeadersSize = limits.max_header_bytes
        self._head_bytes = 0
        self._reading_head = True
        self._head_deadline = None
        self._refused = False
        self._linger = None

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head and self._head_deadline is None:
            self._start_head_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self._head_bytes += len(line) + 2
        if self._head_bytes > self._limits.max_header_bytes:
            self.lineLengthExceeded(line)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                     f"the request head is larger than {self._limits.max_header_bytes} bytes")

    def allHeadersReceived(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        self._reading_head = True
        super().requestDone(request)
        # A pipelined request's head may already be partly here.
        if self._reading_head and self._buffer and self._head_deadline is None and not self._refused:
            self._start_head_deadline()

    def connectionLost(self, reason) -> None:
        self._cancel_head_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def take_over(self, protocol) -> None:
        """After an upgrade answered on this connection (a 101 already
        written): ``protocol`` gets every byte from now on and the
        connection's end; this channel's idle timeout, head deadline and
        producer registration are dropped (``protocol`` bounds its own).
        What Twisted's own WebSocket resource does, here for our relay."""
        self.setTimeout(None)
        self._cancel_head_deadline()
        self._networkProducer.unregisterProducer()
        self.dataReceived = protocol.dataReceived
        self.connectionLost = protocol.connectionLost
        protocol.makeConnection(self.transport)

    def _start_head_deadline(self) -> None:
        self._head_deadline = self.callLater(self._limits.read_header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                     f"the request head did not arrive within {self._limits.read_header_timeout:g} s")

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._cancel_head_deadline()
        self.setTimeout(None)
        self.clearLineBuffer()
        log.info("HTTP request refused peer={peer} code={code} reason={reason}",
                 peer=self.transport.getPeer(), code=status.value, reason=message)
        body = json.dumps({"error": {"kind": "bad_parameter", "message": message}}).encode("utf-8")
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        self.transport.write(head + body)
        # Read nothing more: a peer that keeps sending fills its own socket
        # buffers and blocks, instead of the proxy decrypting and dropping
        # whatever it manages to send before the abort (a fast client sent
        # 1 GiB of one header line within LINGER).
        self.transport.pauseProducing()
        self.transport.loseConnection()
        self._linger = self.callLater(LINGER, self.transport.abortConnection)


def limit_http(site, limits: ConnectionLimits):
    """``site`` (a twisted.web Site) serving ``BoundedHTTPChannel``s, idle
    connections closed after ``idle_timeout``; returns ``site``."""
    site.protocol = partial(BoundedHTTPChannel, limits)
    site.timeOut = limits.idle_timeout
    return site
