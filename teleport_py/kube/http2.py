"""The agent's HTTP/2 front end: every request of one kubectl process on one tunnel stream.

client-go multiplexes all of a process's requests, watches included, on one
HTTP/2 connection when the proxy offers h2: a thousand watches are then one
TLS connection in the proxy and one tunnel stream here, not a thousand.
Each h2 stream is one request with exactly the HTTP/1.1 semantics: its
``:method``, ``:path`` and ``:authority`` are made canonical (the same
parser as HTTP/1.1's request line) and it is decided, forwarded and audited
by the tunnel stream's `KubeCaller` (kube/authorize.py); the response comes
back as h11 events from its upstream exchange and is re-framed as HEADERS
and DATA.

Flow control holds end to end: a response is written only within kubectl's
stream and connection windows, and a request whose response waits for a
window, or whose tunnel stream takes no more, has its API server connection
paused. Request body bytes are acknowledged (WINDOW_UPDATE) once written
upstream, and not while the API server connection is not taking more.
HTTP/2 framing is h2's (sans-IO): a protocol error is a GOAWAY and the end
of THIS tunnel stream only. Upgrades (exec, attach, port-forward) stay on
HTTP/1.1: kubectl never sends them over h2.

Within ``teleport.connection_limits``, as the HTTP/1.1 front: a connection
with no request open is closed after ``idle_timeout`` (GOAWAY NO_ERROR); a
header block must be whole within ``read_header_timeout`` of its HEADERS
frame (else GOAWAY and the end of the connection, audited as a request cut
short with 408). Floods of frames that carry no request are bounded by
kube/h2_guard.py.
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.kube.authorize import HeldRequest, KubeCaller
from teleport_py.kube.canonical import CanonicalRequest
from teleport_py.kube.h2_guard import Flood, FrameGuard
from teleport_py.kube.interfaces import Upstream
from teleport_py.kube.upstream_h2 import CONNECTION_SPECIFIC_HEADERS
from teleport_py.kube_status import KubeStatus

log = Logger()

#: kube-apiserver's own choice.
MAX_CONCURRENT_STREAMS = 1000
#: kubectl's headers are a few hundred bytes; h2's HPACK decoder enforces this.
MAX_HEADER_LIST_SIZE = 64 * 1024
#: Response headers that describe an HTTP/1.1 connection, forbidden in HTTP/2.
_CONNECTION_HEADERS = CONNECTION_SPECIFIC_HEADERS | {b"trailer"}


class NotForwarded(Exception):
    """A request HTTP/2 can carry but this agent does not forward."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def request_parts(headers: list[tuple[bytes, bytes]],
                  has_body: bool) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    """``(method, path, authority, headers)`` of an h2 header list (already
    validated by h2), with the headers an HTTP/1.1 request would carry: the
    same canonical request and the same upstream exchange serve both. The
    path is the caller's to make canonical."""
    pseudo = {name: value for name, value in headers if name.startswith(b":")}
    regular = [(name, value) for name, value in headers if not name.startswith(b":") and name != b"host"]
    method, path, authority = pseudo.get(b":method"), pseudo.get(b":path"), pseudo.get(b":authority")
    if method == b"CONNECT" or b":protocol" in pseudo:
        raise NotForwarded(405, "MethodNotAllowed", "CONNECT is not supported: exec, attach and port-forward "
                           "use HTTP/1.1 upgrades")
    if not method or not path or not authority:
        raise NotForwarded(400, "BadRequest", "request without :method, :path or :authority")
    if has_body and not any(name == b"content-length" for name, _ in regular):
        regular.append((b"transfer-encoding", b"chunked"))
    try:  # what the HTTP/1.1 API server connection will have to send
        h11.Request(method=method, target=b"/", headers=[(b"host", authority), *regular])
    except h11.LocalProtocolError as e:
        raise NotForwarded(400, "BadRequest", f"malformed HTTP request: {e}") from None
    return method, path, authority, regular


