"""The server side of one HTTP/1.1 connection from kubectl, sans-IO.

What h11's server-side ``Connection`` did for the agent's front end
(kube/http1.py), cut to what kubectl's requests need: request heads read by
the strict parser (kube/request_head.py), request bodies de-framed
(Content-Length, or chunked by kube/bodyframing.py's reader, which refuses
trailers), responses written and framed, and whether the connection carries
another request. It follows h11's rules where they decide bytes on the
wire or the connection's fate, so that the front end behaves as it did:

- a response to a request without a known length is chunked for HTTP/1.1,
  read to the close for HTTP/1.0 (then ``Connection: close``); a response
  to HEAD carries the framing headers a GET's would, and no body;
- ``Connection: close`` from either side, or an HTTP/1.0 request, ends the
  connection after the response, and the response says so;
- a request with an ``Upgrade`` header may be answered with a 101, after
  which bytes are no longer HTTP (``trailing_data``); until it is answered,
  nothing after that request is read;
- a second request sent before the response to the first (pipelining)
  waits in the buffer until the first exchange ends.

h11 costs tens of microseconds per request head in Python; this costs a
few (bench/request_head.py). tests/test_kube_http1_server.py checks what
it reads and writes against h11 with hypothesis.
"""
from __future__ import annotations

import h11

from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody, take_body
from teleport_py.kube.request_head import (
    MAX_HEAD, HeadError, LocalError, PeerReader, RequestHead, comma_values, parse_request_head,
)


#: ``next_event`` results besides a RequestHead and body bytes.
NEED_DATA = "need-data"
#: The request ended; the next one is read once its response has.
PAUSED = "paused"
END = "end"

# Our side of the connection, as h11 names them.
IDLE, SEND_RESPONSE, SEND_BODY, DONE, MUST_CLOSE, SWITCHED = (
    "IDLE", "SEND_RESPONSE", "SEND_BODY", "DONE", "MUST_CLOSE", "SWITCHED_PROTOCOL")


