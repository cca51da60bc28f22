"""Multiplexed HTTP/2 connections to one API server.

Over HTTP/1.1 every open watch holds a TLS connection of its own in the agent
(about 37 KiB of OpenSSL state each); the API server speaks HTTP/2 and allows
hundreds of concurrent streams per connection, so here many requests share a
few connections, as in Teleport's Go client.

The h2 library is the protocol state machine (sans-IO); this module adds the
I/O, the pool, and flow control driven by the caller: response bytes are
acknowledged to the server only once the caller says it passed them on
(``H2Stream.consumed``), so a slow reader stalls only its own stream and never
makes the agent buffer more than one stream window for it.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol as Interface

import h11
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from teleport_py.alpn import H2_ALPN
from teleport_py.kube.context import RequestContext
from teleport_py.kube.interfaces import Downstream
from teleport_py.kube.upstream import _RETRYABLE_METHODS, APIServerConnection, UpstreamRequest, _relayed_response
from teleport_py.kube_status import reason_phrase
from teleport_py.quiet import connect_protocol
from teleport_py.tcp import no_delay

log = Logger()

#: What one stream may have in flight towards us unacknowledged: the most the
#: agent buffers for one slow reader (the tunnel's stream window too).
STREAM_WINDOW = 1 << 20
#: The connection-level window is not what bounds memory (stream windows do);
#: kept large, as Go's client does, so that streams stalled by slow readers
#: cannot use it up and block the healthy streams sharing the connection.
CONNECTION_WINDOW = 1 << 30
#: Request body bytes buffered per stream beyond the server's window before
#: the caller is told to pause.
REQUEST_BODY_BUFFER = 256 * 1024
#: Stream ids are 31 bits and never reused: a connection near the end of them
#: takes no new streams.
LAST_STREAM_ID = (1 << 31) - 1

#: Connection-specific headers, which HTTP/2 forbids (RFC 9113 8.2.2;
#: ``te`` is allowed with the value ``trailers`` only).
CONNECTION_SPECIFIC_HEADERS = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
})
#: What a request sent over HTTP/2 drops: those, and Host (it becomes :authority).
_HOP_BY_HOP = CONNECTION_SPECIFIC_HEADERS | {b"host"}


class H2NotSupported(Exception):
    """The API server did not negotiate HTTP/2 (ALPN): use HTTP/1.1 instead."""


class StreamRefused(Exception):
    """The server did not process the request (GOAWAY above it, or
    REFUSED_STREAM): safe to retry, e.g. a GET once."""


class StreamReset(Exception):
    """The server reset the stream."""

    def __init__(self, error_code) -> None:
        super().__init__(f"API server reset the stream: {error_code!r}")
        self.error_code = error_code


class UpstreamProtocolError(Exception):
    """The API server broke the HTTP/2 protocol or the HTTP rules we hold it to."""


class UpstreamConnectionLost(Exception):
    """The connection to the API server ended with the stream unfinished."""


class ResponseReceiver(Interface):
    """What a stream reports to the request it carries. Exactly one of
    ``response_end`` and ``response_failed`` ends it; nothing comes after a
    ``cancel()``."""

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def response_data(self, data: bytes) -> None: ...

    def response_end(self) -> None: ...

    def response_failed(self, reason: Failure) -> None: ...

    def pause_request_body(self) -> None: ...

    def resume_request_body(self) -> None: ...


def request_headers(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """HTTP/1.1 request headers as an HTTP/2 header list: pseudo-headers
    first, names lowercased, connection-specific headers (and those the
    Connection header names) dropped, Host as :authority."""
    headers = [(name.lower(), value) for name, value in headers]
    authority = b""
    dropped = set(_HOP_BY_HOP)
    for name, value in headers:
        if name == b"host":
            authority = value
        elif name == b"connection":
            dropped.update(token.strip().lower() for token in value.split(b","))
    if not authority:
        raise ValueError("an HTTP/2 request needs the Host header for :authority")
    out = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", target)]
    for name, value in headers:
        if name not in dropped:
            out.append((name, value))
        elif name == b"te" and value.strip().lower() == b"trailers":
            out.append((name, b"trailers"))
    return out


class H2Stream:
    """One request and its response on a shared connection."""

    __slots__ = ("connection", "stream_id", "receiver", "_body", "_body_offset", "_body_size", "_end_pending",
                 "_request_ended", "_paused", "_unacknowledged", "_has_head", "done")

    def __init__(self, connection: "H2UpstreamConnection", stream_id: int, receiver: ResponseReceiver) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.receiver = receiver
        #: Request body waiting for the server's windows; the first chunk is
        #: sent from ``_body_offset`` on.
        self._body: list[bytes] = []
        self._body_offset = 0
        self._body_size = 0
        self._end_pending = False
        self._request_ended = False
        self._paused = False
        #: Response bytes handed to the receiver and not yet acknowledged.
        self._unacknowledged = 0
        self._has_head = False
        self.done = False

    def send_data(self, data: bytes) -> None:
        """Request body bytes: sent as the server's windows allow; past
        ``REQUEST_BODY_BUFFER`` waiting, the receiver is asked to pause."""
        if self.done or self._end_pending or not data:
            return
        self._body.append(data)
        self._body_size += len(data)
        self.connection.flush_stream(self)
        if self._body_size > REQUEST_BODY_BUFFER and not self._paused:
            self._paused = True
            self.receiver.pause_request_body()

    def end(self) -> None:
        """The request body is complete (sent once the buffer drains)."""
        if self.done or self._end_pending:
            return
        self._end_pending = True
        self.connection.flush_stream(self)

    def cancel(self) -> None:
        """The caller is gone: RST_STREAM CANCEL, and no more callbacks."""
        if not self.done:
            self.connection.reset_stream(self, ErrorCodes.CANCEL)

    def consumed(self, n: int) -> None:
        """``n`` response bytes were passed on: the server may send as many more."""
        n = min(n, self._unacknowledged)
        if n > 0:
            self._unacknowledged -= n
            self.connection.acknowledge(self.stream_id, n)

    # -- called by the connection ---------------------------------------------

    def _take_body(self, window: int) -> bytes:
        """Up to ``window`` bytes from the front of the request body buffer
        (copying only what is taken, however large the caller's chunks)."""
        first = self._body[0]
        piece = first[self._body_offset:self._body_offset + window]
        self._body_offset += len(piece)
        if self._body_offset == len(first):
            del self._body[0]
            self._body_offset = 0
        self._body_size -= len(piece)
        if self._paused and self._body_size <= REQUEST_BODY_BUFFER // 2:
            self._paused = False
            self.receiver.resume_request_body()
        return piece

    def _release(self) -> None:
        """The stream is over: bytes never acknowledged go back to the
        connection window (which the stream's end must not shrink for good)."""
        self.done = True
        self._body.clear()
        self._body_offset = self._body_size = 0
        if self._unacknowledged:
            self.connection.acknowledge(self.stream_id, self._unacknowledged)
            self._unacknowledged = 0


@implementer(IHandshakeListener)
class H2UpstreamConnection(APIServerConnection):
    """One TLS connection to the API server carrying many streams."""

    def __init__(self, pool: "H2Pool") -> None:
        self.pool = pool
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=True))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,  # the server opens none (no push)
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        })
        self.streams: dict[int, H2Stream] = {}
        #: Fires once the server's SETTINGS arrived (its stream limit is known).
        self.ready: Deferred = Deferred()
        self.going_away = False
        self._idle_timer = None
        #: Liveness: when the server last sent anything, and our unanswered PING.
        self._last_read = 0.0
        self._ping_sent_at: float | None = None
        self._keepalive = None

    # -- TLS and HTTP/2 setup ---------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "negotiatedProtocol", None) != H2_ALPN:
            self._fail_setup(H2NotSupported("the API server did not negotiate h2 (ALPN)"))
            self.transport.loseConnection()
            return
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - self.h2.inbound_flow_control_window)
        self._write()

    def _fail_setup(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(Failure(error))

    # -- pool's view ----------------------------------------------------------------

    def has_room(self) -> bool:
        """Ready, not going away, and below the server's stream limit."""
        return (self.ready.called and not self.going_away and not self.lost
                and self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams
                and (self.h2.highest_outbound_stream_id or 0) < LAST_STREAM_ID - 2)

    def open_stream(self, headers: list[tuple[bytes, bytes]], receiver: ResponseReceiver,
                    end_stream: bool) -> H2Stream:
        stream_id = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            # Our headers, not the connection, are at fault (h2 validates them).
            try:
                self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
            except h2.exceptions.ProtocolError:
                pass
            self._write()
            raise ValueError(f"request headers not valid for HTTP/2: {e}") from None
        stream = self.streams[stream_id] = H2Stream(self, stream_id, receiver)
        stream._request_ended = stream._end_pending = end_stream
        self._cancel_idle_timer()
        self._write()
        return stream

    def close(self) -> Deferred:
        """GOAWAY, then close; fires once the connection is gone."""
        waiter = self.when_lost()
        if not self.lost:
            self.going_away = True
            if self.ready.called and self.h2.state_machine.state != ConnectionState.CLOSED:
                self.h2.close_connection()
                self._write()
            self.transport.loseConnection()
        return waiter

    # -- streams' requests ---------------------------------------------------------

    def flush_stream(self, stream: H2Stream) -> None:
        """Send what the windows allow of the stream's body, then its end."""
        if self.lost or stream.done:
            return
        sid = stream.stream_id
        while stream._body_size:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                break
            self.h2.send_data(sid, stream._take_body(window))
        if stream._end_pending and not stream._body_size and not stream._request_ended:
            stream._request_ended = True
            self.h2.end_stream(sid)
        self._write()

    def reset_stream(self, stream: H2Stream, code: ErrorCodes) -> None:
        self._forget(stream)
        if not self.lost:
            try:
                self.h2.reset_stream(stream.stream_id, code)
            except h2.exceptions.StreamClosedError:
                pass  # already closed on the server's side
            self._write()

    def acknowledge(self, stream_id: int, n: int) -> None:
        if not self.lost:
            self.h2.acknowledge_received_data(n, stream_id)
            self._write()

    # -- from the server ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.lost:
            return
        self._last_read = self.pool.reactor.seconds()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warn("API server broke HTTP/2: {error}", error=str(e))
            self._write()  # h2's GOAWAY
            self._abort(UpstreamProtocolError(str(e)))
            return
        for event in events:
            handler = self._handlers.get(type(event))
            if handler is not None:
                handler(self, event)
            if self.lost:
                return
        self._write()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if not self.ready.called:
            self._start_idle_timer()  # before the waiters open their streams
            self._keepalive = self.pool.reactor.callLater(self.pool.ping_interval, self._check_alive)
            self.ready.callback(self)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        status, headers = None, []
        for name, value in event.headers:
            if name == b":status":
                status = value
            elif not name.startswith(b":"):
                headers.append((name, value))
        if status is None or not status.isdigit() or len(status) != 3:
            self._fail_stream(stream, UpstreamProtocolError(f"invalid :status {status!r}"), ErrorCodes.PROTOCOL_ERROR)
            return
        stream._has_head = True
        stream.receiver.response_head(int(status), headers)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        padding = event.flow_controlled_length - len(event.data)
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        if padding:
            self.h2.acknowledge_received_data(padding, event.stream_id)
        if event.data:
            stream._unacknowledged += len(event.data)
            stream.receiver.response_data(event.data)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and event.headers:
            self._fail_stream(stream, UpstreamProtocolError("trailers from the API server are refused"),
                              ErrorCodes.PROTOCOL_ERROR)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if not stream._has_head:  # h2 validates; this guards the contract
            self._fail_stream(stream, UpstreamProtocolError("stream ended without a response"), ErrorCodes.PROTOCOL_ERROR)
            return
        if not stream._request_ended:
            # The response is complete: the rest of the request body is not needed.
            self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        self._forget(stream)
        stream.receiver.response_end()

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        self._forget(stream)
        error = (StreamRefused("the API server refused the stream") if event.error_code == ErrorCodes.REFUSED_STREAM
                 else StreamReset(event.error_code))
        stream.receiver.response_failed(Failure(error))

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            waiting = [stream] if stream is not None else []
        else:
            waiting = list(self.streams.values())
        for stream in waiting:
            if stream._body_size or (stream._end_pending and not stream._request_ended):
                self.flush_stream(stream)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """No new streams here; streams the server never saw fail as
        refused (retryable), the others run to their end."""
        self.going_away = True
        self.pool.retire(self)
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream in [s for sid, s in self.streams.items() if sid > last]:
            self._forget(stream)
            stream.receiver.response_failed(Failure(StreamRefused("the API server is going away (GOAWAY)")))
        if self.streams:
            # h2 closes its whole state machine on GOAWAY, which would refuse
            # the frames of the streams the server still finishes (RFC 9113
            # 6.8); we open no stream here again, so keep it open for those.
            self.h2.state_machine.state = ConnectionState.CLIENT_OPEN
        else:
            self.transport.loseConnection()

    _handlers = {
        h2.events.RemoteSettingsChanged: _on_settings,
        h2.events.ResponseReceived: _on_response,
        h2.events.DataReceived: _on_data,
        h2.events.TrailersReceived: _on_trailers,
        h2.events.StreamEnded: _on_stream_ended,
        h2.events.StreamReset: _on_reset,
        h2.events.WindowUpdated: _on_window,
        h2.events.ConnectionTerminated: _on_goaway,
    }

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        self.going_away = True
        self._cancel_idle_timer()
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self.pool.retire(self)
        self._fail_setup(UpstreamConnectionLost("the connection closed during HTTP/2 setup"))
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.done = True
            stream.receiver.response_failed(Failure(UpstreamConnectionLost("the API server connection was lost")))
        self._notify_lost()

    # -- internals -----------------------------------------------------------------

    def _fail_stream(self, stream: H2Stream, error: Exception, code: ErrorCodes) -> None:
        self.reset_stream(stream, code)
        stream.receiver.response_failed(Failure(error))

    def _forget(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            stream._release()
            if not self.streams:
                if self.going_away:
                    self.transport.loseConnection()
                else:
                    self._start_idle_timer()

    def _abort(self, error: Exception) -> None:
        """Fail every stream with ``error`` and drop the connection."""
        self.going_away = True
        self.pool.retire(self)
        self._fail_setup(error)
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.done = True
            stream.receiver.response_failed(Failure(error))
        self.transport.abortConnection()

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.lost:
            self.transport.write(data)

    def _check_alive(self) -> None:
        """A watch on a connection that died silently (no FIN, no RST) would
        wait forever: after ``ping_interval`` without a byte from the server
        we PING, and without an answer in ``ping_timeout`` its streams fail."""
        pool, now = self.pool, self.pool.reactor.seconds()
        if now - self._last_read < pool.ping_interval:
            self._ping_sent_at = None
            next_check = self._last_read + pool.ping_interval
        elif self._ping_sent_at is None:
            self._ping_sent_at = now
            self.h2.ping(b"tpkeepal")
            self._write()
            next_check = now + pool.ping_timeout
        else:
            log.warn("API server did not answer a PING in {timeout} s; dropping the connection",
                     timeout=pool.ping_timeout)
            self._abort(UpstreamConnectionLost("the API server stopped answering (PING timeout)"))
            return
        self._keepalive = pool.reactor.callLater(next_check - now, self._check_alive)

    def _start_idle_timer(self) -> None:
        self._cancel_idle_timer()
        self._idle_timer = self.pool.reactor.callLater(self.pool.idle_timeout, self.close)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None


class H2Pool:
    """HTTP/2 connections to one API server, each carrying as many streams
    as the server allows (its SETTINGS_MAX_CONCURRENT_STREAMS).

    A request takes a stream on a connection with room, else waits for the
    connection being set up (one at a time, shared by every waiting request),
    and starts one if none is. A server that does not speak h2 is remembered
    for ``h2_retry_after`` seconds, so callers fall back to HTTP/1.1 at once.
    """

    def __init__(self, reactor, endpoint: Callable[[], IStreamClientEndpoint], *,
                 idle_timeout: float = 30.0, setup_timeout: float = 30.0, h2_retry_after: float = 300.0,
                 ping_interval: float = 30.0, ping_timeout: float = 15.0) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._endpoint = endpoint
        self._setup_timeout = setup_timeout
        self._h2_retry_after = h2_retry_after
        self._no_h2_until = None
        self._connections: list[H2UpstreamConnection] = []
        #: Connections still carrying streams but taking no new ones.
        self._draining: set[H2UpstreamConnection] = set()
        self._pending: H2UpstreamConnection | None = None
        self._connecting: Deferred | None = None
        self._waiters: list[Deferred] = []
        self._closed = False

    @property
    def connections(self) -> list[H2UpstreamConnection]:
        """Connections that can still take streams or carry some."""
        return list(self._connections)

    async def request(self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]],
                      receiver: ResponseReceiver, *, end_stream: bool = True) -> H2Stream:
        """Open a stream for one request (``end_stream``: it has no body)."""
        h2_headers = request_headers(method, target, headers)
        while True:
            if self._closed:
                raise UpstreamConnectionLost("the pool is closed")
            if self._no_h2_until is not None:
                if self.reactor.seconds() < self._no_h2_until:
                    raise H2NotSupported("the API server does not speak h2")
                self._no_h2_until = None
            for connection in self._connections:
                if connection.has_room():
                    return connection.open_stream(h2_headers, receiver, end_stream)
            fresh = await self._next_connection()
            if not fresh.has_room() and not fresh.streams:
                raise StreamRefused("the API server allows no streams on a new connection")

    def _next_connection(self) -> Deferred:
        """Fires with the connection being set up once it is ready (or with why it failed)."""
        waiter = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiter)
        if self._pending is None:
            self._connect()
        return waiter

    def _connect(self) -> None:
        connection = self._pending = H2UpstreamConnection(self)
        connecting = self._connecting = connect_protocol(self._endpoint(), connection)

        def timed_out():
            if connection.transport is None:
                connecting.cancel()
            else:
                connection._fail_setup(UpstreamConnectionLost("HTTP/2 setup with the API server timed out"))
                connection.transport.abortConnection()

        timer = self.reactor.callLater(self._setup_timeout, timed_out)
        connecting.addCallback(lambda _: connection.ready).addBoth(self._set_up, connection, timer)

    def _set_up(self, result, connection: H2UpstreamConnection, timer) -> None:
        if timer.active():
            timer.cancel()
        self._pending = self._connecting = None
        if isinstance(result, Failure):
            if result.check(H2NotSupported):
                self._no_h2_until = self.reactor.seconds() + self._h2_retry_after
            elif result.check(CancelledError):
                result = Failure(UpstreamConnectionLost("connecting to the API server timed out or was cancelled"))
        elif self._closed:
            connection.close()
        else:
            self._connections.append(connection)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(connection)

    def retire(self, connection: H2UpstreamConnection) -> None:
        """The connection takes no new streams (GOAWAY, closing, lost)."""
        if connection in self._connections:
            self._connections.remove(connection)
        if connection.lost:
            self._draining.discard(connection)
        else:
            self._draining.add(connection)

    def close(self) -> Deferred:
        """Agent shutdown: GOAWAY and close every connection; fires when all are gone."""
        self._closed = True
        if self._connecting is not None and self._pending.transport is None:
            self._connecting.cancel()
        connections = {*self._connections, *self._draining}
        if self._pending is not None and self._pending.transport is not None:
            connections.add(self._pending)
        self._connections = []
        return gatherResults([connection.close() for connection in connections])


