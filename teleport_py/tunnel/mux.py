"""
Sans-IO state machine for one tunnel connection: streams, flow-control
windows, pings and graceful shutdown (docs/tunnel.md).

Calls and received bytes go in; bytes to send come out of data_to_send()
and things the application must react to come out of next_events().
Nothing here touches a socket or a clock, so every rule is unit-testable.
"""

from __future__ import annotations

import json
import os
from collections import deque

import attrs

from teleport_py.tunnel import frames
from teleport_py.tunnel.frames import TunnelProtocolError

#: Each stream's receive window. Bulk transfers (exec output, LISTs) crossed
#: a 256 KiB window in a few milliseconds and then waited a round trip
#: through two busy reactors for the grant: 1 MiB moved 200 MiB exec output
#: 15-20 % faster (bench/exec_throughput.py, 2 runs each, docs/benchmarks.md).
#: It is also what one stalled reader can hold buffered (Teleport's SSH
#: channels allow 2 MiB).
DEFAULT_WINDOW = 1024 * 1024

#: The largest DATA payload we accept (HELLO tells the peer). Every frame is
#: an event, a dispatch and a write down the line in Python at both ends, so
#: a bulk transfer's cost follows the number of frames: 256 KiB frames are a
#: quarter of a stream's window and what one TLS read delivers
#: (``tls_transport.READ_SIZE``). The decoder holds at most one frame.
DEFAULT_MAX_FRAME_PAYLOAD = 256 * 1024


class StreamRejected(Exception):
    """The peer refused to open a stream; args[0] is its reason."""


class TunnelClosed(Exception):
    """The tunnel is gone or going away, so no stream can be opened."""


@attrs.frozen
class HelloReceived:
    version: int


@attrs.frozen
class StreamOpened:
    """The peer opened a stream; answer with accept_stream or reject_stream."""

    stream_id: int
    kind: str
    metadata: dict


@attrs.frozen
class StreamAccepted:
    stream_id: int


@attrs.frozen
class OpenRejected:
    stream_id: int
    reason: str


@attrs.frozen
class DataReceived:
    """Bytes for the application; it must acknowledge() them once consumed."""

    stream_id: int
    data: bytes


@attrs.frozen
class StreamEnded:
    """The peer sent FIN: it will write no more on this stream."""

    stream_id: int


@attrs.frozen
class StreamReset:
    """The stream died abruptly, reset by the peer or by us for a peer fault."""

    stream_id: int
    reason: str


@attrs.frozen
class SendBufferDrained:
    """Data that had to wait for window has all left: producers may resume."""

    stream_id: int


@attrs.frozen
class StreamClosed:
    """Both directions finished cleanly; the stream id is retired."""

    stream_id: int


@attrs.frozen
class PingAcknowledged:
    opaque: bytes


@attrs.frozen
class GoAwayReceived:
    reason: str


Event = (
    HelloReceived
    | StreamOpened
    | StreamAccepted
    | OpenRejected
    | DataReceived
    | StreamEnded
    | StreamReset
    | SendBufferDrained
    | StreamClosed
    | PingAcknowledged
    | GoAwayReceived
)


@attrs.define
class _Stream:
    accepted: bool
    send_window: int
    receive_window: int
    unacknowledged: int = 0
    outbox: bytearray = attrs.field(factory=bytearray)
    fin_requested: bool = False
    fin_sent: bool = False
    fin_received: bool = False
    stalled: bool = False


def encode_metadata(metadata: dict) -> bytes:
    """Metadata travels as compact JSON, at most 64 KiB."""
    if not isinstance(metadata, dict):
        raise ValueError("stream metadata must be a JSON object")
    encoded = json.dumps(metadata, separators=(",", ":")).encode("utf-8")
    if len(encoded) > frames.MAX_METADATA_LENGTH:
        raise ValueError("stream metadata larger than 64 KiB")
    return encoded