class KubeHTTP2Connection(Protocol):
    """HTTP/2 server side of one kubectl connection (one tunnel stream).

    It is its tunnel stream's producer: while the stream takes no more,
    every request's API server connection is paused."""

    def __init__(self, caller: KubeCaller) -> None:
        self.caller = caller
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        self.streams: dict[int, RequestStream] = {}
        #: The highest stream kubectl opened that this connection took on.
        self.last_stream_id = 0
        #: A graceful GOAWAY was sent (`drain`): close once ``streams`` is empty.
        self.draining = False
        #: The tunnel stream takes no more for now.
        self.paused = False
        self.closed = False
        #: What kubectl sends, frame by frame, before h2 reads it: floods and open header blocks.
        self.guard = FrameGuard()
        #: Runs while no request is open (``idle_timeout``), and while a
        #: header block is open (``read_header_timeout``).
        self._idle_timer = None
        self._head_timer = None

    def connectionMade(self) -> None:
        self.transport.registerProducer(_TunnelThrottle(self), True)
        self.h2.initiate_connection()
        self.write_out()

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.guard.receive(data, self.caller.stream.reactor.seconds())
        except Flood as e:
            self._refuse(429, ErrorCodes.ENHANCE_YOUR_CALM, f"HTTP/2: {e}")
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # h2 has queued a GOAWAY with the error's code; no request on
            # this connection was refused with a Status, so audit it here.
            self.caller.refused_unparsed(400, f"HTTP/2: {e}")
            self._hang_up()
            return
        for event in events:
            handler = self._handlers.get(type(event))
            if handler is not None and not self.closed:
                handler(self, event)
        self.write_out()

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        self._watch_time()
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.lost()

    def drain(self) -> None:
        """The agent begins to shut down: a GOAWAY (NO_ERROR) naming the last
        stream taken on, so kubectl opens its next requests on another
        connection, while the ones already here finish; the connection
        closes once none is left (`write_out`). The frame is built here:
        h2 sends GOAWAY only as its last frame (``close_connection`` closes
        its state machine), and these streams still have responses to send."""
        if self.closed or self.draining:
            return
        self.write_out()
        self.transport.write(GoAwayFrame(0, last_stream_id=self.last_stream_id,
                                         error_code=ErrorCodes.NO_ERROR).serialize())
        self.draining = True
        self.write_out()

    def go_away(self) -> None:
        """The drain's deadline passed (or shutdown without one): every
        stream still open is reset (CANCEL, its exchange cancelled), then a
        final GOAWAY and the end of the connection."""
        if self.closed:
            return
        for stream_id in list(self.streams):
            try:
                self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass  # h2 has closed it already; it is cancelled below all the same
        self.h2.close_connection(last_stream_id=self.last_stream_id)
        self._hang_up()

    def _hang_up(self) -> None:
        """Send what h2 queued (its GOAWAY), cancel every request, close."""
        self.write_out()
        self.closed = True
        self._watch_time()
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.lost()
        self.transport.loseConnection()

    def write_out(self) -> None:
        """One write for all the frames h2 has ready: each write is a tunnel frame."""
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
        if self.draining and not self.streams and not self.closed:
            self.closed = True
            self.transport.loseConnection()
        self._watch_time()

    def _watch_time(self) -> None:
        """Time what kubectl owes: a header block begun (its head deadline,
        not moved by progress), or, with no request open, a next request
        (the idle timeout, not moved by PINGs or other frames)."""
        head_due = not self.closed and self.guard.header_block_open
        idle_due = not self.closed and not head_due and not self.streams
        limits, reactor = self.caller.stream.limits, self.caller.stream.reactor
        if head_due and self._head_timer is None:
            self._head_timer = reactor.callLater(limits.read_header_timeout, self._head_too_slow)
        elif not head_due and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if idle_due and self._idle_timer is None:
            self._idle_timer = reactor.callLater(limits.idle_timeout, self._idle)
        elif not idle_due and self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle(self) -> None:
        """No request for ``idle_timeout``: GOAWAY NO_ERROR (kubectl opens a
        new connection for its next request) and close. Not audited: no
        request was cut."""
        self._idle_timer = None
        log.debug("idle HTTP/2 connection closed user={user}", user=self.caller.identity.username)
        self._close_with(ErrorCodes.NO_ERROR)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        seconds = self.caller.stream.limits.read_header_timeout
        self._refuse(408, ErrorCodes.PROTOCOL_ERROR,
                     f"HTTP/2: the request head did not arrive within {seconds:g} s")

    def _refuse(self, code: int, error_code: ErrorCodes, reason: str) -> None:
        """End the connection for kubectl's fault: audited as a request cut
        short (its method and path are in a header block h2 has not
        decoded), then GOAWAY with ``error_code`` and ``reason``."""
        self.caller.cut_short(code, reason)
        self._close_with(error_code, reason.encode("ascii", "replace"))

    def _close_with(self, error_code: ErrorCodes, debug: bytes = b"") -> None:
        try:
            self.h2.close_connection(error_code=error_code, additional_data=debug or None,
                                     last_stream_id=self.last_stream_id)
        except h2.exceptions.ProtocolError:
            pass  # h2 has ended the connection already
        self._hang_up()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        for stream in list(self.streams.values()):
            stream.flush()
        self.write_out()

    # -- h2 events -------------------------------------------------------------

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        if self.draining:  # opened after our GOAWAY: kubectl may retry it on another connection
            self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.last_stream_id = max(self.last_stream_id, event.stream_id)
        stream = self.streams[event.stream_id] = RequestStream(self, event.stream_id)
        try:
            method, path, authority, headers = request_parts(event.headers, has_body=event.stream_ended is None)
        except NotForwarded as e:
            self.caller.refused_unparsed(e.code, f"HTTP/2: {e.message}")
            stream.respond_status(KubeStatus(e.code, e.message, e.reason))
            return
        request = self.caller.canonical(stream, method, path, authority, headers)
        if request is not None:
            stream.begin(request)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:  # answered already, or refused: nothing more goes upstream
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        else:
            stream.body(event.data, event.flow_controlled_length)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_ended()

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            stream.lost()

    def _window_updated(self, event) -> None:
        """A window grew: the stream's (``stream_id``), or every stream's."""
        stream_id = getattr(event, "stream_id", 0)
        for stream in list(self.streams.values()) if not stream_id else [self.streams.get(stream_id)]:
            if stream is not None:
                stream.flush()

    _handlers = {
        h2.events.RequestReceived: _request_received,
        h2.events.DataReceived: _data_received,
        h2.events.StreamEnded: _stream_ended,
        h2.events.StreamReset: _stream_reset,
        h2.events.WindowUpdated: _window_updated,
        h2.events.RemoteSettingsChanged: _window_updated,  # the initial window may have grown
    }


