"""
Passive observers of upgraded kube streaming sessions, for recording.

The relay copies bytes unchanged both ways and hands each direction's bytes
to a `SessionObserver`, which turns them into session events: what the user
typed, what the container printed, terminal resizes, the exit status,
port-forward traffic. Bytes the observer cannot account for raise
`RemoteCommandError` (fail closed: the relay ends that session), and every
buffer is bounded, since SPDY has no flow control of its own.
"""

import base64
import binascii
import json
from collections.abc import Callable

import attrs

from teleport_py import spdy, websocket
from teleport_py.remotecommand.status import (
    MAX_STATUS_SIZE,
    ExitStatus,
    RemoteCommandError,
    parse_error_text,
    parse_status,
)

CLIENT = "client"
SERVER = "server"

#: Streams open at once on one SPDY session; kubectl uses at most five for
#: exec and two per forwarded connection.
MAX_OPEN_STREAMS = 1024
#: An incomplete resize object larger than this is not a resize.
MAX_RESIZE_PENDING = 4096


@attrs.frozen
class Stdin:
    data: bytes


@attrs.frozen
class Stdout:
    data: bytes


@attrs.frozen
class Stderr:
    data: bytes


@attrs.frozen
class Resize:
    width: int
    height: int


@attrs.frozen
class Exit:
    code: int
    message: str


@attrs.frozen
class StreamClosed:
    """An exec stream is finished (SPDY) or half-closed (WebSocket v5)."""
    stream_type: str


@attrs.frozen
class PortForwardOpened:
    request_id: str
    port: int


@attrs.frozen
class PortForwardData:
    request_id: str
    port: int
    direction: str  # "in": towards the pod, "out": from the pod
    data: bytes


@attrs.frozen
class PortForwardError:
    request_id: str
    port: int
    message: str


@attrs.frozen
class PortForwardClosed:
    request_id: str
    port: int


Event = (Stdin | Stdout | Stderr | Resize | Exit | StreamClosed
         | PortForwardOpened | PortForwardData | PortForwardError
         | PortForwardClosed)


class _JsonObjects:
    """Splits a byte stream into top-level JSON objects, wherever frames cut
    it, as Go's json.Decoder reads kubectl's resize stream."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, data: bytes) -> list[dict]:
        objects = []
        for byte in data:
            if self._depth == 0:
                if byte in b" \t\r\n":
                    continue
                if byte != ord("{"):
                    raise RemoteCommandError("resize stream is not JSON objects")
            self._pending.append(byte)
            if len(self._pending) > MAX_RESIZE_PENDING:
                raise RemoteCommandError("resize event too large")
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == ord("\\"):
                    self._escaped = True
                elif byte == ord('"'):
                    self._in_string = False
            elif byte == ord('"'):
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
            elif byte in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    objects.append(self._decode())
        return objects

    def _decode(self) -> dict:
        text, self._pending = bytes(self._pending), bytearray()
        try:
            value = json.loads(text)
        except ValueError as e:
            raise RemoteCommandError("invalid resize JSON") from e
        if not isinstance(value, dict):
            raise RemoteCommandError("resize event is not an object")
        return value


def _resize(value: dict) -> Resize:
    """Go decodes {"Width", "Height"} into uint16s, matching keys
    case-insensitively."""
    fields = {key.lower(): number for key, number in value.items()}
    size = [fields.get("width", 0), fields.get("height", 0)]
    if not all(type(n) is int and 0 <= n <= 0xFFFF for n in size):
        raise RemoteCommandError("resize dimensions must be 16-bit integers")
    return Resize(*size)


class _Buffer:
    """An error-stream buffer: the status arrives in pieces, is bounded."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_STATUS_SIZE:
            raise RemoteCommandError("error stream too large")


@attrs.define
class _SpdyStream:
    stream_type: str
    port: int | None = None
    request_id: str | None = None
    fin: set[str] = attrs.Factory(set)
    error: _Buffer = attrs.Factory(_Buffer)
    resize: _JsonObjects = attrs.Factory(_JsonObjects)


