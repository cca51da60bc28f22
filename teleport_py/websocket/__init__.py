"""
Sans-IO RFC 6455 WebSocket frames and messages, for both directions of a
relayed connection. See docs/streaming-protocols.md.
"""

from teleport_py.websocket.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Message,
    MessageAssembler,
    WebSocketError,
    WsFrame,
    apply_mask,
    encode_close,
    encode_frame,
    is_control,
    parse_close,
)

__all__ = [
    "CLOSE_GOING_AWAY", "CLOSE_MESSAGE_TOO_BIG", "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR", "OP_BINARY", "OP_CLOSE", "OP_CONTINUATION",
    "OP_PING", "OP_PONG", "OP_TEXT", "FrameParser", "Message",
    "MessageAssembler", "WebSocketError", "WsFrame", "apply_mask",
    "encode_close", "encode_frame", "is_control", "parse_close",
]
