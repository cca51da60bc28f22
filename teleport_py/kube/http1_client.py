"""The client side of one HTTP/1.1 connection to the API server, sans-IO.

What h11's client-side ``Connection`` did for the agent's upstream
connections (kube/upstream.py), cut to what they need: a request head
written from the headers the agent chose (every name and value checked,
so no value, a user name say, can add a header line), its body framed as
its headers say, and the API server's response read strictly: the head by
the field rules of kube/request_head.py (one Content-Length, Transfer-Encoding
only ``chunked``, never both, no obs-fold or bare LF), the body de-framed
(Content-Length, chunked without trailers, or up to the end of the
connection). It yields h11's event types, which both front ends take
(kube/interfaces.py), and names its states as h11 does
(``our_state``/``their_state``: IDLE, SEND_BODY, DONE, MUST_CLOSE,
MIGHT_SWITCH_PROTOCOL, SWITCHED_PROTOCOL), so the pool's rule for reusing a
connection is unchanged: both sides DONE.

tests/test_kube_http1_client.py checks what it writes and reads against
h11 with hypothesis.
"""
from __future__ import annotations

import re

import h11

from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody, take_body
from teleport_py.kube.request_head import (
    MAX_HEAD, HeadError, LocalError, PeerReader, comma_values, find_head_end, is_valid_field, parse_fields,
)

_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([ \t\x21-\x7e\x80-\xff]*))?")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")

IDLE, SEND_RESPONSE, SEND_BODY, DONE, MUST_CLOSE = h11.IDLE, h11.SEND_RESPONSE, h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE
MIGHT_SWITCH, SWITCHED = h11.MIGHT_SWITCH_PROTOCOL, h11.SWITCHED_PROTOCOL


