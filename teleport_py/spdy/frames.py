"""
SPDY/3 framing as Kubernetes (moby/spdystream) uses it: sans-IO.

`FrameParser` turns the bytes of ONE direction of a connection into frames,
whatever way TCP split them; `FrameEncoder` does the reverse. Each owns that
direction's header (de)compressor, because SPDY header compression is one
zlib stream per direction.
"""

import struct

import attrs

from teleport_py.spdy.headers import (
    HeaderCompressor,
    HeaderDecompressor,
    HeaderMap,
    SpdyError,
)

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
#: The 24-bit length field caps every frame's payload at this.
MAX_FRAME_LENGTH = 2**24 - 1

TYPE_SYN_STREAM = 1
TYPE_SYN_REPLY = 2
TYPE_RST_STREAM = 3
TYPE_SETTINGS = 4
TYPE_PING = 6
TYPE_GOAWAY = 7
TYPE_HEADERS = 8
TYPE_WINDOW_UPDATE = 9

RST_PROTOCOL_ERROR = 1
RST_CANCEL = 5
RST_FRAME_TOO_LARGE = 11

_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
_STREAM_ID_MASK = 0x7FFFFFFF


@attrs.frozen
class SynStream:
    stream_id: int
    headers: HeaderMap
    fin: bool = False
    unidirectional: bool = False
    priority: int = 0


@attrs.frozen
class SynReply:
    stream_id: int
    headers: HeaderMap
    fin: bool = False


@attrs.frozen
class RstStream:
    stream_id: int
    status: int


@attrs.frozen
class Settings:
    """entries: (flags, id, value) triples."""
    entries: tuple[tuple[int, int, int], ...] = ()


@attrs.frozen
class Ping:
    id: int


@attrs.frozen
class GoAway:
    last_good_stream_id: int
    status: int = 0


@attrs.frozen
class Headers:
    stream_id: int
    headers: HeaderMap
    fin: bool = False


@attrs.frozen
class WindowUpdate:
    stream_id: int
    delta: int


@attrs.frozen
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


Frame = (SynStream | SynReply | RstStream | Settings | Ping | GoAway
         | Headers | WindowUpdate | Data)


def _stream_id(value: int) -> int:
    stream_id = value & _STREAM_ID_MASK
    if stream_id == 0:
        raise SpdyError("stream id 0 where a stream is required")
    return stream_id


