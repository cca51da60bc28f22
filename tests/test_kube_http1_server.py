"""The agent's HTTP/1.1 server side (kube/http1_server.py), checked
differentially against h11, which it replaced: what it reads from kubectl
is what h11 read (or refused where h11 is lenient, never the reverse), and
what it writes, and whether the connection is kept, is byte for byte
what h11 wrote."""
from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.http1_server import DONE, END, MUST_CLOSE, NEED_DATA, PAUSED, ServerConnection
from teleport_py.kube.request_head import LocalError, ProtocolError


def usually(good: list, bad: list):
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(good if n < 9 else bad))


# -- reading ---------------------------------------------------------------------


def h11_reads(data: bytes):
    """What h11 reads of the first request: (method, target, version,
    headers), its body, whether it ended; or "error"."""
    http = h11.Connection(h11.SERVER)
    http.receive_data(data)
    head, body = None, b""
    try:
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return head, body, False
            if type(event) is h11.Request:
                head = (event.method, event.target, event.http_version, tuple(event.headers))
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                if event.headers:
                    return "trailers"
                return head, body, True
    except h11.RemoteProtocolError:
        return "error"


def our_reads(pieces: list[bytes]):
    http = ServerConnection()
    head, body = None, b""
    try:
        for piece in pieces:
            http.receive_data(piece)
            while True:
                event = http.next_event()
                if event is NEED_DATA:
                    break
                if event is PAUSED:
                    raise AssertionError("paused before the request ended")
                if event is END:
                    return head, body, True
                if type(event) is bytes:
                    body += event
                else:
                    head = (event.method, event.target, event.http_version, event.headers)
    except ProtocolError:
        return "error"
    return head, body, False


@st.composite
def requests(draw) -> bytes:
    """A request near kubectl's, with a body framed one way or another, maybe damaged."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"CONNECT"]))
    version = draw(usually([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2"]))
    headers = [b"Host: 127.0.0.1:3026"]
    body = draw(st.binary(max_size=40))
    framing = draw(usually(["length", "chunked", "none"], ["both", "double-length", "bad-chunked", "trailers"]))
    encoded = b""
    if framing in ("length", "double-length", "both"):
        headers.append(b"Content-Length: %d" % len(body))
        encoded = body
        if framing == "double-length":
            headers.append(b"Content-Length: %d" % len(body))
    if framing in ("chunked", "both", "bad-chunked", "trailers"):
        headers.append(b"Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        chunks = [c for c in (body[:cut], body[cut:]) if c]
        size = b"%x" % len(chunks[0]) if chunks else b"0"
        if framing == "bad-chunked":
            size = draw(st.sampled_from([b"-1", b"g", b"", b" 1", b"1" * 30, size + b";ext", size + b" "]))
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks[1:])
        if chunks:
            encoded = size + b"\r\n" + chunks[0] + draw(usually([b"\r\n"], [b"\n", b"", b"x\r\n"])) + encoded
        encoded += b"0\r\n" + (b"X-Trailer: 1\r\n" if framing == "trailers" else b"") + draw(
            usually([b"\r\n"], [b"\n", b"x"]))
    for _ in range(draw(st.integers(0, 3))):
        headers.append(draw(st.sampled_from([
            b"Connection: close", b"Connection: keep-alive", b"Upgrade: SPDY/3.1", b"Connection: Upgrade",
            b"Expect: 100-continue", b"Accept: */*", b"X-A: b"])))
    data = method + b" /api/v1/pods " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + encoded
    return data + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"junk"]))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


class ReadingTests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests(), st.lists(st.integers(0, 400), max_size=4))
    def test_reads_what_h11_reads(self, data, cuts):
        ours, theirs = our_reads(split(data, cuts)), h11_reads(data)
        if ours == "error":  # stricter than h11 is allowed; laxer is not
            return
        self.assertNotIn(theirs, ("error", "trailers"), data)
        self.assertEqual(ours, theirs, data)

    def test_pipelined_request_waits_for_the_response(self):
        http = ServerConnection()
        http.receive_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(http.next_event().target, b"/a")
        self.assertIs(http.next_event(), END)
        self.assertIs(http.next_event(), PAUSED)
        http.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
        http.send(h11.EndOfMessage())
        self.assertIs(http.our_state, DONE)
        http.start_next_cycle()
        self.assertEqual(http.next_event().target, b"/b")

    def test_error_is_sticky(self):
        http = ServerConnection()
        http.receive_data(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        self.assertRaises(ProtocolError, http.next_event)
        self.assertRaises(ProtocolError, http.next_event)

    def test_upgrade_leaves_the_rest_unread(self):
        http = ServerConnection()
        http.receive_data(b"POST /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n\x80\x03")
        http.next_event()
        self.assertIs(http.next_event(), END)
        self.assertIs(http.next_event(), PAUSED)
        head = http.send(h11.InformationalResponse(status_code=101, headers=[(b"Upgrade", b"SPDY/3.1")]))
        self.assertEqual(head, b"HTTP/1.1 101 \r\nUpgrade: SPDY/3.1\r\n\r\n")
        self.assertEqual(http.trailing_data, b"\x80\x03")

    def test_no_101_without_an_upgrade(self):
        http = ServerConnection()
        http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        http.next_event(), http.next_event()
        self.assertRaises(LocalError, http.send, h11.InformationalResponse(status_code=101, headers=[]))


# -- writing ---------------------------------------------------------------------

HEADER_CHOICES = [
    (b"Content-Type", b"application/json"), (b"content-length", None), (b"Content-Length", None),
    (b"Transfer-Encoding", b"chunked"), (b"Connection", b"close"), (b"connection", b"keep-alive, x"),
    (b"Connection", b"Upgrade"), (b"Upgrade", b"SPDY/3.1"), (b"Host", b"h"), (b"Audit-Id", b"1"), (b"X-E", b""),
]


@st.composite
def exchanges(draw):
    """A request kubectl might send and a response we might write to it."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    extra = draw(st.lists(st.sampled_from([b"Connection: close", b"Connection: keep-alive", b"Upgrade: websocket",
                                           b"Connection: Upgrade"]), max_size=2))
    request = b"%s / HTTP/%s\r\nHost: x\r\n%s\r\n" % (method, version, b"".join(h + b"\r\n" for h in extra))
    status = draw(st.sampled_from([200, 200, 201, 204, 304, 403, 500]))
    body = draw(st.lists(st.binary(max_size=12), max_size=3))
    headers = []
    for name, value in draw(st.lists(st.sampled_from(HEADER_CHOICES), max_size=4, unique=True)):
        if value is None:
            value = b"%d" % max(0, sum(map(len, body)) + draw(usually([0], [1, -1])))
        headers.append((name, value))
    return request, status, draw(st.sampled_from([b"OK", b"", b"Not Found"])), headers, body