class _SpdySession:
    """Tracks the streams of a SPDY session seen from both sides; subclasses
    say what each stream type means."""

    stream_types: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._parsers = {CLIENT: spdy.FrameParser(), SERVER: spdy.FrameParser()}
        self._streams: dict[int, _SpdyStream] = {}
        self._last_stream_id = 0

    def feed(self, direction: str, data: bytes) -> list[Event]:
        events = []
        for frame in self._parsers[direction].feed(data):
            events += self._frame(direction, frame)
        return events

    def finish(self) -> list[Event]:
        """The connection ended: every stream still open ends with it."""
        events = []
        for stream_id in sorted(self._streams):
            events += self._closed(self._streams.pop(stream_id))
        return events

    def _frame(self, direction: str, frame: spdy.Frame) -> list[Event]:
        match frame:
            case spdy.SynStream(stream_id, headers, fin):
                events = self._opened(direction, stream_id, headers)
                if fin:
                    self._streams[stream_id].fin.add(CLIENT)
                return events
            case spdy.Data(stream_id, data, fin):
                stream = self._stream(stream_id)
                if stream is None:
                    return []
                if direction in stream.fin:
                    raise RemoteCommandError("data after FIN")
                events = self._data(stream, direction, data) if data else []
                if fin:
                    stream.fin.add(direction)
                    events += self._half_closed(stream, direction)
                    if len(stream.fin) == 2:
                        events += self._closed(self._streams.pop(stream_id))
                return events
            case spdy.RstStream(stream_id):
                if self._stream(stream_id) is None:
                    return []
                return self._closed(self._streams.pop(stream_id))
            case spdy.SynReply(stream_id) | spdy.Headers(stream_id):
                self._stream(stream_id)
        return []

    def _opened(self, direction: str, stream_id: int,
                headers: spdy.HeaderMap) -> list[Event]:
        if direction != CLIENT or stream_id % 2 == 0:
            raise RemoteCommandError("only the client creates streams")
        if stream_id <= self._last_stream_id:
            raise RemoteCommandError("stream ids must increase")
        if len(self._streams) >= MAX_OPEN_STREAMS:
            raise RemoteCommandError("too many open streams")
        stream_type = _single(headers, "streamtype")
        if stream_type not in self.stream_types:
            raise RemoteCommandError(f"unexpected stream type {stream_type!r}")
        self._last_stream_id = stream_id
        stream = _SpdyStream(stream_type)
        self._streams[stream_id] = stream
        return self._created(stream, headers)

    def _stream(self, stream_id: int) -> _SpdyStream | None:
        """The open stream, or None for one that has already finished (its
        peer may not know yet)."""
        if stream_id in self._streams:
            return self._streams[stream_id]
        if stream_id % 2 == 1 and stream_id <= self._last_stream_id:
            return None
        raise RemoteCommandError(f"frame for unknown stream {stream_id}")

    def _created(self, stream: _SpdyStream, headers: spdy.HeaderMap) -> list[Event]:
        return []

    def _half_closed(self, stream: _SpdyStream, direction: str) -> list[Event]:
        return []

    def _data(self, stream: _SpdyStream, direction: str, data: bytes) -> list[Event]:
        raise NotImplementedError

    def _closed(self, stream: _SpdyStream) -> list[Event]:
        raise NotImplementedError


def _single(headers: spdy.HeaderMap, name: str) -> str:
    values = headers.get(name)
    if values is None or len(values) != 1:
        raise RemoteCommandError(f"stream needs exactly one {name!r} header")
    return values[0]


def _wrong_direction(what: str) -> RemoteCommandError:
    return RemoteCommandError(f"{what} sent the wrong way")


class _SpdyExec(_SpdySession):
    stream_types = frozenset({"error", "stdin", "stdout", "stderr", "resize"})

    def __init__(self, parse_exit: Callable[[bytes], ExitStatus]) -> None:
        super().__init__()
        self._parse_exit = parse_exit
        self._exited = False

    def _data(self, stream, direction, data):
        match stream.stream_type, direction:
            case "stdin", "client":
                return [Stdin(data)]
            case "stdout", "server":
                return [Stdout(data)]
            case "stderr", "server":
                return [Stderr(data)]
            case "resize", "client":
                return [_resize(value) for value in stream.resize.feed(data)]
            case "error", "server":
                stream.error.add(data)
                return []
        raise _wrong_direction(f"{stream.stream_type} data")

    def _half_closed(self, stream, direction):
        if stream.stream_type == "error" and direction == SERVER:
            return self._exit(stream)
        return []

    def _closed(self, stream):
        """A reset or dropped error stream tells the exit status only if the
        status was written; only a FIN makes an empty one mean success."""
        events = []
        if stream.stream_type == "error" and stream.error.data:
            events = self._exit(stream)
        return events + [StreamClosed(stream.stream_type)]

    def _exit(self, stream: _SpdyStream) -> list[Event]:
        if self._exited:
            return []
        self._exited = True
        status = self._parse_exit(bytes(stream.error.data))
        return [Exit(status.code, status.message)]