@implementer(IPushProducer)
class _TunnelThrottle:
    """The tunnel stream's producer: pauses, never stops, the h2 connection
    (it is closed by its protocol, not by the transport's producer)."""

    def __init__(self, connection: KubeHTTP2Connection) -> None:
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.set_paused(True)

    def resumeProducing(self) -> None:
        self._connection.set_paused(False)

    def stopProducing(self) -> None:
        """Closing is decided by the protocols."""


@implementer(IPushProducer)
class RequestStream:
    """One h2 stream: one kubectl request, kubectl's side of its upstream
    exchange (the `Downstream` of kube/upstream.py). It is the producer the
    API server connection pauses: a paused stream holds back the
    WINDOW_UPDATEs that let kubectl send more of the request body."""

    passes_framing = False

    def __init__(self, connection: KubeHTTP2Connection, stream_id: int) -> None:
        self.connection = connection
        self.caller = connection.caller
        self.stream_id = stream_id
        self.upstream: Upstream | None = None
        self.closed = False
        self.response_started = False
        self._held: HeldRequest | None = None
        #: Body bytes that arrived before the request was on its way upstream.
        self._early: list[bytes] = []
        self._forwarding = False
        self._request_ended = False
        #: Body bytes received but not yet acknowledged to kubectl.
        self._unacknowledged = 0
        self._acks_held = False
        #: Response bytes waiting for kubectl's window.
        self._out = bytearray()
        self._end = False
        self._upstream_transport = None
        self._upstream_paused = False

    # -- the request, from kubectl ----------------------------------------------

    def begin(self, request: CanonicalRequest) -> None:
        """Forward now, or once a create's body (holding the name) is read."""
        if request.names_object_in_body:
            self._held = self.caller.hold(request)
        else:
            self._forward(request, None)

    def _forward(self, request: CanonicalRequest, held: HeldRequest | None) -> None:
        d = Deferred.fromCoroutine(self._start(request, held))
        d.addErrback(self._internal_error)

    async def _start(self, request: CanonicalRequest, held: HeldRequest | None) -> None:
        await self.caller.forward(self, request, held)
        self._forwarding = True
        early, self._early = self._early, []
        if self.upstream is not None:
            for data in early:
                self.upstream.request_data(data)
            if self._request_ended:
                self.upstream.request_done()
        self._acknowledge()

    def body(self, data: bytes, flow_controlled_length: int) -> None:
        self._unacknowledged += flow_controlled_length
        if self._held is not None:
            self._held.add(data)  # bounded: acknowledged at once
        elif not self._forwarding:
            self._early.append(data)
            return
        elif self.upstream is not None:
            self.upstream.request_data(data)
        self._acknowledge()

    def request_ended(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._forward(held.request, held)
        elif not self._forwarding:
            self._request_ended = True
        elif self.upstream is not None:
            self.upstream.request_done()

    def _acknowledge(self) -> None:
        if self._unacknowledged and not self._acks_held and not self.connection.closed:
            acknowledged, self._unacknowledged = self._unacknowledged, 0
            self.connection.h2.acknowledge_received_data(acknowledged, self.stream_id)
            self.connection.write_out()

    # IPushProducer, for the API server connection's transport.
    def pauseProducing(self) -> None:
        self._acks_held = True

    def resumeProducing(self) -> None:
        self._acks_held = False
        self._acknowledge()

    def stopProducing(self) -> None:
        """The exchange ends the stream, not the API server's transport."""

    # -- the response (the Downstream interface) --------------------------------

    def send(self, *events) -> None:
        if self.closed:
            return
        for event in events:
            if type(event) is h11.Response:
                self.response_started = True
                self._guarded(self.connection.h2.send_headers, self.stream_id, [
                    (b":status", b"%d" % event.status_code), *[
                        (name, value) for name, value in event.headers if name not in _CONNECTION_HEADERS]])
            elif type(event) is h11.Data:
                self._out += event.data
            elif type(event) is h11.EndOfMessage:
                self._end = True
        self.flush()

    def flush(self) -> None:
        """Send what kubectl's windows allow; pause the API server
        connection while anything waits or the tunnel stream is full."""
        self._guarded(self._flush)
        self.connection.write_out()

    def _guarded(self, send, *args) -> None:
        """h2 refuses to send on a stream or connection it has closed:
        that request is over, and its API server connection with it."""
        if self.closed:
            return
        try:
            send(*args)
        except h2.exceptions.ProtocolError as e:
            log.info("kubectl's HTTP/2 stream is gone stream={stream} error={error}", stream=self.stream_id, error=e)
            self.connection.streams.pop(self.stream_id, None)
            self.lost()

    def _flush(self) -> None:
        h2conn, out = self.connection.h2, self._out
        while out:
            size = min(h2conn.local_flow_control_window(self.stream_id), h2conn.max_outbound_frame_size, len(out))
            if size <= 0:
                break
            chunk = bytes(out[:size])
            del out[:size]
            h2conn.send_data(self.stream_id, chunk)
        if self._end and not out:
            h2conn.end_stream(self.stream_id)
            self.connection.streams.pop(self.stream_id, None)
            self._close()
        else:
            self._pause_upstream(bool(out) or self.connection.paused)

    def _pause_upstream(self, pause: bool) -> None:
        if self._upstream_transport is None or pause == self._upstream_paused:
            return
        self._upstream_paused = pause
        if pause:
            self._upstream_transport.pauseProducing()
        else:
            self._upstream_transport.resumeProducing()

    def respond_status(self, status: KubeStatus) -> None:
        if self.response_started:
            self.abort()
            return
        self.send(*status.h11_events())

    def throttle(self, upstream_transport) -> None:
        self._upstream_transport, self._upstream_paused = upstream_transport, False
        upstream_transport.registerProducer(self, True)
        self.flush()

    def unthrottle(self) -> None:
        """The API server connection is given back or closed: never touch it again."""
        self._upstream_transport = None
        self._upstream_paused = False
        self.resumeProducing()

    def abort(self) -> None:
        """kubectl sees the stream reset: its response cannot be completed."""
        self._guarded(self.connection.h2.reset_stream, self.stream_id, ErrorCodes.INTERNAL_ERROR)
        if not self.closed:
            self.connection.streams.pop(self.stream_id, None)
            self._close()
        self.connection.write_out()

    def upstream_finished(self) -> None:
        self.upstream = None

    def lost(self) -> None:
        """kubectl reset this stream, or the tunnel stream is gone: cancel the exchange."""
        if self.closed:
            return
        self._close()
        if self.upstream is not None:
            self.upstream.downstream_lost()

    def _close(self) -> None:
        self.closed = True
        self._out.clear()
        self._early.clear()
        self._acks_held = False
        self._acknowledge()

    def _internal_error(self, failure) -> None:
        log.failure("kube request failed user={user}", failure, user=self.caller.identity.username)
        self.abort()
