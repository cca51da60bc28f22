"""
RFC 6455 frames and messages, sans-IO, for either side of a connection.

Written for a relay that reads BOTH directions of someone else's
connection: the parser is told whether the frames it sees must be masked
(client to server) or unmasked (server to client), never answers anything,
and leaves extension bits for the caller to judge.
"""

import functools
import struct

import attrs

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_KNOWN_OPCODES = {OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG}

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009
_CLOSE_CODES_NEVER_SENT = {1004, 1005, 1006, 1015}

#: Default bounds: kube messages are at most a few tens of KiB.
MAX_FRAME_PAYLOAD = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class WebSocketError(Exception):
    """The one exception WebSocket parsing raises on bad bytes."""


@attrs.frozen
class WsFrame:
    opcode: int
    fin: bool
    payload: bytes
    rsv: int = 0  # the three RSV bits, as a number 0-7


@attrs.frozen
class Message:
    """A whole data message, or a control frame (close, ping, pong)."""
    opcode: int
    payload: bytes


def is_control(opcode: int) -> bool:
    return opcode >= 0x8


@functools.lru_cache(maxsize=64)
def _every_fourth_byte(words: int) -> int:
    """1 in the lowest byte of each of ``words`` 4-byte words (little-endian)."""
    return int.from_bytes(b"\x01\x00\x00\x00" * words, "little")


#: Bytes unmasked as one integer: a multiple of 4, so every block starts on
#: the key's first byte. Big-integer conversions and XOR cost more per byte
#: as the integer outgrows the CPU's caches: a 32 KiB frame (kubectl's
#: port-forward writes) took 4.7-5.4 ms per MiB as one integer and 1.9-2.1 in
#: 4-8 KiB blocks (timeit, load 14-16).
MASK_BLOCK = 8 * 1024


def apply_mask(mask: bytes, payload: bytes) -> bytes:
    """XOR with the 4-byte key; masking and unmasking are the same.

    As big-integer XORs, ``MASK_BLOCK`` bytes at a time; the repeated key is
    the mask times a cached 0x..00000001_00000001, so no key bytes are built
    or converted per frame (the relay unmasks every byte a client sends)."""
    if len(payload) <= MASK_BLOCK:
        return _xor(mask, payload)
    with memoryview(payload) as view:
        return b"".join([_xor(mask, view[start : start + MASK_BLOCK])
                         for start in range(0, len(payload), MASK_BLOCK)])


def _xor(mask: bytes, payload) -> bytes:
    length = len(payload)
    words = (length + 3) // 4
    key = int.from_bytes(mask, "little") * _every_fourth_byte(words)
    unmasked = (int.from_bytes(payload, "little") ^ key).to_bytes(4 * words, "little")
    return unmasked if length == 4 * words else unmasked[:length]


class FrameParser:
    """Parses the frames of one direction of a WebSocket connection.

    expect_masked: True for client-to-server bytes, False for
    server-to-client, None to accept both (RFC 6455 requires one or the
    other, so None is only for tests and tunnels of unknown origin).

    Frames are read in place and only a frame cut by the end of the bytes
    fed is kept for the next feed: dropping each frame from the front of a
    buffer moved the rest of a large read once per frame.
    """

    def __init__(self, expect_masked: bool | None,
                 max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._expect_masked = expect_masked
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[WsFrame]:
        if self._failed:
            raise WebSocketError("parser already failed")
        if self._buffer:
            self._buffer += data
            data = self._buffer
        frames = []
        at = 0
        try:
            with memoryview(data) as view:
                while (found := self._next_frame(view, at)) is not None:
                    frame, at = found
                    frames.append(frame)
                if data is not self._buffer:
                    self._buffer = bytearray(view[at:])
        except WebSocketError:
            self._failed = True
            raise
        if data is self._buffer:
            del self._buffer[:at]
        return frames

    def _next_frame(self, view: memoryview, at: int) -> tuple[WsFrame, int] | None:
        """The frame at ``at`` and where the next one starts, or None if it is not all there."""
        if len(view) - at < 2:
            return None
        first, second = view[at], view[at + 1]
        fin, rsv, opcode = bool(first & 0x80), (first >> 4) & 0x7, first & 0xF
        masked, length = bool(second & 0x80), second & 0x7F
        if opcode not in _KNOWN_OPCODES:
            raise WebSocketError(f"reserved opcode {opcode:#x}")
        if self._expect_masked is not None and masked != self._expect_masked:
            raise WebSocketError("frame masking does not match its direction")
        if is_control(opcode) and (not fin or length > 125):
            raise WebSocketError("control frames must be single and short")
        offset = at + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(view) < offset + size:
                return None
            (length,) = struct.unpack_from("!H" if size == 2 else "!Q", view, offset)
            offset += size
        if length > self._max_payload:
            raise WebSocketError(f"frame of {length} bytes is too large")
        if masked:
            offset += 4
        end = offset + length
        if len(view) < end:
            return None
        payload = view[offset:end].tobytes()
        if masked:
            payload = apply_mask(view[offset - 4:offset].tobytes(), payload)
        return WsFrame(opcode, fin, payload, rsv), end


class MessageAssembler:
    """Joins fragmented data frames into messages.

    Control frames may arrive between the fragments of a message; they are
    returned at once, as one-frame messages.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._max_message_size = max_message_size
        self._opcode: int | None = None
        self._fragments: list[bytes] = []
        self._size = 0

    def feed(self, frame: WsFrame) -> list[Message]:
        if is_control(frame.opcode):
            return [Message(frame.opcode, frame.payload)]
        if frame.opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise WebSocketError("continuation frame outside a message")
        elif self._opcode is not None:
            raise WebSocketError("new message before the last one finished")
        else:
            self._opcode = frame.opcode
        self._size += len(frame.payload)
        if self._size > self._max_message_size:
            raise WebSocketError(f"message larger than {self._max_message_size} bytes")
        self._fragments.append(frame.payload)
        if not frame.fin:
            return []
        message = Message(self._opcode, b"".join(self._fragments))
        self._opcode, self._fragments, self._size = None, [], 0
        return [message]


def encode_frame(opcode: int, payload: bytes, *, mask: bytes | None,
                 fin: bool = True) -> bytes:
    """Encode one frame; clients pass a fresh random 4-byte `mask`."""
    header = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    length = len(payload)
    if length < 126:
        header.append(mask_bit | length)
    elif length < 2**16:
        header += struct.pack("!BH", mask_bit | 126, length)
    else:
        header += struct.pack("!BQ", mask_bit | 127, length)
    if mask is None:
        return bytes(header) + payload
    if len(mask) != 4:
        raise ValueError("a WebSocket mask is 4 bytes")
    return bytes(header) + mask + apply_mask(mask, payload)


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """Close payload -> (code, reason); (None, "") when it has no code."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise WebSocketError("close payload of one byte")
    (code,) = struct.unpack_from("!H", payload)
    if code < 1000 or code in _CLOSE_CODES_NEVER_SENT or 1016 <= code < 3000 \
            or code >= 5000:
        raise WebSocketError(f"invalid close code {code}")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise WebSocketError("close reason is not UTF-8") from e


def encode_close(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")