class _SpdyPortForward(_SpdySession):
    stream_types = frozenset({"error", "data"})

    def __init__(self) -> None:
        super().__init__()
        self._data_streams: set[str] = set()

    def _created(self, stream, headers):
        port = _single(headers, "port")
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise RemoteCommandError("invalid port header")
        stream.port, stream.request_id = int(port), _single(headers, "requestid")
        if stream.stream_type != "data":
            return []
        if stream.request_id in self._data_streams:
            raise RemoteCommandError("second data stream for one request")
        self._data_streams.add(stream.request_id)
        return [PortForwardOpened(stream.request_id, stream.port)]

    def _data(self, stream, direction, data):
        if stream.stream_type == "data":
            return [PortForwardData(stream.request_id, stream.port,
                                    "in" if direction == CLIENT else "out", data)]
        if direction == CLIENT:
            raise _wrong_direction("port-forward error text")
        stream.error.add(data)
        return []

    def _closed(self, stream):
        if stream.stream_type == "data":
            self._data_streams.discard(stream.request_id)
            return [PortForwardClosed(stream.request_id, stream.port)]
        if stream.error.data:
            message = stream.error.data.decode("utf-8", errors="replace")
            return [PortForwardError(stream.request_id, stream.port, message)]
        return []


_CHANNELS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "error", 4: "resize"}
_CLOSE_CHANNEL = 0xFF


class _WebSocketSession:
    """Frames both ways, closes, and what a relay may never see: extension
    bits, frames after a Close."""

    def __init__(self) -> None:
        self._parsers = {CLIENT: websocket.FrameParser(expect_masked=True),
                         SERVER: websocket.FrameParser(expect_masked=False)}
        self._closed: set[str] = set()

    def feed(self, direction: str, data: bytes) -> list[Event]:
        events = []
        for frame in self._parsers[direction].feed(data):
            if frame.rsv:
                raise RemoteCommandError("no WebSocket extension was negotiated")
            if direction in self._closed:
                raise RemoteCommandError("frame after Close")
            if frame.opcode == websocket.OP_CLOSE:
                websocket.parse_close(frame.payload)
                self._closed.add(direction)
            events += self._frame(direction, frame)
        return events

    def _frame(self, direction: str, frame: websocket.WsFrame) -> list[Event]:
        raise NotImplementedError


class _WebSocketChannels(_WebSocketSession):
    """exec/attach over v1/v4/v5 channel protocols, binary or base64."""

    def __init__(self, parse_exit: Callable[[bytes], ExitStatus],
                 base64_text: bool, close_messages: bool) -> None:
        super().__init__()
        self._assemblers = {CLIENT: websocket.MessageAssembler(),
                            SERVER: websocket.MessageAssembler()}
        self._parse_exit = parse_exit
        self._base64 = base64_text
        self._close_messages = close_messages
        self._error = _Buffer()
        self._resize = _JsonObjects()
        self._exited = False

    def finish(self) -> list[Event]:
        return self._exit() if self._error.data else []

    def _exit(self) -> list[Event]:
        if self._exited:
            return []
        self._exited = True
        status = self._parse_exit(bytes(self._error.data))
        return [Exit(status.code, status.message)]

    def _frame(self, direction, frame):
        events = []
        for message in self._assemblers[direction].feed(frame):
            if message.opcode == websocket.OP_CLOSE and direction == SERVER:
                code, _ = websocket.parse_close(message.payload)
                if self._error.data or code == websocket.CLOSE_NORMAL:
                    events += self._exit()
            elif not websocket.is_control(message.opcode):
                events += self._message(direction, message)
        return events

    def _message(self, direction: str, message: websocket.Message) -> list[Event]:
        expected = websocket.OP_TEXT if self._base64 else websocket.OP_BINARY
        if message.opcode != expected:
            raise RemoteCommandError("wrong WebSocket message type")
        if not message.payload:
            return []
        channel, payload = self._decode(message.payload)
        if channel == _CLOSE_CHANNEL and self._close_messages:
            if len(payload) != 1 or payload[0] not in _CHANNELS:
                raise RemoteCommandError("invalid channel close message")
            return [StreamClosed(_CHANNELS[payload[0]])]
        if channel not in _CHANNELS:
            raise RemoteCommandError(f"unknown channel {channel}")
        if not payload:
            return []  # the server's initial message, or a keep-alive
        match _CHANNELS[channel], direction:
            case "stdin", "client":
                return [Stdin(payload)]
            case "stdout", "server":
                return [Stdout(payload)]
            case "stderr", "server":
                return [Stderr(payload)]
            case "resize", "client":
                return [_resize(value) for value in self._resize.feed(payload)]
            case "error", "server":
                self._error.add(payload)
                return []
        raise _wrong_direction(f"channel {channel} data")

    def _decode(self, payload: bytes) -> tuple[int, bytes]:
        if not self._base64:
            return payload[0], payload[1:]
        try:
            return payload[0] - ord("0"), base64.b64decode(payload[1:], validate=True)
        except binascii.Error as e:
            raise RemoteCommandError("invalid base64 payload") from e


