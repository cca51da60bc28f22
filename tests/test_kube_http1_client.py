"""The agent's HTTP/1.1 client side to the API server (kube/http1_client.py),
checked differentially against h11, which it replaced: the request bytes
are h11's, and a response is read as h11 reads it (or refused where h11 is
lenient, never the reverse), with the same verdict on reusing the
connection."""
from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.http1_client import ClientConnection
from teleport_py.kube.request_head import LocalError, ProtocolError


def usually(good: list, bad: list):
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(good if n < 9 else bad))


# -- writing the request ------------------------------------------------------------


@st.composite
def requests(draw):
    method = draw(usually([b"GET", b"POST", b"HEAD", b"PATCH"], [b"G T", b"", b"GET\r\n"]))
    target = draw(usually([b"/api/v1/pods", b"/apis/apps/v1/deployments?watch=1"], [b"/a b", b"/\x00", b""]))
    headers = [(b"host", b"127.0.0.1:6443")] if draw(usually([True], [False])) else []
    body = draw(st.lists(st.binary(max_size=10), max_size=3))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(usually([b"accept", b"impersonate-user", b"impersonate-group", b"content-length",
                             b"transfer-encoding", b"connection", b"upgrade", b"user-agent"],
                            [b"bad name", b"", b"x\r\ny", b"host"]))
        value = draw(usually([b"alice", b"application/json", b"chunked", b"Upgrade", b"SPDY/3.1",
                              b"%d" % sum(map(len, body))],
                             [b"alice\r\nx-injected: 1", b" lead", b"trail ", b"a\x00b", b"gzip", b"-1", b"1, 1", b""]))
        headers.append((name, value))
    return method, target, headers, body


def write_all(send_request, send_data, send_end, method, target, headers, body) -> bytes:
    out = [send_request(method, target, headers)]
    out += [send_data(piece) for piece in body]
    out.append(send_end())
    return b"".join(out)


class RequestWritingTests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests())
    def test_writes_what_h11_writes_and_refuses_what_it_refuses(self, request):
        method, target, headers, body = request
        theirs = h11.Connection(h11.CLIENT)
        try:
            expected = write_all(lambda m, t, h: theirs.send(h11.Request(method=m, target=t, headers=h)),
                                 lambda d: theirs.send(h11.Data(data=d)),
                                 lambda: theirs.send(h11.EndOfMessage()), method, target, headers, body)
        except h11.LocalProtocolError:
            expected = None
        ours = ClientConnection()
        try:
            written = write_all(ours.send_request, ours.send_data, ours.send_end, method, target, headers, body)
        except LocalError:
            written = None
        if written is not None:  # stricter than h11 is allowed (a duplicate equal length, say); laxer is not
            self.assertEqual(written, expected)
            self.assertEqual(ours.our_state, theirs.our_state)

    def test_no_header_injection(self):
        """A value that would start a header line of its own is never written."""
        ours = ClientConnection()
        self.assertRaises(LocalError, ours.send_request, b"GET", b"/", [
            (b"host", b"api"), (b"impersonate-user", b"alice\r\nimpersonate-group: system:masters")])
        self.assertIs(ours.our_state, h11.IDLE)


# -- reading the response -------------------------------------------------------------


