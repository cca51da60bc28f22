"""
Twisted wrapper around the tunnel Multiplexer: one TunnelProtocol per tunnel
connection, one _StreamTransport per stream, so ordinary protocols (HTTP,
TLS, splices) run over a stream exactly as they would over TCP.
"""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from teleport_py.tcp import no_delay
from teleport_py.tunnel import mux
from teleport_py.tunnel.frames import TunnelProtocolError
from teleport_py.tunnel.mux import DEFAULT_MAX_FRAME_PAYLOAD, DEFAULT_WINDOW, StreamRejected, TunnelClosed

log = Logger()

#: Writes this big are most likely pieces of a bulk transfer in flight (TLS
#: records, re-framed HTTP chunks): they wait for the end of the reactor
#: turn, so the pieces of one network read leave as one DATA frame (fewer
#: frames and calls per byte on both ends). Smaller writes (a request, a
#: response head, a watch event) leave at once.
COALESCE_FROM = 4 * 1024


@implementer(IAddress)
@attrs.frozen
class StreamAddress:
    """What getPeer()/getHost() of a stream return: its kind and metadata."""

    kind: str
    metadata: dict
    stream_id: int


@implementer(ITransport, IConsumer, IPushProducer)
class _StreamTransport:
    """
    A stream as a TCP-like transport. Incoming data is held (at most one
    window) while the protocol has paused us; outgoing data beyond the peer's
    window is held by the Multiplexer while the registered producer is paused.
    """

    def __init__(self, tunnel: TunnelProtocol, address: StreamAddress, protocol: IProtocol):
        self._tunnel = tunnel
        self._id = address.stream_id
        self._address = address
        self.protocol = protocol
        self.producer = None
        self._streaming = False
        self._producer_paused = False
        self._window_blocked = False
        self._reading_paused = False
        self._inbox: list[bytes] = []
        self._unsent: list[bytes] = []
        self._unsent_size = 0
        self._fin_pending = False
        self.disconnecting = False
        self._write_closed = False
        self._finished = False

    # ITransport

    def write(self, data: bytes) -> None:
        if self._write_closed or self._finished or not data:
            return
        if not self._unsent and len(data) < COALESCE_FROM:
            self._queue(data)
            self._tunnel._pump()
            return
        self._unsent.append(data)
        self._unsent_size += len(data)
        if self._unsent_size > self._tunnel._mux.sendable(self._id):
            # Beyond the window: pause the producer now, as an unbatched write would.
            self._window_blocked = True
            self._update_producer()
        self._tunnel._send_soon(self)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Half-close: the peer sees FIN after everything written so far."""
        if self._write_closed or self._finished:
            return
        self._write_closed = True
        self._queue_unsent()
        self._tunnel._mux.end_stream(self._id)
        self._tunnel._pump()

    def loseConnection(self) -> None:
        """
        Send FIN after pending data; connectionLost comes once the peer has
        finished too. Data still arriving meanwhile is discarded (but
        acknowledged so the peer never stalls on a stream nobody reads).
        """
        self.disconnecting = True
        self._inbox.clear()
        self.loseWriteConnection()

    def abortConnection(self) -> None:
        if self._finished:
            return
        self._tunnel._mux.reset_stream(self._id, "aborted")
        self._lost(Failure(ConnectionAborted()))
        self._tunnel._pump()

    def getPeer(self) -> StreamAddress:
        return self._address

    # ITCPTransport options are meaningless on a stream, but TLS and HTTP
    # clients layered on top set them: accept and ignore.

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def getHost(self) -> StreamAddress:
        return self._address

    # IConsumer

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered on this stream")
        self.producer, self._streaming = producer, streaming
        self._producer_paused = False
        if self._finished:
            producer.stopProducing()
        elif not streaming and not self._window_blocked:
            producer.resumeProducing()
        # A streaming producer is not paused here, even on a paused tunnel:
        # like a TCP transport, the next write() pauses it. Callers register
        # before they start producing (twisted.web's FileBodyProducer cannot
        # pause yet, and the request then hangs), so pausing now breaks them.

    def unregisterProducer(self) -> None:
        self.producer = None

    # IPushProducer: the protocol reading from this stream controls it.

    def pauseProducing(self) -> None:
        self._reading_paused = True

    def resumeProducing(self) -> None:
        self._reading_paused = False
        while self._inbox and not self._reading_paused and not self._finished:
            self._deliver(self._inbox.pop(0))
        if self._fin_pending and not self._inbox and not self._reading_paused:
            self._fin_pending = False
            self._end_of_input()
        self._tunnel._pump()

    def stopProducing(self) -> None:
        self.abortConnection()

    # Called by TunnelProtocol for this stream's events.

    def _connect(self) -> None:
        try:
            self.protocol.makeConnection(self)
        except Exception:
            log.failure("stream protocol failed to start stream={stream}", stream=self._id)
            self.abortConnection()

    def _data_received(self, data: bytes) -> None:
        if self.disconnecting:
            self._tunnel._mux.acknowledge(self._id, len(data))
        elif self._reading_paused or self._inbox:
            self._inbox.append(data)
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            self.protocol.dataReceived(data)
        except Exception:
            log.failure("stream protocol failed on data stream={stream}", stream=self._id)
            self.abortConnection()
            return
        self._tunnel._mux.acknowledge(self._id, len(data))

    def _fin_received(self) -> None:
        if self._inbox or self._reading_paused:
            self._fin_pending = True
        else:
            self._end_of_input()

    def _end_of_input(self) -> None:
        if self.disconnecting or not IHalfCloseableProtocol.providedBy(self.protocol):
            # Like TCP for protocols that cannot half-close: the stream ends.
            self.loseConnection()
            return
        try:
            self.protocol.readConnectionLost()
        except Exception:
            log.failure("stream protocol failed on FIN stream={stream}", stream=self._id)
            self.abortConnection()

    def _queue(self, data: bytes) -> None:
        """Hand bytes to the Multiplexer (the caller pumps) and pause the
        producer if they must wait for window."""
        self._tunnel._mux.send_data(self._id, data)
        self._window_blocked = self._tunnel._mux.buffered(self._id) > 0
        self._update_producer()

    def _queue_unsent(self) -> None:
        if self._unsent:
            data = b"".join(self._unsent)
            self._unsent.clear()
            self._unsent_size = 0
            self._queue(data)

    def _send_buffer_drained(self) -> None:
        self._window_blocked = self._unsent_size > self._tunnel._mux.sendable(self._id)
        if self.producer is not None and not self._streaming:
            self.producer.resumeProducing()
        self._update_producer()

    def _update_producer(self) -> None:
        if self.producer is None or not self._streaming:
            return
        should_pause = self._window_blocked or self._tunnel._paused
        if should_pause and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()
        elif not should_pause and self._producer_paused:
            self._producer_paused = False
            self.producer.resumeProducing()

    def _lost(self, reason: Failure) -> None:
        if self._finished:
            return
        self._finished = True
        self._inbox.clear()
        self._unsent.clear()
        self._tunnel._stream_finished(self._id)
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            log.failure("stream protocol failed on close stream={stream}", stream=self._id)


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _StreamEndpoint:
    """connect() opens a tunnel stream, so any client protocol can use one."""

    tunnel: TunnelProtocol
    kind: str
    metadata: dict

    def connect(self, factory):
        protocol = factory.buildProtocol(StreamAddress(self.kind, self.metadata, 0))
        if protocol is None:
            return fail(ConnectionAborted("factory declined to build a protocol"))
        return self.tunnel.open_stream(self.kind, self.metadata, protocol)


@implementer(IPushProducer)
class TunnelProtocol(Protocol):
    """
    The multiplexed reverse tunnel over one (TLS) connection. The agent is
    the initiator; either side may open streams once connected.
    """

    def __init__(
        self,
        reactor,
        *,
        initiator: bool,
        accept_stream: Callable[[str, dict], IProtocol],
        keepalive_interval: float = 15.0,
        dead_peer_timeout: float = 45.0,
        initial_window: int = DEFAULT_WINDOW,
        max_frame_payload: int = DEFAULT_MAX_FRAME_PAYLOAD,
    ) -> None:
        self._reactor = reactor
        self._accept_stream = accept_stream
        self._keepalive_interval = keepalive_interval
        self._dead_peer_timeout = dead_peer_timeout
        self._mux = mux.Multiplexer(
            initiator=initiator,
            initial_window=initial_window,
            max_frame_payload=max_frame_payload,
        )
        self._streams: dict[int, _StreamTransport] = {}
        self._opening: dict[int, tuple[IProtocol, Deferred, StreamAddress]] = {}
        self._paused = False
        self._pumping = False
        self._gone = False
        self._keepalive = None
        self._deadline = None
        self._drain_waiters: list[Deferred] = []
        self._unsent_streams: dict[int, _StreamTransport] = {}
        self._send_call = None
        self.closed: Deferred[None] = Deferred()

    @property
    def stream_count(self) -> int:
        """Streams open or being opened, either direction."""
        return len(self._streams) + len(self._opening)

    def streams_of_kind(self, kind: str) -> int:
        """Open streams of one kind (e.g. ``kube``), either direction."""
        return sum(1 for stream in self._streams.values() if stream.getPeer().kind == kind)

    # --- public API ----------------------------------------------------------

    def open_stream(self, kind: str, metadata: dict, protocol: IProtocol) -> Deferred:
        """Fires with protocol once the peer accepted and it is connected."""
        if self._gone:
            return fail(TunnelClosed("tunnel connection is closed"))
        try:
            stream_id = self._mux.open_stream(kind, metadata)
        except (TunnelClosed, ValueError) as e:
            return fail(e)
        opened = Deferred(lambda _: self._cancel_open(stream_id))
        self._opening[stream_id] = (protocol, opened, StreamAddress(kind, metadata, stream_id))
        self._pump()
        return opened

    def endpoint(self, kind: str, metadata: dict) -> IStreamClientEndpoint:
        return _StreamEndpoint(self, kind, metadata)

    def go_away(self) -> Deferred:
        """Refuse new streams both ways; close once the open ones finish."""
        drained: Deferred[None] = Deferred()
        if self._gone:
            drained.callback(None)
            return drained
        self._drain_waiters.append(drained)
        self._mux.go_away("draining")
        self._pump()
        self._close_if_drained()
        return drained

    # --- Protocol ----------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        self._keepalive = self._reactor.callLater(self._keepalive_interval, self._idle)
        self._deadline = self._reactor.callLater(self._dead_peer_timeout, self._peer_dead)
        self._pump()

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        self._keepalive.reset(self._keepalive_interval)
        self._deadline.reset(self._dead_peer_timeout)
        try:
            self._mux.receive_data(data)
        except TunnelProtocolError as e:
            log.warn(
                "tunnel protocol error, closing peer={peer} reason={reason}",
                peer=self.transport.getPeer(),
                reason=str(e),
            )
            self._abort()
            return
        self._pump()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:
        self._teardown()
        for waiter in self._drain_waiters:
            waiter.callback(None)
        self._drain_waiters.clear()
        if not self.closed.called:
            self.closed.callback(None)

    # IPushProducer: the underlying connection's back-pressure.

    def pauseProducing(self) -> None:
        self._paused = True
        for stream in list(self._streams.values()):
            stream._update_producer()

    def resumeProducing(self) -> None:
        self._paused = False
        for stream in list(self._streams.values()):
            stream._update_producer()

    def stopProducing(self) -> None:
        self._teardown()

    # --- internals ---------------------------------------------------------

    def _pump(self) -> None:
        """Send what the Multiplexer queued and dispatch its events, in order."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                data = self._mux.data_to_send()
                if data and not self._gone:
                    self.transport.write(data)
                events = self._mux.next_events()
                if not events:
                    break
                for event in events:
                    if not self._gone:
                        self._dispatch(event)
        finally:
            self._pumping = False

    def _send_soon(self, stream: _StreamTransport) -> None:
        """Queue the stream's batched writes at the end of this reactor turn."""
        self._unsent_streams[stream._id] = stream
        if self._send_call is None:
            self._send_call = self._reactor.callLater(0, self._send_unsent)

    def _send_unsent(self) -> None:
        self._send_call = None
        streams, self._unsent_streams = self._unsent_streams, {}
        for stream in streams.values():
            stream._queue_unsent()
        self._pump()

    def _dispatch(self, event: mux.Event) -> None:
        match event:
            case mux.StreamOpened():
                self._accept_peer_stream(event)
            case mux.StreamAccepted() if event.stream_id in self._opening:
                protocol, opened, address = self._opening.pop(event.stream_id)
                stream = self._streams[event.stream_id] = _StreamTransport(self, address, protocol)
                stream._connect()
                opened.callback(protocol)
            case mux.OpenRejected() if event.stream_id in self._opening:
                _, opened, _ = self._opening.pop(event.stream_id)
                opened.errback(StreamRejected(event.reason))
                self._close_if_drained()
            case mux.StreamReset() if event.stream_id in self._opening:
                _, opened, _ = self._opening.pop(event.stream_id)
                opened.errback(StreamRejected(event.reason))
                self._close_if_drained()
            case mux.StreamReset():
                self._for_stream(event, lambda s: s._lost(Failure(ConnectionLost(event.reason))))
            case mux.DataReceived():
                self._for_stream(event, lambda s: s._data_received(event.data))
            case mux.StreamEnded():
                self._for_stream(event, lambda s: s._fin_received())
            case mux.SendBufferDrained():
                self._for_stream(event, lambda s: s._send_buffer_drained())
            case mux.StreamClosed():
                self._for_stream(event, lambda s: s._lost(Failure(ConnectionDone())))
            case mux.GoAwayReceived():
                log.info("tunnel peer is going away reason={reason}", reason=event.reason)
            case mux.HelloReceived():
                log.debug("tunnel hello version={version}", version=event.version)

    def _for_stream(self, event, action) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            action(stream)

    def _accept_peer_stream(self, event: mux.StreamOpened) -> None:
        try:
            protocol = self._accept_stream(event.kind, event.metadata)
        except StreamRejected as e:
            self._mux.reject_stream(event.stream_id, str(e.args[0]) if e.args else "rejected")
            return
        except Exception:
            log.failure("accept_stream failed kind={kind}", kind=event.kind)
            self._mux.reject_stream(event.stream_id, "internal error")
            return
        if protocol is None:
            self._mux.reject_stream(event.stream_id, "rejected")
            return
        self._mux.accept_stream(event.stream_id)
        address = StreamAddress(event.kind, event.metadata, event.stream_id)
        stream = self._streams[event.stream_id] = _StreamTransport(self, address, protocol)
        stream._connect()

    def _cancel_open(self, stream_id: int) -> None:
        if self._opening.pop(stream_id, None) is not None:
            self._mux.reset_stream(stream_id, "cancelled")
            self._pump()
            self._close_if_drained()

    def _stream_finished(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._mux.going_away and not self.stream_count and not self._gone:
            self._pump()
            # TLS (and TCP) transports wait for a registered producer to go
            # away before they close: unregister, or the drain never ends.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _idle(self) -> None:
        """Nothing heard for a keepalive interval: make the peer answer."""
        self._keepalive = self._reactor.callLater(self._keepalive_interval, self._idle)
        self._mux.ping()
        self._pump()

    def _peer_dead(self) -> None:
        log.warn(
            "tunnel peer silent for {timeout}s, aborting peer={peer}",
            timeout=self._dead_peer_timeout,
            peer=self.transport.getPeer(),
        )
        self._abort()

    def _abort(self) -> None:
        self._teardown()
        self.transport.abortConnection()

    def _teardown(self) -> None:
        """Fail everything riding on this connection, exactly once."""
        if self._gone:
            return
        self._gone = True
        for timer in (self._keepalive, self._deadline, self._send_call):
            if timer is not None and timer.active():
                timer.cancel()
        for _, opened, _ in list(self._opening.values()):
            opened.errback(TunnelClosed("tunnel connection lost"))
        self._opening.clear()
        for stream in list(self._streams.values()):
            stream._lost(Failure(ConnectionLost("tunnel connection lost")))