class _WebSocketTunnel(_WebSocketSession):
    """Port-forward as SPDY inside WebSocket: the binary payloads of each
    direction, joined, are a SPDY byte stream; message edges mean nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._spdy = _SpdyPortForward()

    def finish(self) -> list[Event]:
        return self._spdy.finish()

    def _frame(self, direction, frame):
        if websocket.is_control(frame.opcode):
            return []
        if frame.opcode == websocket.OP_TEXT:
            raise RemoteCommandError("text message in a SPDY tunnel")
        return self._spdy.feed(direction, frame.payload)


_SPDY_EXEC_TEXT = {"channel.k8s.io", "v2.channel.k8s.io", "v3.channel.k8s.io"}
_SPDY_EXEC_STATUS = {"v4.channel.k8s.io", "v5.channel.k8s.io"}
_WEBSOCKET_CHANNELS = {
    # protocol: (exit parser, base64 text frames, v5 close messages)
    "channel.k8s.io": (parse_error_text, False, False),
    "base64.channel.k8s.io": (parse_error_text, True, False),
    "v4.channel.k8s.io": (parse_status, False, False),
    "v4.base64.channel.k8s.io": (parse_status, True, False),
    "v5.channel.k8s.io": (parse_status, False, True),
}


def _session(protocol: str, transport: str):
    if transport == "spdy":
        if protocol in _SPDY_EXEC_TEXT:
            return _SpdyExec(parse_error_text)
        if protocol in _SPDY_EXEC_STATUS:
            return _SpdyExec(parse_status)
        if protocol == "portforward.k8s.io":
            return _SpdyPortForward()
    elif transport == "websocket":
        if protocol in _WEBSOCKET_CHANNELS:
            return _WebSocketChannels(*_WEBSOCKET_CHANNELS[protocol])
        if protocol == "SPDY/3.1+portforward.k8s.io":
            return _WebSocketTunnel()
    raise RemoteCommandError(
        f"cannot observe protocol {protocol!r} over {transport!r}")


class SessionObserver:
    """Observes one upgraded connection, both directions.

    protocol: the negotiated X-Stream-Protocol-Version (SPDY) or
    Sec-WebSocket-Protocol (WebSocket); transport: "spdy" or "websocket".
    An unsupported pair raises RemoteCommandError at once, so the relay can
    refuse to carry a session it could not record.
    """

    def __init__(self, protocol: str, transport: str) -> None:
        self._session = _session(protocol, transport)
        self._failed = False

    def feed_client(self, data: bytes) -> list[Event]:
        """Bytes kubectl sent towards the API server."""
        return self._guarded(self._session.feed, CLIENT, data)

    def feed_server(self, data: bytes) -> list[Event]:
        """Bytes the API server sent towards kubectl."""
        return self._guarded(self._session.feed, SERVER, data)

    def finish(self) -> list[Event]:
        """The connection closed: events for whatever was still open,
        including the exit status if the error stream never finished."""
        return self._guarded(self._session.finish)

    def _guarded(self, method, *args) -> list[Event]:
        if self._failed:
            raise RemoteCommandError("session observer already failed")
        try:
            return method(*args)
        except (spdy.SpdyError, websocket.WebSocketError, RemoteCommandError) as e:
            self._failed = True
            raise RemoteCommandError(str(e)) from e