class _StreamFlow:
    """What a Downstream's ``throttle`` expects of the API server's side
    (HTTP/1.1: its TCP transport), for one HTTP/2 stream: pausing it stops
    acknowledging response bytes (the server stops at the stream window),
    and the registered producer (kubectl's side) is paused while the
    request body waits for the server's windows."""

    def __init__(self, exchange: "H2UpstreamRequest") -> None:
        self.exchange = exchange
        self.paused = False
        self.withheld = 0
        self.producer = None

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        withheld, self.withheld = self.withheld, 0
        if withheld and self.exchange.stream is not None:
            self.exchange.stream.consumed(withheld)

    def passed_on(self, n: int) -> None:
        """``n`` response bytes went to kubectl's side."""
        if self.paused:
            self.withheld += n
        elif self.exchange.stream is not None:
            self.exchange.stream.consumed(n)

    def abortConnection(self) -> None:
        """Only this stream: the connection carries other requests."""
        if self.exchange.stream is not None:
            self.exchange.stream.cancel()

    loseConnection = abortConnection


class H2UpstreamRequest(UpstreamRequest):
    """One request (meant for watches) on a stream of the cluster's H2Pool,
    authorized, impersonated, filtered and audited exactly as
    ``UpstreamRequest`` does over HTTP/1.1: only the carrying differs. The
    response reaches kubectl as h11 events, whichever front end it speaks.
    Never an upgrade (HTTP/2 has none)."""

    def __init__(self, downstream: Downstream, context: RequestContext) -> None:
        super().__init__(downstream, context)
        self.stream: H2Stream | None = None
        self.transport: _StreamFlow | None = None
        #: Request body from kubectl before the stream is open.
        self._body_pending: list[bytes] = []

    async def start(self, pool: H2Pool, *, fresh: bool = False) -> None:
        """Open the stream. Raises ``H2NotSupported`` when the API server
        does not speak h2 (the caller then uses ``UpstreamRequest``)."""
        headers = self._headers()
        self._pool = pool
        without_body = self._request_ended and not self._body_pending
        stream = await pool.request(self.request.method, self.request.target, headers, self,
                                    end_stream=without_body)
        if self._finished:  # kubectl went away while we were connecting
            stream.cancel()
            return
        self.stream, self.transport = stream, _StreamFlow(self)
        self.downstream.throttle(self.transport)
        pending, self._body_pending = self._body_pending, []
        for data in pending:
            stream.send_data(data)
        if self._request_ended and not without_body:
            stream.end()

    def request_data(self, data: bytes) -> None:
        self._has_body = True
        if self.stream is None:
            self._body_pending.append(data)
        else:
            self.stream.send_data(data)

    def request_done(self) -> None:
        self._request_ended = True
        if self.stream is not None:
            self.stream.end()

    # -- ResponseReceiver ------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._finished:
            return
        self._received = self._responded = True
        response = _relayed_response(h11.Response(status_code=status, headers=headers, reason=reason_phrase(status)))
        if self.decision.item_filter is not None and 200 <= status < 300:
            self._start_filter(response)
            return
        self._audit(status)
        self.downstream.send(response)

    def response_data(self, data: bytes) -> None:
        if self._finished:
            return
        if self._filter is not None:
            if not self._filter_step(data):
                return
        else:
            self.downstream.send(h11.Data(data=data))
        self.transport.passed_on(len(data))

    def response_end(self) -> None:
        if self._finished:
            return
        if self._held_response is not None:
            self._filter_list_off_reactor()
            return
        if self._filter is not None and not self._filter_step(None):
            return
        self.downstream.send(h11.EndOfMessage())
        self._end_of_response()

    def response_failed(self, reason: Failure) -> None:
        if self._finished:
            return
        if (reason.check(StreamRefused) and not self._retried and not self._received and not self._has_body
                and self.request.method in _RETRYABLE_METHODS):
            self._retry()
            return
        log.warn("API server stream failed cluster={cluster} error={error}",
                 cluster=self.context.cluster.name, error=reason.value)
        self._fail()

    def pause_request_body(self) -> None:
        if self.transport is not None and self.transport.producer is not None:
            self.transport.producer.pauseProducing()

    def resume_request_body(self) -> None:
        if self.transport is not None and self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    # -- UpstreamRequest's connection handling, for a stream ----------------------------

    def _finish(self) -> None:
        self._finished = True
        self.downstream.unthrottle()

    def _retry(self) -> None:
        """The server refused the stream before reading it: once more, on whichever connection has room."""
        self._retried = True
        self.downstream.unthrottle()
        self.stream = self.transport = None
        log.info("API server refused a stream; retrying cluster={cluster}", cluster=self.context.cluster.name)
        d = Deferred.fromCoroutine(self.start(self._pool))
        d.addErrback(self._retry_failed)
