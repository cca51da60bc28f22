"""
Sans-IO codec for reverse-tunnel frames (wire format: docs/tunnel.md).

Every frame is a 10-byte header (type, flags, stream id, payload length)
followed by its payload. The decoder checks the declared length against a
per-type limit *before* buffering, so a hostile peer cannot make us hold
more than one bounded frame in memory.
"""

from __future__ import annotations

import struct

import attrs

HEADER = struct.Struct("!BBII")

PROTOCOL_VERSION = 1
MAX_KIND_LENGTH = 255
MAX_METADATA_LENGTH = 64 * 1024
MAX_REASON_LENGTH = 1024
MAX_STREAM_ID = 2**32 - 1
MAX_WINDOW = 2**31 - 1

FLAG_FIN = 0x01
FLAG_ACK = 0x01


class TunnelProtocolError(Exception):
    """
    The peer broke the wire protocol; the connection cannot continue.
    """


@attrs.frozen
class Hello:
    """First frame on each side: version range and receive limits."""

    TYPE = 0x00
    min_version: int
    max_version: int
    initial_window: int
    max_frame_payload: int


@attrs.frozen
class Open:
    """Ask the peer to accept a new stream of some kind."""

    TYPE = 0x01
    stream_id: int
    kind: str
    metadata: bytes


@attrs.frozen
class Accept:
    TYPE = 0x02
    stream_id: int


@attrs.frozen
class Reject:
    TYPE = 0x03
    stream_id: int
    reason: str


@attrs.frozen
class Data:
    """Stream bytes; FIN means the sender will write no more."""

    TYPE = 0x04
    stream_id: int
    data: bytes
    fin: bool = False


@attrs.frozen
class WindowUpdate:
    TYPE = 0x05
    stream_id: int
    increment: int


@attrs.frozen
class Reset:
    """Abort a stream in both directions."""

    TYPE = 0x06
    stream_id: int
    reason: str


@attrs.frozen
class Ping:
    TYPE = 0x07
    opaque: bytes
    ack: bool = False


@attrs.frozen
class GoAway:
    """No new streams either way; open streams may finish."""

    TYPE = 0x08
    reason: str


Frame = Hello | Open | Accept | Reject | Data | WindowUpdate | Reset | Ping | GoAway

_HELLO = struct.Struct("!HHII")
_U32 = struct.Struct("!I")


def _reason(text: str) -> bytes:
    return text.encode("utf-8")[:MAX_REASON_LENGTH]


def encode(frame: Frame) -> bytes:
    """Serialize one frame; raises ValueError for values the wire cannot carry."""
    flags = 0
    stream_id = 0
    match frame:
        case Hello():
            payload = _HELLO.pack(
                frame.min_version,
                frame.max_version,
                frame.initial_window,
                frame.max_frame_payload,
            )
        case Open():
            kind = frame.kind.encode("ascii")
            if not 0 < len(kind) <= MAX_KIND_LENGTH:
                raise ValueError("stream kind must be 1..255 ASCII bytes")
            if len(frame.metadata) > MAX_METADATA_LENGTH:
                raise ValueError("stream metadata larger than 64 KiB")
            stream_id = frame.stream_id
            payload = bytes([len(kind)]) + kind + frame.metadata
        case Accept():
            stream_id, payload = frame.stream_id, b""
        case Reject() | Reset():
            stream_id, payload = frame.stream_id, _reason(frame.reason)
        case Data():
            stream_id, payload = frame.stream_id, frame.data
            flags = FLAG_FIN if frame.fin else 0
        case WindowUpdate():
            stream_id, payload = frame.stream_id, _U32.pack(frame.increment)
        case Ping():
            if len(frame.opaque) != 8:
                raise ValueError("ping payload must be 8 bytes")
            payload = frame.opaque
            flags = FLAG_ACK if frame.ack else 0
        case GoAway():
            payload = _reason(frame.reason)
    return HEADER.pack(frame.TYPE, flags, stream_id, len(payload)) + payload


def data_header(stream_id: int, length: int, *, fin: bool) -> bytes:
    """The header of a DATA frame, for senders that queue the payload as is
    rather than copy it into ``encode``'s result."""
    return HEADER.pack(Data.TYPE, FLAG_FIN if fin else 0, stream_id, length)


