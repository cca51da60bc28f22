"""
Tests for teleport_py.remotecommand: exit statuses and passive session
observers over SPDY and WebSocket, on kubectl-like conversations.
"""


from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py import spdy, websocket
from teleport_py.remotecommand import (
    CLIENT,
    SERVER,
    Exit,
    ExitStatus,
    PortForwardClosed,
    PortForwardData,
    PortForwardError,
    PortForwardOpened,
    RemoteCommandError,
    Resize,
    SessionObserver,
    Stderr,
    Stdin,
    Stdout,
    StreamClosed,
    parse_error_text,
    parse_status,
)
from tests.support.conversations import EXIT_3, Conversation, port_forward_conversation, spdy_exec_conversation

MASK = b"\xa1\xb2\xc3\xd4"


def observe(observer: SessionObserver, chunks) -> list:
    events = []
    for direction, data in chunks:
        feed = observer.feed_client if direction == CLIENT else observer.feed_server
        events += feed(data)
    return events + observer.finish()


def resplit(chunks, cuts: list[int]):
    """The same bytes, cut elsewhere, as TCP would deliver them."""
    out = []
    for direction, data in chunks:
        points = sorted({cut % (len(data) + 1) for cut in cuts})
        out += [(direction, data[start:end])
                for start, end in zip([0] + points, points + [len(data)])]
    return out


SPDY_EXEC_EVENTS = [
    Resize(120, 40), Resize(80, 24), Stdout(b"$ "), Stdin(b"exit 3\n"),
    Stdout(b"exit 3\r\n"),
    Exit(3, "command terminated with non-zero exit code: exit status 3"),
    StreamClosed("error"), StreamClosed("stdin"), StreamClosed("resize"),
    StreamClosed("stdout"),
]


PORT_FORWARD_EVENTS = [
    PortForwardOpened("0", 8080),
    PortForwardData("0", 8080, "in", b"GET / HTTP/1.1\r\n\r\n"),
    PortForwardOpened("1", 5432),
    PortForwardData("0", 8080, "out", b"HTTP/1.1 200 OK\r\n"),
    PortForwardData("1", 5432, "in", b"\x00\x00\x00\x08"),
    PortForwardError("1", 5432, "error forwarding port 5432 to pod abc"),
    PortForwardData("0", 8080, "out", b"\r\n"),
    PortForwardClosed("0", 8080),
    PortForwardClosed("1", 5432),
]


def websocket_v5_chunks() -> list[tuple[str, bytes]]:
    """kubectl exec -i (no TTY) over WebSocket v5."""
    def client(payload, opcode=websocket.OP_BINARY, fin=True):
        return CLIENT, websocket.encode_frame(opcode, payload, mask=MASK, fin=fin)

    def server(payload, opcode=websocket.OP_BINARY, fin=True):
        return SERVER, websocket.encode_frame(opcode, payload, mask=None, fin=fin)

    big = bytes(range(256)) * 300
    return [
        server(b"\x01"),  # the initial empty message
        client(b"\x00hello"),
        client(b"", websocket.OP_PING),
        server(b"", websocket.OP_PONG),
        client(b"\xff\x00"),  # stdin half-close
        server(b"\x01" + big[:1000], fin=False),
        server(b"ping", websocket.OP_PING),
        server(big[1000:70000], websocket.OP_CONTINUATION, fin=False),
        server(big[70000:], websocket.OP_CONTINUATION),
        server(b"\x02oops\n"),
        client(b"ping", websocket.OP_PONG),
        server(b"\x03" + EXIT_3),
        server(websocket.encode_close(websocket.CLOSE_NORMAL), websocket.OP_CLOSE),
        client(websocket.encode_close(websocket.CLOSE_NORMAL), websocket.OP_CLOSE),
    ]


WEBSOCKET_V5_EVENTS = [
    Stdin(b"hello"), StreamClosed("stdin"),
    Stdout(bytes(range(256)) * 300), Stderr(b"oops\n"),
    Exit(3, "command terminated with non-zero exit code: exit status 3"),
]


