"""What kubectl's HTTP/2 connection may cost the agent beyond h2's own checks (sans-IO).

h2 validates frames and bounds a header block (64 CONTINUATION frames, the
decoded list by ``MAX_HEADER_LIST_SIZE``), the streams open at once and the
flow-control windows, but a peer within those rules can still make the agent
work without end: open and reset streams as fast as it can send them (rapid
reset, CVE-2023-44487: a reset stream no longer counts as open, but its
request was authorized and started), or send SETTINGS and PINGs that each
want an answer, PRIORITY, empty DATA or unknown frames (CVE-2019-9512,
9515, 9516, 9518). And h2 has no clock: a header block begun and never
finished holds the connection, since no other frame may come between.

`FrameGuard` reads the bytes kubectl sends before h2 does, frame header by
frame header, without keeping any payload: it knows whether a header block
is open (its deadline is the front's) and spends a token bucket per kind of
frame that costs work but carries no request. A bucket holds a burst and
refills at a steady rate: past it, the connection is ended with GOAWAY
ENHANCE_YOUR_CALM. Bytes it cannot frame are left to h2, which refuses them.
"""
from __future__ import annotations

import attrs

#: The client connection preface (RFC 9113 section 3.4), before the first frame.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
#: Flags: DATA's END_STREAM and SETTINGS' or PING's ACK are the same bit.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4

#: RST_STREAM frames kubectl may send at once, and per second after that.
#: client-go resets a stream when a request is cancelled (a watch
#: stopped); the burst lets every stream the connection may hold at once
#: be reset together (MAX_CONCURRENT_STREAMS).
RESET_BURST, RESETS_PER_SECOND = 1000, 100.0
#: SETTINGS and PING (each answered), PRIORITY, DATA empty and not ending
#: its stream, and frames of unknown type (ignored by h2): client-go sends
#: a PING every 30 s at most for its health check.
CONTROL_BURST, CONTROL_PER_SECOND = 1000, 100.0
#: Parameters in one SETTINGS frame: HTTP/2 defines 7 and client-go sends
#: 4; h2 spends 1.5 ms on a 16 KiB frame of 2730 (load 22).
MAX_SETTINGS = 64


@attrs.define
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second of the ``now`` given."""

    burst: float
    rate: float
    tokens: float = attrs.field(default=None)
    updated: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Spend one token: False once none is left."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Flood(Exception):
    """kubectl sent more of one kind of frame than the agent answers."""


class FrameGuard:
    """The frame boundaries of what kubectl sends, and what they cost.

    ``receive(data, now)`` takes the bytes h2 is about to read and raises
    `Flood` past a bucket. ``header_block_open`` is True from the first
    bytes of a HEADERS (or PUSH_PROMISE) frame after its 9-byte frame header
    until the frame carrying END_HEADERS is whole. Memory: at most one
    frame header (9 bytes) and the preface are kept, never a payload."""

    def __init__(self, *, reset_burst: float = RESET_BURST, resets_per_second: float = RESETS_PER_SECOND,
                 control_burst: float = CONTROL_BURST, control_per_second: float = CONTROL_PER_SECOND) -> None:
        self.resets = TokenBucket(reset_burst, resets_per_second)
        self.control = TokenBucket(control_burst, control_per_second)
        self.header_block_open = False
        #: Bytes of the preface still expected.
        self._preface = len(PREFACE)
        self._header = bytearray()
        #: Payload bytes of the current frame not yet received.
        self._remaining = 0
        #: The current frame ends its header block once whole.
        self._ends_block = False
        #: Not HTTP/2 framing: h2 refuses it; nothing more is counted.
        self.lost_sync = False

    def receive(self, data: bytes, now: float) -> None:
        at, end = 0, len(data)
        if self._preface and not self.lost_sync:
            take = min(self._preface, end)
            start = len(PREFACE) - self._preface
            if data[:take] != PREFACE[start:start + take]:
                self.lost_sync = True
            self._preface -= take
            at = take
        while at < end and not self.lost_sync:
            if self._remaining:
                take = min(self._remaining, end - at)
                self._remaining -= take
                at += take
                if not self._remaining and self._ends_block:
                    self._frame_complete()
            elif not self._header and end - at >= FRAME_HEADER:
                self._frame_started(data[at:at + FRAME_HEADER], now)
                at += FRAME_HEADER
            else:  # a frame header split across reads
                take = min(FRAME_HEADER - len(self._header), end - at)
                self._header += data[at:at + take]
                at += take
                if len(self._header) == FRAME_HEADER:
                    header, self._header = bytes(self._header), bytearray()
                    self._frame_started(header, now)

    def _frame_started(self, header: bytes, now: float) -> None:
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        if kind in (HEADERS, PUSH_PROMISE):
            self.header_block_open = True
            self._ends_block = bool(flags & END_HEADERS)
        elif kind == CONTINUATION:
            self._ends_block = bool(flags & END_HEADERS)
        else:
            self._ends_block = False
        self._remaining = length
        if kind == SETTINGS and length > 6 * MAX_SETTINGS:
            raise Flood(f"a SETTINGS frame of more than {MAX_SETTINGS} parameters")
        if kind == RST_STREAM:
            if not self.resets.take(now):
                raise Flood(f"more than {self.resets.burst:g} RST_STREAM frames at once "
                            f"or {self.resets.rate:g} a second (rapid reset)")
        elif _costs_control(kind, flags, length) and not self.control.take(now):
            raise Flood(f"more than {self.control.burst:g} SETTINGS, PING, PRIORITY, empty DATA or unknown frames "
                        f"at once or {self.control.rate:g} a second")
        if not length:
            self._frame_complete()

    def _frame_complete(self) -> None:
        if self._ends_block:
            self.header_block_open = False
            self._ends_block = False


def _costs_control(kind: int, flags: int, length: int) -> bool:
    if kind in (SETTINGS, PING):
        return not flags & ACK
    if kind == DATA:
        return length == 0 and not flags & END_STREAM
    return kind == PRIORITY or kind > CONTINUATION
