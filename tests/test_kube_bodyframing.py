"""Finding a response body's end without decoding it, checked against h11."""
from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody, FramingError, body_framing

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def h11_outcome(head: bytes, body: bytes):
    """Where h11 ends the body (bytes of ``body`` it used), or why not."""
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    http.send(h11.EndOfMessage())
    http.receive_data(head + body)
    try:
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                return "incomplete"
            if type(event) is h11.EndOfMessage:
                return "trailers" if event.headers else ("end", len(body) - len(http.trailing_data[0]))
    except h11.RemoteProtocolError:
        return "error"


def tracker_outcome(tracker, pieces: list[bytes]):
    used = 0
    try:
        for piece in pieces:
            taken, ended = tracker.feed(piece)
            used += taken
            if ended:
                return "end", used
            assert taken == len(piece)
        return "incomplete"
    except FramingError:
        return "error"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


@st.composite
def chunked_bodies(draw) -> bytes:
    """Valid chunked framing in the forms h11 accepts, then maybe junk and damage."""
    out = bytearray()
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5)) + [b""]:
        size = "%x" % len(data)
        size = draw(st.sampled_from([size, size.upper(), "00" + size]))
        ext = draw(st.sampled_from(["", ";a=b", "; x", ";\r"]))
        out += f"{size}{ext}{draw(st.sampled_from(['', ' ', chr(9)]))}\r\n".encode("latin-1") + data
        out += b"\r\n" if data else draw(st.sampled_from([b"\r\n", b"\n", b"x: y\r\n\r\n"]))
    out += draw(st.binary(max_size=8))
    for position, byte, how in draw(st.lists(st.tuples(st.integers(0, 500), st.binary(min_size=1, max_size=1),
                                                       st.sampled_from(["replace", "insert", "delete"])),
                                             max_size=2)):
        i = position % (len(out) + 1)
        if how == "insert":
            out[i:i] = byte
        elif i < len(out):
            out[i:i + 1] = byte if how == "replace" else b""
    return bytes(out)


class ChunkedBodyTests(SynchronousTestCase):
    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(chunked_bodies(), st.lists(st.integers(min_value=0), max_size=6))
    def test_agrees_with_h11(self, body, cuts):
        expected = h11_outcome(CHUNKED_HEAD, body)
        got = tracker_outcome(ChunkedBody(), split(body, cuts))
        if expected == "trailers":
            self.assertEqual(got, "error")  # refused rather than relayed unvalidated
        elif expected == "incomplete":
            # A bare LF in a size line: h11 waits for the CRLF it will then refuse.
            self.assertIn(got, ("incomplete", "error"))
        else:
            self.assertEqual(got, expected)

    def test_examples(self):
        body = b"2\r\n{}\r\n0\r\n\r\n"
        self.assertEqual(tracker_outcome(ChunkedBody(), [body + b"HTTP/1.1"]), ("end", len(body)))
        self.assertEqual(tracker_outcome(ChunkedBody(), [bytes([b]) for b in body]), ("end", len(body)))
        for bad in (b"z\r\n", b"2\r\n{}x", b"2;\n\r\n", b"0\r\nx: y\r\n\r\n", b"1" * 21 + b"\r\n", b"0" * 20000):
            self.assertEqual(tracker_outcome(ChunkedBody(), [bad]), "error", bad)
        self.assertEqual(tracker_outcome(ChunkedBody(), [b"2\r\n{}\r\n0\r\n"]), "incomplete")


class ContentLengthBodyTests(SynchronousTestCase):
    @given(st.integers(0, 300), st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=6))
    def test_agrees_with_h11(self, length, body, cuts):
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % length
        expected = h11_outcome(head, body)
        got = tracker_outcome(ContentLengthBody(length), split(body, cuts))
        self.assertEqual(got, expected)

    def test_empty_body_ends_at_once(self):
        self.assertEqual(ContentLengthBody(0).feed(b"junk"), (0, True))


class BodyFramingTests(SynchronousTestCase):
    def response(self, status=200, *headers):
        return h11.Response(status_code=status, headers=[(b"date", b"x"), *headers])

    def test_rfc_9112_message_body_length(self):
        chunked, length = (b"transfer-encoding", b"chunked"), (b"content-length", b"7")
        self.assertIsInstance(body_framing(b"GET", self.response(200, chunked)), ChunkedBody)
        self.assertIsInstance(body_framing(b"GET", self.response(200, length)), ContentLengthBody)
        for method, status in ((b"HEAD", 200), (b"GET", 204), (b"GET", 304), (b"CONNECT", 200)):
            self.assertIsNone(body_framing(method, self.response(status, length)), (method, status))
        # Delimited by the connection's end: h11 reads it.
        self.assertIsNone(body_framing(b"GET", self.response(200)))