def tunnel_chunks(conversation: Conversation, cuts: list[int]):
    """A SPDY byte stream carried in WebSocket binary messages cut anywhere."""
    chunks = []
    for direction, data in resplit(conversation.chunks, cuts):
        mask = MASK if direction == CLIENT else None
        chunks.append((direction, websocket.encode_frame(
            websocket.OP_BINARY, data, mask=mask)))
    return chunks


class StatusTests(SynchronousTestCase):
    def test_v4_statuses(self):
        cases = {
            b'{"metadata":{},"status":"Success"}': ExitStatus(0, ""),
            b"": ExitStatus(0, ""),
            EXIT_3: ExitStatus(3, "command terminated with non-zero exit code: "
                                  "exit status 3"),
            b'{"status":"Failure","message":"pod not found","reason":"NotFound"}':
                ExitStatus(1, "pod not found"),
            b'{"status":"Failure","reason":"NonZeroExitCode","message":"m",'
            b'"details":{"causes":[{"reason":"ExitCode","message":"300"}]}}':
                ExitStatus(1, "m"),
            b'{"status":"Failure","reason":"NonZeroExitCode","message":"m"}':
                ExitStatus(1, "m"),
            b'{"status":"Unknown"}':
                ExitStatus(1, "error stream protocol error: unknown error"),
        }
        for raw, expected in cases.items():
            self.assertEqual(parse_status(raw), expected)

    def test_v4_garbage_is_an_error(self):
        for raw in [b"{", b"[1]", b"\xff", b"[" * 100000]:
            self.assertRaises(RemoteCommandError, parse_status, raw)

    def test_text_statuses(self):
        self.assertEqual(parse_error_text(b""), ExitStatus(0, ""))
        self.assertEqual(parse_error_text(b"exit status 2"),
                         ExitStatus(1, "exit status 2"))


class SpdyExecTests(SynchronousTestCase):
    def test_kubectl_exec_conversation(self):
        events = observe(SessionObserver("v4.channel.k8s.io", "spdy"),
                         spdy_exec_conversation().chunks)
        self.assertEqual(events, SPDY_EXEC_EVENTS)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(0, 10**4), max_size=6))
    def test_any_split_gives_the_same_events(self, cuts):
        chunks = resplit(spdy_exec_conversation().chunks, cuts)
        self.assertEqual(observe(SessionObserver("v4.channel.k8s.io", "spdy"),
                                 chunks), SPDY_EXEC_EVENTS)

    def test_non_tty_stderr_and_text_error_stream(self):
        c = Conversation()
        c.open(1, streamtype="error")
        c.open(3, streamtype="stdout")
        c.open(5, streamtype="stderr")
        c.send(SERVER, spdy.Data(5, b"warning\n"), spdy.Data(1, b"exec failed"))
        events = observe(SessionObserver("v3.channel.k8s.io", "spdy"), c.chunks)
        self.assertEqual(events, [
            Stderr(b"warning\n"), Exit(1, "exec failed"),
            StreamClosed("error"), StreamClosed("stdout"), StreamClosed("stderr")])

    def test_streams_are_mapped_by_header_not_position(self):
        c = Conversation()
        c.open(1, streamtype="stdout")
        c.open(3, streamtype="error")
        c.send(SERVER, spdy.Data(1, b"out"), spdy.Data(3, b"", fin=True))
        events = observe(SessionObserver("v4.channel.k8s.io", "spdy"), c.chunks)
        self.assertEqual(events[:2], [Stdout(b"out"), Exit(0, "")])

    def test_reset_error_stream_without_status_is_no_exit(self):
        c = Conversation()
        c.open(1, streamtype="error")
        c.send(CLIENT, spdy.RstStream(1, spdy.RST_CANCEL))
        events = observe(SessionObserver("v4.channel.k8s.io", "spdy"), c.chunks)
        self.assertEqual(events, [StreamClosed("error")])

    def assertRejected(self, protocol: str, conversation: Conversation):
        observer = SessionObserver(protocol, "spdy")
        self.assertRaises(RemoteCommandError, observe, observer, conversation.chunks)
        self.assertRaises(RemoteCommandError, observer.feed_client, b"")

    def test_rejections(self):
        def conversation(*steps):
            c = Conversation()
            for step in steps:
                step(c)
            return c

        stdin = lambda c: c.open(1, streamtype="stdin")
        for c in [
            conversation(lambda c: c.open(1, streamtype="shell")),
            conversation(lambda c: c.open(1)),
            conversation(stdin, lambda c: c.send(SERVER, spdy.Data(1, b"x"))),
            conversation(lambda c: c.send(CLIENT, spdy.Data(1, b"x"))),
            conversation(lambda c: c.send(SERVER, spdy.SynStream(2, {"streamtype": ["stdout"]}))),
            conversation(stdin, lambda c: c.open(1, streamtype="stdout")),
            conversation(stdin, lambda c: c.send(CLIENT, spdy.Data(1, b"", fin=True),
                                                  spdy.Data(1, b"x"))),
            conversation(lambda c: c.open(1, streamtype="resize"),
                         lambda c: c.send(CLIENT, spdy.Data(1, b'["Width"]'))),
            conversation(lambda c: c.open(1, streamtype="resize"),
                         lambda c: c.send(CLIENT, spdy.Data(1, b'{"Width":-1}'))),
            conversation(lambda c: c.open(1, streamtype="resize"),
                         lambda c: c.send(CLIENT, spdy.Data(1, b'{"Width":' + b"1" * 5000))),
            conversation(lambda c: c.open(1, streamtype="error"),
                         lambda c: c.send(SERVER, spdy.Data(1, b"{", fin=True))),
        ]:
            self.assertRejected("v4.channel.k8s.io", c)

    def test_unsupported_protocol(self):
        for protocol, transport in [("v6.channel.k8s.io", "spdy"),
                                    ("portforward.k8s.io", "websocket"),
                                    ("v4.channel.k8s.io", "http2")]:
            self.assertRaises(RemoteCommandError, SessionObserver, protocol, transport)