class ServerConnection(PeerReader):
    """One kubectl connection: feed ``receive_data``, take ``next_event``
    (a RequestHead, body bytes, END, NEED_DATA or PAUSED; ProtocolError for
    what we refuse), write what ``send`` returns. ``their_done`` and ``our_state`` say where
    each side's message is; ``start_next_cycle`` when both are done."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._buffer = bytearray()
        self._max_head = max_head
        self.request: RequestHead | None = None
        self.their_http_version: bytes | None = None
        self.our_state = IDLE
        #: kubectl's request (head and body) has been read whole.
        self.their_done = False
        self._body: ContentLengthBody | ChunkedBody | None = None
        self._keep_alive = True
        self._switch_proposed = False
        self._out_left = 0
        self._out_chunked = False

    # -- reading kubectl's request -----------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read: past a request whose response is
        under way, what kubectl pipelined behind it."""
        return len(self._buffer)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received and not (yet) read as HTTP: after a 101, the session's."""
        return bytes(self._buffer)

    def _next_event(self):
        if self.their_done or self.our_state is SWITCHED:
            return PAUSED
        if self.request is None:
            parsed = parse_request_head(self._buffer, self._max_head)
            if parsed is None:
                return NEED_DATA
            head, used = parsed
            del self._buffer[:used]
            self._start_request(head)
            return head
        body = self._body
        if body is None:
            self.their_done = True
            return END
        if not self._buffer:
            return NEED_DATA
        data, ended = take_body(body, self._buffer)
        if ended:
            self._body = None
        if data:
            return data
        return self._next_event()

    def _start_request(self, head: RequestHead) -> None:
        if head.method == b"CONNECT":  # h11 would switch protocols on a 2xx; no API server request is one
            raise HeadError("CONNECT is not a Kubernetes API request")
        self.request = head
        self.their_http_version = head.http_version
        self.our_state = SEND_RESPONSE
        if b"close" in comma_values(head.headers, b"connection") or head.http_version != b"1.1":
            self._keep_alive = False
        self._switch_proposed = bool(comma_values(head.headers, b"upgrade"))
        if head.chunked:
            self._body = ChunkedBody()
        elif head.content_length:
            self._body = ContentLengthBody(head.content_length)

    def start_next_cycle(self) -> None:
        """Both messages ended and the connection is kept: read the next request."""
        if not (self.their_done and self.our_state is DONE):
            raise LocalError(f"not at the end of an exchange ({self.our_state}, request done: {self.their_done})")
        self.request = None
        self.our_state = IDLE
        self.their_done = False
        self._switch_proposed = False

    # -- writing the response ------------------------------------------------------

    def send(self, event) -> bytes:
        """The bytes of one h11 response event (Response, InformationalResponse,
        Data, EndOfMessage), written as h11 would write them."""
        kind = type(event)
        if kind is h11.Data:
            return self._data(event.data)
        if kind is h11.EndOfMessage:
            return self._end(event)
        if kind is h11.Response:
            return self._response(event)
        if kind is h11.InformationalResponse:
            return self._informational(event)
        raise LocalError(f"cannot send {kind.__name__} as a server")

    def _response(self, response: h11.Response) -> bytes:
        if self.our_state is not SEND_RESPONSE:
            raise LocalError(f"cannot send a response in state {self.our_state}")
        if response.http_version != b"1.1":
            raise LocalError("only HTTP/1.1 responses are sent")
        method = self.request.method
        status = response.status_code
        items = [(raw, name, value) for (raw, value), (name, _) in zip(response.headers.raw_items(),
                                                                         response.headers)]
        # h11's framing rules for what it sends, and its Connection: close.
        framing = self._framing(b"GET" if method == b"HEAD" else method, status, items)
        need_close = False
        if framing != "content-length":
            items = [item for item in items if item[1] != b"content-length"]
            if self.their_http_version != b"1.1":
                items = [item for item in items if item[1] != b"transfer-encoding"]
                need_close = method != b"HEAD"
            else:
                items = [item for item in items if item[1] != b"transfer-encoding"]
                items.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
        if not self._keep_alive or need_close:
            connection = set(comma_values(((n, v) for _, n, v in items), b"connection"))
            connection.discard(b"keep-alive")
            connection.add(b"close")
            items = [item for item in items if item[1] != b"connection"]
            items += [(b"Connection", b"connection", value) for value in sorted(connection)]
        if b"close" in comma_values(((n, v) for _, n, v in items), b"connection"):
            self._keep_alive = False
        self._switch_proposed = False  # a final response refuses the upgrade
        framing = self._framing(method, status, items)
        self._out_chunked = framing == "chunked"
        self._out_left = self._content_length(items) if framing == "content-length" else -1
        if method == b"HEAD" or status in (204, 304):
            self._out_left = 0
        self.our_state = SEND_BODY
        return _head(status, response.reason, items)

    @staticmethod
    def _framing(method: bytes, status: int, items) -> str:
        if status in (204, 304) or method == b"HEAD":
            return "content-length"
        if any(name == b"transfer-encoding" for _, name, _ in items):
            return "chunked"
        if any(name == b"content-length" for _, name, _ in items):
            return "content-length"
        return "http/1.0"

    @staticmethod
    def _content_length(items) -> int:
        for _, name, value in items:
            if name == b"content-length":
                return int(value.split(b",")[0])
        return 0

    def _informational(self, response: h11.InformationalResponse) -> bytes:
        if self.our_state is not SEND_RESPONSE:
            raise LocalError(f"cannot send a 1xx in state {self.our_state}")
        if response.status_code == 101:
            if not (self._switch_proposed and self.their_done):
                raise LocalError("101 without an upgrade proposed by a complete request")
            self.our_state = SWITCHED
        return _head(response.status_code, response.reason,
                     [(raw, name, value) for (raw, value), (name, _) in zip(response.headers.raw_items(),
                                                                              response.headers)])

    def _data(self, data: bytes) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalError(f"cannot send body bytes in state {self.our_state}")
        if self._out_chunked:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self._out_left >= 0:
            self._out_left -= len(data)
            if self._out_left < 0:
                raise LocalError("more body bytes than the declared Content-Length")
        return data

    def _end(self, event: h11.EndOfMessage) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalError(f"cannot end a response in state {self.our_state}")
        if event.headers:
            raise LocalError("trailers are not sent")
        if self._out_left > 0:
            raise LocalError("fewer body bytes than the declared Content-Length")
        self.our_state = DONE if self._keep_alive else MUST_CLOSE
        return b"0\r\n\r\n" if self._out_chunked else b""

    def framed_body(self, data: bytes, end: bool) -> None:
        """Body bytes the API server framed, relayed as they are: counted
        (a Content-Length body) and ended like ``send`` would, not written."""
        if self._out_chunked:
            if end:
                self._out_chunked = False
                self._out_left = 0
                self._end(h11.EndOfMessage())
            return
        self._data(data)
        if end:
            self._end(h11.EndOfMessage())

    @property
    def must_close(self) -> bool:
        return self.our_state is MUST_CLOSE


def _head(status: int, reason: bytes, items) -> bytes:
    """Status line and headers as h11 writes them (Host first, then in order)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % (raw, value) for raw, name, value in items if name == b"host"]
    lines += [b"%s: %s\r\n" % (raw, value) for raw, name, value in items if name != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines)