# Per type: (needs a stream id, allowed flags, maximum payload or None for
# "the advertised data limit").
_RULES: dict[int, tuple[bool, int, int | None]] = {
    Hello.TYPE: (False, 0, _HELLO.size),
    Open.TYPE: (True, 0, 1 + MAX_KIND_LENGTH + MAX_METADATA_LENGTH),
    Accept.TYPE: (True, 0, 0),
    Reject.TYPE: (True, 0, MAX_REASON_LENGTH),
    Data.TYPE: (True, FLAG_FIN, None),
    WindowUpdate.TYPE: (True, 0, _U32.size),
    Reset.TYPE: (True, 0, MAX_REASON_LENGTH),
    Ping.TYPE: (False, FLAG_ACK, 8),
    GoAway.TYPE: (False, 0, MAX_REASON_LENGTH),
}


class FrameDecoder:
    """
    Bytes in, frames out. Any malformed input raises TunnelProtocolError and
    leaves the decoder unusable (the connection must be dropped).
    """

    def __init__(self, max_data_payload: int) -> None:
        self._max_data_payload = max_data_payload
        self._buffer = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken:
            raise TunnelProtocolError("decoder already failed")
        # Frames are parsed where they lie (the new bytes themselves when
        # nothing was left over) and the consumed prefix is dropped once, so a
        # payload is copied once, not once per step.
        if self._buffer:
            self._buffer += data
            data = self._buffer
        frames = []
        offset = 0
        try:
            with memoryview(data) as view:
                while (parsed := self._next_frame(view, offset)) is not None:
                    frame, offset = parsed
                    frames.append(frame)
        except TunnelProtocolError:
            self._broken = True
            self._buffer.clear()
            raise
        if data is self._buffer:
            del self._buffer[:offset]
        else:
            self._buffer += data[offset:]
        return frames

    def _next_frame(self, view: memoryview, offset: int) -> tuple[Frame, int] | None:
        if len(view) - offset < HEADER.size:
            return None
        kind, flags, stream_id, length = HEADER.unpack_from(view, offset)
        rule = _RULES.get(kind)
        if rule is None:
            raise TunnelProtocolError(f"unknown frame type {kind:#04x}")
        needs_stream, allowed_flags, limit = rule
        if needs_stream != (stream_id != 0):
            raise TunnelProtocolError(f"frame type {kind:#04x} on wrong stream id")
        if flags & ~allowed_flags:
            raise TunnelProtocolError(f"unknown flags {flags:#04x}")
        if length > (self._max_data_payload if limit is None else limit):
            raise TunnelProtocolError(f"frame type {kind:#04x} too long: {length}")
        end = offset + HEADER.size + length
        if len(view) < end:
            return None
        return _parse(kind, flags, stream_id, view[offset + HEADER.size : end].tobytes()), end


def _parse(kind: int, flags: int, stream_id: int, payload: bytes) -> Frame:
    """Build a frame from a header already checked against _RULES."""
    if kind == Hello.TYPE:
        if len(payload) != _HELLO.size:
            raise TunnelProtocolError("bad HELLO length")
        return Hello(*_HELLO.unpack(payload))
    if kind == Open.TYPE:
        if not payload or not 0 < payload[0] < len(payload):
            raise TunnelProtocolError("bad OPEN kind length")
        kind_bytes = payload[1 : 1 + payload[0]]
        if not kind_bytes.isascii():
            raise TunnelProtocolError("non-ASCII stream kind")
        return Open(stream_id, kind_bytes.decode("ascii"), payload[1 + payload[0] :])
    if kind == Accept.TYPE:
        return Accept(stream_id)
    if kind == Reject.TYPE:
        return Reject(stream_id, payload.decode("utf-8", "replace"))
    if kind == Data.TYPE:
        return Data(stream_id, payload, bool(flags & FLAG_FIN))
    if kind == WindowUpdate.TYPE:
        if len(payload) != _U32.size:
            raise TunnelProtocolError("bad WINDOW_UPDATE length")
        (increment,) = _U32.unpack(payload)
        if not 0 < increment <= MAX_WINDOW:
            raise TunnelProtocolError("bad WINDOW_UPDATE increment")
        return WindowUpdate(stream_id, increment)
    if kind == Reset.TYPE:
        return Reset(stream_id, payload.decode("utf-8", "replace"))
    if kind == Ping.TYPE:
        if len(payload) != 8:
            raise TunnelProtocolError("bad PING length")
        return Ping(payload, bool(flags & FLAG_ACK))
    return GoAway(payload.decode("utf-8", "replace"))
