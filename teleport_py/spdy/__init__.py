"""
Sans-IO SPDY/3 (as spoken by kubectl and the kubelet): frames and header
compression. See docs/streaming-protocols.md.
"""

from teleport_py.spdy.frames import (
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    MAX_FRAME_LENGTH,
    RST_CANCEL,
    RST_FRAME_TOO_LARGE,
    RST_PROTOCOL_ERROR,
    Data,
    Frame,
    FrameEncoder,
    FrameParser,
    GoAway,
    Headers,
    Ping,
    RstStream,
    Settings,
    SynReply,
    SynStream,
    WindowUpdate,
)
from teleport_py.spdy.headers import (
    SPDY3_DICTIONARY,
    HeaderCompressor,
    HeaderDecompressor,
    HeaderMap,
    SpdyError,
)

__all__ = [
    "FLAG_FIN", "FLAG_UNIDIRECTIONAL", "MAX_FRAME_LENGTH", "RST_CANCEL",
    "RST_FRAME_TOO_LARGE", "RST_PROTOCOL_ERROR", "SPDY3_DICTIONARY", "Data",
    "Frame", "FrameEncoder", "FrameParser", "GoAway", "HeaderCompressor",
    "HeaderDecompressor", "HeaderMap", "Headers", "Ping", "RstStream",
    "Settings", "SpdyError", "SynReply", "SynStream", "WindowUpdate",
]