class PortForwardTests(SynchronousTestCase):
    def test_two_requests_interleaved_over_spdy(self):
        events = observe(SessionObserver("portforward.k8s.io", "spdy"),
                         port_forward_conversation().chunks)
        self.assertEqual(events, PORT_FORWARD_EVENTS)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(0, 10**4), max_size=6))
    def test_over_websocket_tunnel_cut_anywhere(self, cuts):
        chunks = tunnel_chunks(port_forward_conversation(), cuts)
        observer = SessionObserver("SPDY/3.1+portforward.k8s.io", "websocket")
        self.assertEqual(observe(observer, chunks), PORT_FORWARD_EVENTS)

    def test_rejections(self):
        for headers in [{"streamtype": "data", "port": "80"},
                        {"streamtype": "data", "port": "http", "requestid": "0"},
                        {"streamtype": "data", "port": "70000", "requestid": "0"},
                        {"streamtype": "stdin", "port": "80", "requestid": "0"}]:
            c = Conversation()
            c.open(1, **headers)
            self.assertRaises(RemoteCommandError, observe,
                              SessionObserver("portforward.k8s.io", "spdy"), c.chunks)

    def test_duplicate_data_stream(self):
        c = Conversation()
        c.open(1, streamtype="data", port="80", requestid="0")
        c.open(3, streamtype="data", port="80", requestid="0")
        self.assertRaises(RemoteCommandError, observe,
                          SessionObserver("portforward.k8s.io", "spdy"), c.chunks)

    def test_text_in_tunnel(self):
        observer = SessionObserver("SPDY/3.1+portforward.k8s.io", "websocket")
        self.assertRaises(RemoteCommandError, observer.feed_client,
                          websocket.encode_frame(websocket.OP_TEXT, b"x", mask=MASK))


