"""Where an HTTP/1.1 response body ends, without decoding it (sans-IO).

An unfiltered response goes to kubectl exactly as the API server framed it:
decoding chunks and encoding them again cost a sixth of the agent's CPU on a
large list. The agent still needs the body's end, exactly, to know when
the connection may carry the next request, and must refuse framing h11
would refuse (the same chunk-size line, the CRLF after each chunk's data).
Trailers are refused: the API server sends none, and relaying header lines
unvalidated is not worth supporting them.
"""
from __future__ import annotations

import re

import h11

#: A chunk-size line as h11 accepts it (extensions ignored, trailing blanks tolerated).
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*\r\n")
#: As long as h11's default limit on an incomplete event.
MAX_LINE = 16 * 1024


class FramingError(Exception):
    """The body's framing is malformed: the connection cannot be trusted."""


class ContentLengthBody:
    """A body of exactly ``length`` bytes."""

    chunked = False

    def __init__(self, length: int) -> None:
        self._left = length

    def feed(self, data: bytes) -> tuple[int, bool]:
        """How many leading bytes of ``data`` belong to the body, and whether it ended."""
        taken = min(len(data), self._left)
        self._left -= taken
        return taken, self._left == 0


class ChunkedBody:
    """A chunked body: chunk-size lines, data, CRLFs, the last chunk."""

    chunked = True

    def __init__(self) -> None:
        self._line = bytearray()  # a chunk-size line read in part
        self._in_chunk = 0  # data bytes of the current chunk still to come
        self._expect = b""  # the part of a CRLF still to come
        self._last = False  # the last chunk's line was read: one CRLF ends the body
        self._ended = False

    def feed(self, data: bytes, payload: list | None = None) -> tuple[int, bool]:
        """How many leading bytes of ``data`` belong to the body, and whether
        it ended; raises FramingError on framing h11 would refuse. With
        ``payload``, the chunks' data found in ``data`` is appended to it
        (decoding a request body, kube/http1_server.py)."""
        pos, end = 0, len(data)
        while pos < end and not self._ended:
            if self._in_chunk:
                taken = min(self._in_chunk, end - pos)
                if payload is not None:
                    payload.append(data[pos:pos + taken])
                pos += taken
                self._in_chunk -= taken
                if not self._in_chunk:
                    self._expect = b"\r\n"
            elif self._expect:
                byte = data[pos:pos + 1]
                if byte != self._expect[:1]:
                    raise FramingError(f"expected {self._expect!r} after a chunk, got {byte!r}")
                pos += 1
                self._expect = self._expect[1:]
            elif self._last:
                pos = self._end_of_last_chunk(data, pos)
            else:
                pos = self._size_line(data, pos)
        return pos, self._ended

    def _size_line(self, data: bytes, pos: int) -> int:
        newline = data.find(b"\n", pos)
        stop = len(data) if newline < 0 else newline + 1
        self._line += data[pos:stop]
        if len(self._line) > MAX_LINE:
            raise FramingError("chunk-size line too long")
        if newline < 0:
            return stop
        match = _CHUNK_SIZE_LINE.fullmatch(self._line)
        if match is None:
            raise FramingError(f"illegal chunk-size line {bytes(self._line[:64])!r}")
        self._in_chunk = int(match[1], 16)
        self._line.clear()
        self._last = not self._in_chunk
        return stop

    def _end_of_last_chunk(self, data: bytes, pos: int) -> int:
        """After ``0\\r\\n``: an empty line (CRLF, or a bare LF as h11 allows) ends the body."""
        byte = data[pos:pos + 1]
        if byte == b"\n":
            self._ended = True
        elif byte == b"\r" and not self._line:
            self._line += byte
        else:
            raise FramingError("trailers after the last chunk are not relayed")
        return pos + 1


def take_body(body: ContentLengthBody | ChunkedBody, buffer: bytearray) -> tuple[bytes, bool]:
    """Decode the part of ``buffer`` that belongs to ``body``, removing it
    from ``buffer``: the body's data in it, and whether the body ended."""
    if body.chunked:
        payload: list = []
        taken, ended = body.feed(bytes(buffer), payload)
        data = b"".join(payload)
    else:
        taken, ended = body.feed(buffer)
        data = bytes(buffer[:taken])
    del buffer[:taken]
    return data, ended


def body_framing(method: bytes, response: h11.Response) -> ContentLengthBody | ChunkedBody | None:
    """How the body of ``response`` (to a ``method`` request) is delimited
    (RFC 9112 section 6.3), for a head h11 already validated; ``None`` when
    there is no body or it ends with the connection, which h11 handles."""
    if method in (b"HEAD", b"CONNECT") or response.status_code in (204, 304):
        return None
    headers = dict(response.headers)
    if b"transfer-encoding" in headers:  # h11 accepts only "chunked", and drops Content-Length then
        return ChunkedBody()
    if b"content-length" in headers:
        return ContentLengthBody(int(headers[b"content-length"]))
    return None
