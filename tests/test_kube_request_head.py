"""The strict request head parser, checked differentially against h11: it
accepts only what h11 accepts, yields what h11 yields, and refuses whatever
h11 refuses (kube/request_head.py)."""
from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.request_head import MAX_HEAD, HeadError, RequestHead, parse_request_head, started_request_line

KUBECTL_GET = (b"GET /api/v1/namespaces/default HTTP/1.1\r\nHost: 127.0.0.1:3026\r\n"
               b"User-Agent: kubectl/v1.32.0 (linux/amd64) kubernetes/abc\r\n"
               b"Accept: application/json, */*\r\nAccept-Encoding: gzip\r\n\r\n")


def h11_outcome(data: bytes):
    """h11's Request (as a RequestHead) and the bytes it left, or "incomplete" or "error"."""
    http = h11.Connection(h11.SERVER)
    if data:  # no bytes would be the end of the connection
        http.receive_data(data)
    try:
        event = http.next_event()
    except h11.RemoteProtocolError:
        return "error"
    if event is h11.NEED_DATA:
        return "incomplete"
    assert type(event) is h11.Request, event
    headers = tuple((name, value) for name, value in event.headers)
    framing = dict(headers)
    head = RequestHead(event.method, event.target, event.http_version, headers,
                       int(framing.get(b"content-length", 0)), framing.get(b"transfer-encoding") == b"chunked")
    return head, len(data) - len(http._receive_buffer)


def our_outcome(data: bytes):
    try:
        parsed = parse_request_head(data)
    except HeadError:
        return "error"
    return "incomplete" if parsed is None else parsed


def assert_agrees(data: bytes) -> None:
    """Ours is h11's answer, or an error where h11 is more lenient."""
    ours, theirs = our_outcome(data), h11_outcome(data)
    if ours == "error":
        return
    assert ours == theirs, (data, ours, theirs)


def usually(good: list, bad: list):
    """Mostly a good choice, so that many heads are accepted and compared."""
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(good if n < 9 else bad))


@st.composite
def heads(draw) -> bytes:
    """Request heads near kubectl's, then maybe damaged: every rule is hit."""
    method = draw(usually([b"GET", b"POST", b"PATCH"], [b"get", b"G{T", b"", b"GET "]))
    target = draw(usually([b"/api/v1/namespaces/default", b"/", b"/a?b=c&d", b"*", b"http://h/x"],
                          [b"/a b", b"/\x7f", b"/\xff", b""]))
    version = draw(usually([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"HTTP/1.10", b"http/1.1", b"HTTP/1"]))
    out = draw(usually([b""], [b"\r\n", b"\n", b" "])) + method + b" " + target + b" " + version
    out += draw(usually([b"\r\nHost: 127.0.0.1:3026"], [b""]))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(usually([b"content-length", b"Transfer-Encoding", b"Accept", b"X-A", b"User-Agent"],
                            [b"Content-Length", b"host", b"Connection", b"Upgrade", b"H\x00", b"A B", b"A\tB", b"", b"Host "]))
        value = draw(usually([b"x", b"127.0.0.1:3026", b"0", b"5", b"chunked", b"a b", b" x ", b"\x80\xff", b""],
                             [b"05", b"5, 5", b"5,6", b"-1", b"1" * 21, b"Chunked", b"gzip, chunked", b"chunked, gzip",
                              b"identity", b"a  \t b", b"\x7f", b"a\x01b", b"a\rb", b"a\nb", b"a\x00b", b"\x0b"]))
        colon = draw(usually([b":", b": ", b":\t"], [b" :", b""]))
        out += draw(usually([b"\r\n"], [b"\n", b"\r", b"\r\n ", b"\r\n\t", b" \r\n"])) + name + colon + value
    out += draw(usually([b"\r\n\r\n"], [b"\n\n", b"\r\n\n", b"\n\r\n", b"\r\n", b""]))
    out += draw(st.binary(max_size=6))
    for position, byte in draw(st.lists(st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=1)),
                                        max_size=draw(st.sampled_from([0, 0, 0, 1, 2])))):
        position %= len(out) + 1
        out = out[:position] + byte + out[position + 1:]
    return out