class ClientConnection(PeerReader):
    """One request at a time: ``send_request``, ``send_data``, ``send_end``
    return the bytes to write; ``receive_data`` (``b""`` for the end of the
    connection) and ``next_event`` read the response (an h11 event:
    InformationalResponse, Response, Data, EndOfMessage, ConnectionClosed;
    h11.NEED_DATA or h11.PAUSED; ProtocolError for what we refuse)."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._max_head = max_head
        self._buffer = bytearray()
        self.our_state = IDLE
        self.their_state = IDLE
        self._method = b""
        self._keep_alive = True
        self._switch_proposed = False
        #: The request body's framing: bytes still to send (-1: chunked).
        self._out_left = 0
        self._in_body: ContentLengthBody | ChunkedBody | None = None
        #: The response is delimited by the end of the connection.
        self._to_close = False
        self._eof = False

    # -- the request ---------------------------------------------------------------

    def send_request(self, method: bytes, target: bytes, headers) -> bytes:
        """The request head, Host first as h11 writes it. LocalError, and
        nothing written, for any name or value a header cannot carry."""
        if self.our_state is not IDLE:
            raise LocalError(f"cannot send a request in state {self.our_state!r}")
        if _METHOD.fullmatch(method) is None or _TARGET.fullmatch(target) is None or method == b"CONNECT":
            raise LocalError("illegal method or request target (or CONNECT, never sent)")
        lengths, chunked, hosts = [], False, 0
        for name, value in headers:
            if not is_valid_field(name, value):
                raise LocalError(f"illegal header {name[:40]!r}")
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise LocalError("only one Transfer-Encoding: chunked is sent")
                chunked = True
            elif name == b"host":
                hosts += 1
        if hosts != 1:
            raise LocalError("not exactly one Host header")
        if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
            raise LocalError("more than one, or a malformed, Content-Length")
        self._method = method
        self._out_left = -1 if chunked else int(lengths[0]) if lengths else 0
        if b"close" in comma_values(headers, b"connection"):
            self._keep_alive = False
        self._switch_proposed = bool(comma_values(headers, b"upgrade"))
        self.our_state = SEND_BODY
        self.their_state = SEND_RESPONSE
        lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
        lines += [b"%s: %s\r\n" % (name, value) for name, value in headers if name == b"host"]
        lines += [b"%s: %s\r\n" % (name, value) for name, value in headers if name != b"host"]
        lines.append(b"\r\n")
        return b"".join(lines)

    def send_data(self, data: bytes) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalError(f"cannot send body bytes in state {self.our_state!r}")
        if self._out_left < 0:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        self._out_left -= len(data)
        if self._out_left < 0:
            raise LocalError("more body bytes than the declared Content-Length")
        return data

    def send_end(self) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalError(f"cannot end the request in state {self.our_state!r}")
        if self._out_left > 0:
            raise LocalError("fewer body bytes than the declared Content-Length")
        chunked = self._out_left < 0
        self.our_state = MIGHT_SWITCH if self._switch_proposed and self.their_state is SEND_RESPONSE else DONE
        self._settle()
        return b"0\r\n\r\n" if chunked else b""

    # -- the response --------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received and not read as HTTP, and whether the connection ended (as h11's)."""
        return bytes(self._buffer), self._eof

    def _next_event(self):
        state = self.their_state
        if state is SEND_RESPONSE:
            return self._head()
        if state is SEND_BODY:
            return self._body()
        if state is SWITCHED or self.our_state is MIGHT_SWITCH:
            return h11.PAUSED
        if state in (DONE, MUST_CLOSE, IDLE):
            if self._eof and not self._buffer:
                return h11.ConnectionClosed()
            return h11.PAUSED if state is not IDLE else h11.NEED_DATA
        return h11.PAUSED

    def _head(self):
        end = find_head_end(self._buffer, self._max_head)
        if end is None:
            if self._eof:
                raise HeadError("the connection ended before a response")
            return h11.NEED_DATA
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[:end + 4]
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise HeadError("illegal status line")
        version, status, reason = status_line[1], int(status_line[2]), status_line[3] or b""
        if status < 100:
            raise HeadError("illegal status code")
        headers, content_length, chunked, _ = parse_fields(lines[1:], keep_case=True)
        # The head is checked above by rules stricter than h11's, so the event
        # is built as h11's own reader builds it, without checking it again
        # (that took half the time of reading a head).
        if status < 200:
            if status == 101:
                if self.our_state is not MIGHT_SWITCH:
                    raise HeadError("101 without an upgrade the request proposed")
                self.our_state = self.their_state = SWITCHED
            return h11.InformationalResponse(status_code=status, reason=reason, headers=headers,
                                             http_version=version, _parsed=True)
        response = h11.Response(status_code=status, reason=reason, headers=headers, http_version=version,
                                _parsed=True)
        if version != b"1.1" or b"close" in comma_values(((n.lower(), v) for n, v in headers), b"connection"):
            self._keep_alive = False
        self._switch_proposed = False  # a final response refuses the upgrade
        if self.our_state is MIGHT_SWITCH:
            self.our_state = DONE
        if status in (204, 304) or self._method == b"HEAD":
            self._in_body = None
        elif chunked:
            self._in_body = ChunkedBody()
        elif content_length is not None:
            self._in_body = ContentLengthBody(content_length) if content_length else None
        else:
            self._to_close = True
        self.their_state = SEND_BODY
        self._settle()
        return response

    def _body(self):
        if self._to_close:
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                return h11.Data(data=data)
            if self._eof:
                return self._ended()
            return h11.NEED_DATA
        body = self._in_body
        if body is None:
            return self._ended()
        if not self._buffer:
            if self._eof:
                raise HeadError("the connection ended inside a response body")
            return h11.NEED_DATA
        data, ended = take_body(body, self._buffer)
        if ended:
            self._in_body = None
        if data:
            return h11.Data(data=data)
        return self._body()

    def _ended(self) -> h11.EndOfMessage:
        self.their_state = DONE  # a body read to the end of the connection ends with it, as in h11
        self._settle()
        return h11.EndOfMessage()

    def _settle(self) -> None:
        """Without keep-alive, a side that is done must close (as h11's states)."""
        if not self._keep_alive:
            if self.our_state is DONE:
                self.our_state = MUST_CLOSE
            if self.their_state is DONE:
                self.their_state = MUST_CLOSE

    def start_next_cycle(self) -> None:
        if (self.our_state, self.their_state) != (DONE, DONE):
            raise LocalError(f"not at the end of an exchange ({self.our_state!r}, {self.their_state!r})")
        self.our_state = self.their_state = IDLE
        self._in_body = None
        self._to_close = False