@st.composite
def responses(draw) -> tuple[bytes, bytes, bool]:
    """A request method, an API server response near a real one, maybe damaged, and whether the connection then ends."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]))
    status = draw(usually([b"200", b"201", b"204", b"304", b"404", b"100", b"101"], [b"99", b"2000", b"abc", b""]))
    version = draw(usually([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]))
    reason = draw(st.sampled_from([b" OK", b" Not Found", b"", b" ", b" a\tb", b" \x80"]))
    body = draw(st.binary(max_size=30))
    framing = draw(usually(["length", "chunked", "none"], ["both", "two-lengths", "bad-chunk", "trailers", "short"]))
    headers = [b"Content-Type: application/json", b"Audit-Id: 1f"]
    encoded = body
    if framing in ("length", "both", "two-lengths"):
        headers.append(b"Content-Length: %d" % len(body))
        if framing == "two-lengths":
            headers.append(b"Content-Length: %d" % (len(body) + draw(st.sampled_from([0, 1]))))
    if framing == "short":
        headers.append(b"Content-Length: %d" % (len(body) + 5))
    if framing in ("chunked", "both", "bad-chunk", "trailers"):
        headers.append(draw(st.sampled_from([b"Transfer-Encoding: chunked", b"transfer-encoding: Chunked"])))
        cut = draw(st.integers(0, len(body)))
        chunks = [c for c in (body[:cut], body[cut:]) if c]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        if framing == "bad-chunk":
            encoded = draw(st.sampled_from([b"zz\r\n", b"-1\r\n", b"3\r\nabcX", b"1 ;x\r\na\r\n"])) + encoded
        encoded += b"0\r\n" + (b"X-T: 1\r\n" if framing == "trailers" else b"") + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        headers.append(draw(st.sampled_from([b"Connection: close", b"Connection: keep-alive", b"Upgrade: SPDY/3.1",
                                             b"Bad Name: x", b"X-A: \x01", b"X-B:  spaced  ", b"X-C: a\r\n folded"])))
    data = version + b" " + status + reason + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + encoded
    data += draw(st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\n", b"junk"]))
    return method, data, draw(st.booleans())


def read_all(next_event, feed, pieces, eof):
    """Events up to the response's end, body bytes joined; or "error"."""
    head, body, informational = None, b"", []
    try:
        for piece in pieces + ([b""] if eof else []):
            feed(piece)
            while True:
                event = next_event()
                if event in (h11.NEED_DATA, h11.PAUSED) or type(event) is h11.ConnectionClosed:
                    break
                if type(event) is h11.InformationalResponse:
                    informational.append((event.status_code, event.reason, tuple(event.headers.raw_items())))
                    if event.status_code == 101:
                        return informational, head, body, "switched"
                elif type(event) is h11.Response:
                    head = (event.status_code, event.reason, event.http_version, tuple(event.headers.raw_items()))
                elif type(event) is h11.Data:
                    body += event.data
                elif type(event) is h11.EndOfMessage:
                    if event.headers:
                        return "trailers"
                    return informational, head, body, "end"
    except (h11.RemoteProtocolError, ProtocolError):
        return "error"
    return informational, head, body, "incomplete"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


class ResponseReadingTests(SynchronousTestCase):
    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(responses(), st.lists(st.integers(0, 400), max_size=4), st.booleans())
    def test_reads_what_h11_reads(self, response, cuts, upgrade):
        method, data, eof = response
        headers = [(b"host", b"api")] + ([(b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1")] if upgrade else [])
        theirs = h11.Connection(h11.CLIENT)
        theirs.send(h11.Request(method=method, target=b"/", headers=headers))
        theirs.send(h11.EndOfMessage())
        ours = ClientConnection()
        ours.send_request(method, b"/", headers)
        ours.send_end()
        pieces = split(data, cuts)
        expected = read_all(theirs.next_event, theirs.receive_data, pieces, eof)
        got = read_all(ours.next_event, ours.receive_data, pieces, eof)
        if got == "error":  # stricter than h11 is allowed; laxer is not
            return
        self.assertNotIn(expected, ("error", "trailers"), data)
        self.assertEqual(got, expected, data)
        if got[-1] in ("end", "switched"):
            self.assertEqual((ours.our_state, ours.their_state), (theirs.our_state, theirs.their_state))
            self.assertEqual(ours.trailing_data, theirs.trailing_data)

    def test_keep_alive_cycle(self):
        ours = ClientConnection()
        ours.send_request(b"GET", b"/", [(b"host", b"api")])
        ours.send_end()
        ours.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(type(ours.next_event()), h11.Response)
        self.assertEqual(ours.next_event(), h11.Data(data=b"ok"))
        self.assertEqual(type(ours.next_event()), h11.EndOfMessage)
        self.assertEqual((ours.our_state, ours.their_state), (h11.DONE, h11.DONE))
        ours.start_next_cycle()
        self.assertEqual((ours.our_state, ours.their_state), (h11.IDLE, h11.IDLE))

    def test_a_101_nobody_asked_for_is_refused(self):
        ours = ClientConnection()
        ours.send_request(b"GET", b"/", [(b"host", b"api")])
        ours.send_end()
        ours.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
        self.assertRaises(ProtocolError, ours.next_event)