class DifferentialTests(SynchronousTestCase):
    @settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(heads())
    def test_agrees_with_h11(self, data):
        assert_agrees(data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=80))
    def test_agrees_with_h11_on_any_bytes(self, data):
        assert_agrees(b"GET / HTTP/1.1\r\nHost: x\r\n" + data)
        assert_agrees(data)

    @settings(max_examples=300, deadline=None)
    @given(heads(), st.integers(0, 200))
    def test_incomplete_is_never_a_head(self, data, cut):
        """A prefix is incomplete or refused, never a different head."""
        whole = our_outcome(data)
        prefix = our_outcome(data[:cut])
        if prefix not in ("incomplete", "error"):
            self.assertEqual(prefix[0], whole[0])


class KubectlTests(SynchronousTestCase):
    def test_kubectl_get(self):
        head, used = parse_request_head(KUBECTL_GET + b"next")
        self.assertEqual((head.method, head.target, head.http_version), (b"GET", b"/api/v1/namespaces/default", b"1.1"))
        self.assertEqual(head.header(b"host"), b"127.0.0.1:3026")
        self.assertEqual((head.content_length, head.chunked), (0, False))
        self.assertEqual(used, len(KUBECTL_GET))
        self.assertEqual(h11_outcome(KUBECTL_GET), (head, used))

    def test_incomplete(self):
        for cut in range(len(KUBECTL_GET)):
            self.assertIsNone(parse_request_head(KUBECTL_GET[:cut]))

    def test_refused_where_h11_is_lenient(self):
        """Ambiguous framing h11 tolerates is refused here."""
        base = b"POST / HTTP/1.1\r\nHost: x\r\n"
        for extra in [b"Content-Length: 5\r\nContent-Length: 5\r\n", b"Content-Length: 5, 5\r\n",
                      b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"X: a\r\n b\r\n"]:
            self.assertRaises(HeadError, parse_request_head, base + extra + b"\r\n")
        self.assertRaises(HeadError, parse_request_head, b"GET / HTTP/1.1\nHost: x\n\n")
        self.assertRaises(HeadError, parse_request_head, b"GET / HTTP/1.1\nHost: x")

    def test_refused_as_h11_refuses(self):
        for head in [b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                     b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"\r\nGET / HTTP/1.1\r\n\r\n"]:
            self.assertEqual(h11_outcome(head), "error", head)
            self.assertRaises(HeadError, parse_request_head, head)

    def test_too_long(self):
        """Refused once past the limit, complete or not (h11 refuses only incomplete ones)."""
        long_head = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD
        self.assertRaises(HeadError, parse_request_head, long_head)
        self.assertRaises(HeadError, parse_request_head, long_head + b"\r\n\r\n")


class StartedRequestLineTests(SynchronousTestCase):
    """What a head that never finished held, for its audit event."""

    def test_the_method_and_target_as_far_as_they_arrived(self):
        self.assertEqual(started_request_line(b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nhost: x\r\n"),
                         (b"GET", b"/api/v1/pods?watch=1"))
        self.assertEqual(started_request_line(b"GET /api/v1/po"), (b"GET", b"/api/v1/po"))
        self.assertEqual(started_request_line(b"DELETE "), (b"DELETE", b""))
        self.assertEqual(started_request_line(b"GE"), (b"", b""))
        self.assertEqual(started_request_line(b""), (b"", b""))

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(heads(), st.integers(min_value=0, max_value=400))
    def test_any_prefix_of_a_head_gives_a_prefix_of_its_request_line(self, head, cut):
        method, target = started_request_line(head[:cut])
        line = head.split(b"\r\n", 1)[0]
        self.assertTrue(line.startswith(method + b" " + target) if method else target == b"")