class WebSocketExecTests(SynchronousTestCase):
    def test_v5_conversation(self):
        events = observe(SessionObserver("v5.channel.k8s.io", "websocket"),
                         websocket_v5_chunks())
        self.assertEqual(events, WEBSOCKET_V5_EVENTS)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(0, 10**5), max_size=6))
    def test_any_split_gives_the_same_events(self, cuts):
        chunks = resplit(websocket_v5_chunks(), cuts)
        self.assertEqual(observe(SessionObserver("v5.channel.k8s.io", "websocket"),
                                 chunks), WEBSOCKET_V5_EVENTS)

    def test_base64_channels(self):
        chunks = [
            (CLIENT, websocket.encode_frame(websocket.OP_TEXT, b"0bHMK", mask=MASK)),
            (CLIENT, websocket.encode_frame(websocket.OP_TEXT,
                                            b"4eyJXaWR0aCI6MTAsIkhlaWdodCI6Mn0=",
                                            mask=MASK)),
            (SERVER, websocket.encode_frame(websocket.OP_TEXT, b"1YQ==", mask=None)),
        ]
        events = observe(SessionObserver("v4.base64.channel.k8s.io", "websocket"),
                         chunks)
        self.assertEqual(events, [Stdin(b"ls\n"), Resize(10, 2), Stdout(b"a")])

    def test_close_without_status(self):
        """A normal close with an empty error channel is success; a dropped
        connection says nothing about the exit status."""
        close = websocket.encode_frame(
            websocket.OP_CLOSE, websocket.encode_close(websocket.CLOSE_NORMAL),
            mask=None)
        self.assertEqual(observe(SessionObserver("v5.channel.k8s.io", "websocket"),
                                 [(SERVER, close)]), [Exit(0, "")])
        self.assertEqual(observe(SessionObserver("v5.channel.k8s.io", "websocket"),
                                 [(SERVER, b"")]), [])

    def test_rejections(self):
        def client(payload, opcode=websocket.OP_BINARY, mask=MASK):
            return CLIENT, websocket.encode_frame(opcode, payload, mask=mask)

        close = websocket.encode_close(websocket.CLOSE_NORMAL)
        for protocol, chunks in [
            ("v5.channel.k8s.io", [client(b"\x00x", mask=None)]),
            ("v5.channel.k8s.io", [client(b"\x00x", websocket.OP_TEXT)]),
            ("v5.channel.k8s.io", [client(b"\x01x")]),
            ("v5.channel.k8s.io", [client(b"\x09x")]),
            ("v5.channel.k8s.io", [client(b"\xff\x09")]),
            ("v5.channel.k8s.io", [(CLIENT, b"\xc2\x80" + MASK)]),  # RSV1
            ("v5.channel.k8s.io", [client(close, websocket.OP_CLOSE), client(b"\x00x")]),
            ("v4.channel.k8s.io", [client(b"\xff\x00")]),
            ("base64.channel.k8s.io", [client(b"0!!!", websocket.OP_TEXT)]),
            ("v4.channel.k8s.io", [(SERVER, websocket.encode_frame(
                websocket.OP_BINARY, b"\x03{", mask=None)),
                (SERVER, websocket.encode_frame(websocket.OP_CLOSE, close, mask=None))]),
        ]:
            observer = SessionObserver(protocol, "websocket")
            self.assertRaises(RemoteCommandError, observe, observer, chunks)


OBSERVED = [
    ("v4.channel.k8s.io", "spdy", spdy_exec_conversation().chunks),
    ("portforward.k8s.io", "spdy", port_forward_conversation().chunks),
    ("v5.channel.k8s.io", "websocket", websocket_v5_chunks()),
    ("SPDY/3.1+portforward.k8s.io", "websocket",
     tunnel_chunks(port_forward_conversation(), [])),
]


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(OBSERVED), st.integers(0, 40),
           st.lists(st.tuples(st.sampled_from([CLIENT, SERVER]),
                              st.binary(max_size=64)), max_size=4))
    def test_junk_after_a_valid_prefix(self, observed, prefix_length, junk):
        """Whatever follows a real conversation, the observer yields events
        or RemoteCommandError, and nothing else."""
        protocol, transport, chunks = observed
        observer = SessionObserver(protocol, transport)
        try:
            observe(observer, chunks[:prefix_length] + junk)
        except RemoteCommandError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(OBSERVED), st.integers(0, 40), st.integers(0, 10**4),
           st.integers(0, 255))
    def test_flipped_byte(self, observed, index, offset, xor):
        protocol, transport, chunks = observed
        chunks = list(chunks)
        direction, data = chunks[index % len(chunks)]
        if data:
            position = offset % len(data)
            data = data[:position] + bytes([data[position] ^ xor]) + data[position + 1:]
        chunks[index % len(chunks)] = (direction, data)
        try:
            observe(SessionObserver(protocol, transport), chunks)
        except RemoteCommandError:
            pass