def run_writes(send, response, body):
    out = [send(response)]
    out += [send(h11.Data(data=piece)) for piece in body]
    out.append(send(h11.EndOfMessage()))
    return b"".join(out)


class WritingTests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(exchanges())
    def test_writes_what_h11_writes(self, exchange):
        request, status, reason, headers, body = exchange
        theirs = h11.Connection(h11.SERVER)
        theirs.receive_data(request)
        theirs.next_event(), theirs.next_event()
        ours = ServerConnection()
        ours.receive_data(request)
        ours.next_event(), ours.next_event()
        try:  # an event h11 refuses to build never reaches either writer
            response = h11.Response(status_code=status, reason=reason, headers=headers)
        except h11.LocalProtocolError:
            return
        try:
            expected = run_writes(theirs.send, response, body)
        except h11.LocalProtocolError:
            self.assertRaises(LocalError, run_writes, ours.send, response, body)
            return
        self.assertEqual(run_writes(ours.send, response, body), expected)
        self.assertEqual(ours.our_state, {h11.DONE: DONE, h11.MUST_CLOSE: MUST_CLOSE}[theirs.our_state])

    def test_framed_body_passes_unchanged(self):
        """A body the API server chunked goes as it is; its end ends the response."""
        http = ServerConnection()
        http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        http.next_event(), http.next_event()
        head = http.send(h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")]))
        self.assertEqual(head, b"HTTP/1.1 200 \r\nTransfer-Encoding: chunked\r\n\r\n")
        http.framed_body(b"3\r\nabc\r\n", False)
        http.framed_body(b"0\r\n\r\n", True)
        self.assertIs(http.our_state, DONE)

    def test_framed_content_length_is_counted(self):
        http = ServerConnection()
        http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        http.next_event(), http.next_event()
        http.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"3")]))
        self.assertRaises(LocalError, http.framed_body, b"ab", True)
