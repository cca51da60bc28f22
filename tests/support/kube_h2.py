"""kubectl's HTTP/2 side and the API server's HTTP/1.1 side of the agent's
HTTP/2 front (kube/http2.py), on in-memory transports: a real h2 client
connection whose bytes go straight into the front, and a pool of in-memory
HTTP/1.1 connections a test reads requests from and answers on."""
from __future__ import annotations

import h11
import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame
from twisted.internet.testing import StringTransport

from teleport_py.kube.http1_client import ClientConnection
from teleport_py.kube.upstream_h2 import H2NotSupported

PODS = b"/api/v1/namespaces/default/pods"
WATCH = PODS + b"?watch=1"


class FakeAPIConnection:
    """A pooled API server connection: what the exchange wrote, and a way to answer."""

    def __init__(self):
        self.http = ClientConnection()
        self.transport = StringTransport()
        self.exchange = None
        self.given_back = False

    def lend(self, exchange):
        self.exchange = exchange

    def give_back(self):
        self.given_back = True

    def next_cycle_read_as_is(self):
        self.http = ClientConnection()

    def request(self) -> tuple[h11.Request, bytes]:
        server = h11.Connection(h11.SERVER)
        server.receive_data(self.transport.value())
        request, body = server.next_event(), b""
        while type(event := server.next_event()) is h11.Data:
            body += event.data
        return request, body

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.request()[0].headers if n == name]

    def answer(self, data: bytes):
        self.exchange.dataReceived(data)


class FakePool:
    def __init__(self):
        self.connections: list[FakeAPIConnection] = []

    async def acquire(self, fresh=False):
        connection = FakeAPIConnection()
        self.connections.append(connection)
        return connection


class HTTP11OnlyAPIServer:
    """The cluster's HTTP/2 pool when the API server did not negotiate h2:
    watches then fall back to the HTTP/1.1 pool, where these tests see them."""

    def __init__(self):
        self.requests: list[bytes] = []

    async def request(self, method, target, headers, receiver, end_stream=True):
        self.requests.append(target)
        raise H2NotSupported("the API server did not negotiate h2 (ALPN)")


def json_response(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status, len(body), body)


class Kubectl:
    """kubectl's side: a real h2 client wired to the agent's front."""

    def __init__(self, front, *, window: int | None = None, validate: bool = True):
        self.front = front
        self.transport = StringTransport()
        front.makeConnection(self.transport)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.events: list = []
        self.pump()

    def pump(self):
        """Exchange bytes both ways until both sides are quiet."""
        while True:
            out = self.h2.data_to_send()
            if out:
                self.front.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.events += self.h2.receive_data(back)
            if not out and not back:
                return

    def request(self, method: bytes, path: bytes, *headers, body: bytes | None = None) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", method), (b":scheme", b"https"), (b":path", path),
                                         (b":authority", b"proxy"), *headers], end_stream=body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.pump()
        return stream_id

    def response(self, stream_id: int) -> tuple[int | None, bytes, bool]:
        """(status, body so far, ended) of one stream."""
        status, body, ended = None, b"", False
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        return status, body, ended

    def raw_frames(self) -> list:
        """The frames the agent sent since the last read, parsed one by one:
        h2's client reads nothing after a GOAWAY, kubectl (Go) does."""
        data, frames = self.transport.value(), []
        self.transport.clear()
        while data:
            frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9:9 + length]))
            frames.append(frame)
            data = data[9 + length:]
        return frames

    def was_reset(self, stream_id: int) -> bool:
        return any(isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id for e in self.events)