class FrameParser:
    """Parses one direction of a SPDY connection.

    Buffers at most one frame; refuses frames longer than `max_frame_length`
    before buffering them. Frames are read in place and only a frame cut by
    the end of the bytes fed is kept: dropping each frame from the front of a
    buffer moved the rest of a large read once per frame.
    """

    def __init__(self, max_frame_length: int = MAX_FRAME_LENGTH) -> None:
        self._buffer = bytearray()
        self._max_frame_length = max_frame_length
        self._headers = HeaderDecompressor()
        self._failed = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise SpdyError("parser already failed")
        if self._buffer:
            self._buffer += data
            data = self._buffer
        frames = []
        at = 0
        try:
            with memoryview(data) as view:
                while len(view) - at >= 8:
                    word, flags_and_length = _TWO_U32.unpack_from(view, at)
                    length = flags_and_length & 0xFFFFFF
                    if length > self._max_frame_length:
                        raise SpdyError(f"frame of {length} bytes is too large")
                    end = at + 8 + length
                    if len(view) < end:
                        break
                    frames.append(self._frame(word, flags_and_length >> 24, view[at + 8:end].tobytes()))
                    at = end
                if data is not self._buffer:
                    self._buffer = bytearray(view[at:])
        except SpdyError:
            self._failed = True
            raise
        if data is self._buffer:
            del self._buffer[:at]
        return frames

    def _frame(self, word: int, flags: int, payload: bytes) -> Frame:
        fin = bool(flags & FLAG_FIN)
        if not word & 0x80000000:
            return Data(_stream_id(word), payload, fin)
        version, frame_type = (word >> 16) & 0x7FFF, word & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"unsupported SPDY version {version}")
        if frame_type == TYPE_SYN_STREAM:
            stream_id, _, priority = self._fixed(payload, "!IIBx", minimum=True)
            return SynStream(_stream_id(stream_id),
                             self._headers.decompress(payload[10:]), fin,
                             bool(flags & FLAG_UNIDIRECTIONAL), priority >> 5)
        if frame_type in (TYPE_SYN_REPLY, TYPE_HEADERS):
            (stream_id,) = self._fixed(payload, "!I", minimum=True)
            cls = SynReply if frame_type == TYPE_SYN_REPLY else Headers
            return cls(_stream_id(stream_id),
                       self._headers.decompress(payload[4:]), fin)
        if frame_type == TYPE_RST_STREAM:
            stream_id, status = self._fixed(payload, "!II")
            return RstStream(_stream_id(stream_id), status)
        if frame_type == TYPE_SETTINGS:
            return Settings(self._settings(payload))
        if frame_type == TYPE_PING:
            return Ping(*self._fixed(payload, "!I"))
        if frame_type == TYPE_GOAWAY:
            last_good, status = self._fixed(payload, "!II")
            return GoAway(last_good & _STREAM_ID_MASK, status)
        if frame_type == TYPE_WINDOW_UPDATE:
            stream_id, delta = self._fixed(payload, "!II")
            return WindowUpdate(stream_id & _STREAM_ID_MASK, delta & 0x7FFFFFFF)
        raise SpdyError(f"unknown control frame type {frame_type}")

    @staticmethod
    def _fixed(payload: bytes, fmt: str, minimum: bool = False) -> tuple[int, ...]:
        """Unpack a fixed layout; `minimum`: a header block may follow it."""
        size = struct.calcsize(fmt)
        if len(payload) < size if minimum else len(payload) != size:
            raise SpdyError("control frame has the wrong length")
        return struct.unpack_from(fmt, payload)

    @staticmethod
    def _settings(payload: bytes) -> tuple[tuple[int, int, int], ...]:
        if len(payload) < 4:
            raise SpdyError("SETTINGS frame too short")
        (count,) = _U32.unpack_from(payload)
        if len(payload) != 4 + 8 * count:
            raise SpdyError("SETTINGS frame length does not match its count")
        entries = []
        for offset in range(4, len(payload), 8):
            flags_and_id, value = _TWO_U32.unpack_from(payload, offset)
            entries.append((flags_and_id >> 24, flags_and_id & 0xFFFFFF, value))
        return tuple(entries)


class FrameEncoder:
    """Encodes the frames of one direction of a SPDY connection."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case Data(stream_id, data, fin):
                return self._frame(stream_id & _STREAM_ID_MASK,
                                   FLAG_FIN if fin else 0, data)
            case SynStream(stream_id, headers, fin, unidirectional, priority):
                flags = (FLAG_FIN if fin else 0) | (
                    FLAG_UNIDIRECTIONAL if unidirectional else 0)
                payload = struct.pack("!IIBx", stream_id, 0, priority << 5)
                return self._control(TYPE_SYN_STREAM, flags,
                                     payload + self._headers.compress(headers))
            case SynReply(stream_id, headers, fin) | Headers(stream_id, headers, fin):
                frame_type = (TYPE_SYN_REPLY if isinstance(frame, SynReply)
                              else TYPE_HEADERS)
                return self._control(frame_type, FLAG_FIN if fin else 0,
                                     _U32.pack(stream_id)
                                     + self._headers.compress(headers))
            case RstStream(stream_id, status):
                return self._control(TYPE_RST_STREAM, 0,
                                     _TWO_U32.pack(stream_id, status))
            case Settings(entries):
                return self._control(TYPE_SETTINGS, 0, _U32.pack(len(entries)) + b"".join(
                    _TWO_U32.pack(flags << 24 | setting_id, value)
                    for flags, setting_id, value in entries))
            case Ping(ping_id):
                return self._control(TYPE_PING, 0, _U32.pack(ping_id))
            case GoAway(last_good, status):
                return self._control(TYPE_GOAWAY, 0, _TWO_U32.pack(last_good, status))
            case WindowUpdate(stream_id, delta):
                return self._control(TYPE_WINDOW_UPDATE, 0,
                                     _TWO_U32.pack(stream_id, delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")

    def _control(self, frame_type: int, flags: int, payload: bytes) -> bytes:
        return self._frame(0x80000000 | VERSION << 16 | frame_type, flags, payload)

    @staticmethod
    def _frame(word: int, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_FRAME_LENGTH:
            raise ValueError("frame payload exceeds 2**24-1 bytes")
        return _TWO_U32.pack(word, flags << 24 | len(payload)) + payload