def _decode_metadata(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Multiplexer:
    """
    One side of a tunnel connection. The initiator (the agent, which dialled
    out) numbers its streams odd, the other side even, so both may open
    streams without coordination.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        initial_window: int = DEFAULT_WINDOW,
        max_frame_payload: int = DEFAULT_MAX_FRAME_PAYLOAD,
    ) -> None:
        if not 0 < initial_window <= frames.MAX_WINDOW:
            raise ValueError("initial_window out of range")
        if not 0 < max_frame_payload <= 16 * 1024 * 1024:
            raise ValueError("max_frame_payload out of range")
        self._initial_window = initial_window
        self._max_frame_payload = max_frame_payload
        self._decoder = frames.FrameDecoder(max_frame_payload)
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1 if initiator else 2
        self._last_peer_stream_id = 0
        self._peer: frames.Hello | None = None
        self._outgoing: list[bytes] = []
        self._events: deque[Event] = deque()
        self._going_away = False
        self._peer_going_away = False
        self._send(
            frames.Hello(
                frames.PROTOCOL_VERSION,
                frames.PROTOCOL_VERSION,
                initial_window,
                max_frame_payload,
            )
        )

    # --- outputs -----------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued, joined once: DATA payloads are queued as the
        caller's own bytes objects, not copied frame by frame."""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def next_events(self) -> list[Event]:
        events = list(self._events)
        self._events.clear()
        return events

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def accepting_streams(self) -> bool:
        return not (self._going_away or self._peer_going_away)

    @property
    def going_away(self) -> bool:
        """We sent GOAWAY."""
        return self._going_away

    def buffered(self, stream_id: int) -> int:
        """Bytes written on the stream but still waiting for window."""
        stream = self._streams.get(stream_id)
        return len(stream.outbox) if stream else 0

    def sendable(self, stream_id: int) -> int:
        """Bytes the stream could send now without waiting for window."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.accepted or stream.fin_requested:
            return 0
        return max(0, stream.send_window - len(stream.outbox))

    # --- calls from the application ----------------------------------------

    def open_stream(self, kind: str, metadata: dict) -> int:
        if not self.accepting_streams:
            raise TunnelClosed("tunnel is going away")
        if self._next_stream_id > frames.MAX_STREAM_ID:
            raise TunnelClosed("stream ids exhausted")
        stream_id = self._next_stream_id
        self._send(frames.Open(stream_id, kind, encode_metadata(metadata)))
        self._next_stream_id += 2
        # Our send window is the peer's receive window, known once its HELLO
        # arrives; it always has by the time the peer accepts.
        self._streams[stream_id] = _Stream(False, 0, self._initial_window)
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """No-op if the peer already reset the stream (its events follow)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.accepted = True
            self._send(frames.Accept(stream_id))

    def reject_stream(self, stream_id: int, reason: str) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._send(frames.Reject(stream_id, reason))

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Queue bytes; they leave as fast as the peer's window allows."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.fin_requested or not data:
            return
        if not stream.outbox and stream.accepted and type(data) is bytes:
            # Nothing waits before it: frame the caller's (immutable) bytes
            # directly; only what the window holds back is copied.
            data = data[self._frame(stream_id, stream, data, fin=False) :]
        stream.outbox += data
        self._flush(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        """Half-close: FIN goes out after everything already queued."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.fin_requested:
            return
        stream.fin_requested = True
        self._flush(stream_id, stream)

    def reset_stream(self, stream_id: int, reason: str) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._send(frames.Reset(stream_id, reason))

    def acknowledge(self, stream_id: int, count: int) -> None:
        """
        The application consumed count bytes: grant them back to the peer.
        Grants are batched to half a window so small reads do not each cost
        a WINDOW_UPDATE frame.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.fin_received:
            return
        stream.unacknowledged += count
        if stream.unacknowledged >= self._initial_window // 2:
            stream.receive_window += stream.unacknowledged
            self._send(frames.WindowUpdate(stream_id, stream.unacknowledged))
            stream.unacknowledged = 0

    def ping(self) -> None:
        self._send(frames.Ping(os.urandom(8)))

    def go_away(self, reason: str = "") -> None:
        if not self._going_away:
            self._going_away = True
            self._send(frames.GoAway(reason))

    # --- bytes from the network --------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Raises TunnelProtocolError when the connection must be dropped."""
        for frame in self._decoder.feed(data):
            self._handle(frame)

    def _handle(self, frame: frames.Frame) -> None:
        if self._peer is None:
            if not isinstance(frame, frames.Hello):
                raise TunnelProtocolError("first frame must be HELLO")
            self._handle_hello(frame)
            return
        match frame:
            case frames.Hello():
                raise TunnelProtocolError("duplicate HELLO")
            case frames.Open():
                self._handle_open(frame)
            case frames.Accept():
                stream = self._own_pending(frame.stream_id)
                if stream is not None:
                    stream.accepted = True
                    stream.send_window = self._peer.initial_window
                    self._events.append(StreamAccepted(frame.stream_id))
                    self._flush(frame.stream_id, stream)
            case frames.Reject():
                if self._own_pending(frame.stream_id) is not None:
                    del self._streams[frame.stream_id]
                    self._events.append(OpenRejected(frame.stream_id, frame.reason))
            case frames.Data():
                self._handle_data(frame)
            case frames.WindowUpdate():
                stream = self._live(frame.stream_id)
                if stream is not None and stream.accepted:
                    if stream.send_window + frame.increment > frames.MAX_WINDOW:
                        self._reset_for_fault(frame.stream_id, "window overflow")
                    else:
                        stream.send_window += frame.increment
                        self._flush(frame.stream_id, stream)
            case frames.Reset():
                if self._live(frame.stream_id) is not None:
                    del self._streams[frame.stream_id]
                    self._events.append(StreamReset(frame.stream_id, frame.reason))
            case frames.Ping():
                if frame.ack:
                    self._events.append(PingAcknowledged(frame.opaque))
                else:
                    self._send(frames.Ping(frame.opaque, ack=True))
            case frames.GoAway():
                if not self._peer_going_away:
                    self._peer_going_away = True
                    self._events.append(GoAwayReceived(frame.reason))

    def _handle_hello(self, hello: frames.Hello) -> None:
        version = min(hello.max_version, frames.PROTOCOL_VERSION)
        if version < max(hello.min_version, frames.PROTOCOL_VERSION):
            raise TunnelProtocolError(
                f"no common version: peer speaks {hello.min_version}..{hello.max_version}"
            )
        if not 0 < hello.initial_window <= frames.MAX_WINDOW:
            raise TunnelProtocolError("bad initial window")
        if hello.max_frame_payload == 0:
            raise TunnelProtocolError("bad max frame payload")
        self._peer = hello
        self._events.append(HelloReceived(version))

    def _handle_open(self, frame: frames.Open) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 == self._next_stream_id % 2:
            raise TunnelProtocolError("peer opened a stream with our parity")
        if stream_id <= self._last_peer_stream_id:
            raise TunnelProtocolError("peer reused a stream id")
        self._last_peer_stream_id = stream_id
        if not self.accepting_streams:
            self._send(frames.Reject(stream_id, "tunnel is going away"))
            return
        metadata = _decode_metadata(frame.metadata)
        if metadata is None:
            self._send(frames.Reject(stream_id, "metadata is not a JSON object"))
            return
        self._streams[stream_id] = _Stream(
            False, self._peer.initial_window, self._initial_window
        )
        self._events.append(StreamOpened(stream_id, frame.kind, metadata))

    def _handle_data(self, frame: frames.Data) -> None:
        stream = self._live(frame.stream_id)
        if stream is None:
            return
        if not stream.accepted or stream.fin_received:
            self._reset_for_fault(frame.stream_id, "data on a closed direction")
            return
        if len(frame.data) > stream.receive_window:
            self._reset_for_fault(frame.stream_id, "flow-control window exceeded")
            return
        stream.receive_window -= len(frame.data)
        if frame.data:
            self._events.append(DataReceived(frame.stream_id, frame.data))
        if frame.fin:
            stream.fin_received = True
            self._events.append(StreamEnded(frame.stream_id))
            self._retire_if_done(frame.stream_id, stream)

    # --- helpers -------------------------------------------------------------

    def _live(self, stream_id: int) -> _Stream | None:
        """
        The stream, or None for one already finished (frames may still be in
        flight for it). An id never opened is a protocol error.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            mine = stream_id % 2 == self._next_stream_id % 2
            ever_opened = (
                stream_id < self._next_stream_id
                if mine
                else stream_id <= self._last_peer_stream_id
            )
            if not ever_opened:
                raise TunnelProtocolError(f"frame for unknown stream {stream_id}")
        return stream

    def _own_pending(self, stream_id: int) -> _Stream | None:
        """A stream we opened that awaits ACCEPT/REJECT; anything else is a fault."""
        stream = self._live(stream_id)
        if stream is not None and (stream.accepted or stream_id % 2 != self._next_stream_id % 2):
            raise TunnelProtocolError(f"unexpected open answer on stream {stream_id}")
        return stream

    def _reset_for_fault(self, stream_id: int, reason: str) -> None:
        self.reset_stream(stream_id, reason)
        self._events.append(StreamReset(stream_id, reason))

    def _flush(self, stream_id: int, stream: _Stream) -> None:
        if not stream.accepted:
            return
        if stream.outbox and stream.send_window > 0:
            size = min(len(stream.outbox), stream.send_window)
            with memoryview(stream.outbox) as view:
                chunk = view[:size].tobytes()
            del stream.outbox[:size]
            self._frame(stream_id, stream, chunk, fin=stream.fin_requested and not stream.outbox)
        if stream.stalled and not stream.outbox:
            self._events.append(SendBufferDrained(stream_id))
        stream.stalled = bool(stream.outbox)
        if stream.fin_requested and not stream.fin_sent and not stream.outbox:
            stream.fin_sent = True
            self._send(frames.Data(stream_id, b"", fin=True))
        self._retire_if_done(stream_id, stream)

    def _frame(self, stream_id: int, stream: _Stream, data: bytes, *, fin: bool) -> int:
        """Queue DATA frames for the start of ``data``, as far as the window
        allows (FIN on the last one if ``fin`` and all of it went); returns
        how many bytes went. The frames refer to ``data`` without copying it."""
        limit = self._peer.max_frame_payload
        view = memoryview(data)
        sent = 0
        while sent < len(data) and stream.send_window > 0:
            size = min(len(data) - sent, stream.send_window, limit)
            last = fin and sent + size == len(data)
            self._outgoing.append(frames.data_header(stream_id, size, fin=last))
            self._outgoing.append(data if size == len(data) else view[sent : sent + size])
            sent += size
            stream.send_window -= size
            stream.fin_sent = last
        return sent

    def _retire_if_done(self, stream_id: int, stream: _Stream) -> None:
        if stream.fin_sent and stream.fin_received:
            del self._streams[stream_id]
            self._events.append(StreamClosed(stream_id))

    def _send(self, frame: frames.Frame) -> None:
        self._outgoing.append(frames.encode(frame))
