"""A blocking HTTP/2 client for the benches, speaking as client-go does.

kubectl (client-go) takes h2 whenever the server offers it in ALPN and runs
every request of a process, watches included, as streams of one connection.
To measure that path, this client sends what Go's HTTP/2 transport sends:
SETTINGS with ENABLE_PUSH 0 and a 4 MiB stream window, a connection window
opened to 1 GiB, a stream's window handed back once 4 KiB of it are read, and
at most the server's MAX_CONCURRENT_STREAMS streams on one connection (1,000
when the server names no limit). One connection belongs to one thread.
"""
from __future__ import annotations

import ssl

import attr
import h2.config
import h2.connection
import h2.events
import h2.settings

#: Go's http2 transport defaults (transportDefaultStreamFlow, ...ConnFlow,
#: ...StreamMinRefresh, defaultMaxConcurrentStreams, maxHeaderListSize).
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 1 << 30
STREAM_REFRESH = 4 << 10
STREAMS_WHEN_UNLIMITED = 1000
MAX_HEADER_LIST_SIZE = 10 << 20

#: What kubectl offers in its TLS ClientHello.
KUBECTL_ALPN = ["h2", "http/1.1"]


class NotNegotiated(Exception):
    """The server did not pick h2: there is no silent fallback to HTTP/1.1."""

    def __init__(self, negotiated: str | None):
        super().__init__(f"server negotiated {negotiated or 'no ALPN protocol'}, not h2")
        self.negotiated = negotiated


class ConnectionLost(Exception):
    """The server closed the connection or sent GOAWAY."""


@attr.define
class Response:
    status: int | None = None
    body: bytearray = attr.Factory(bytearray)
    ended: bool = False
    reset: bool = False
    unacknowledged: int = 0


class H2Connection:
    """One HTTP/2 connection over a TLS socket that negotiated h2."""

    def __init__(self, sock: ssl.SSLSocket, authority: str, headers: tuple[tuple[str, str], ...] = ()):
        negotiated = sock.selected_alpn_protocol()
        if negotiated != "h2":
            sock.close()
            raise NotNegotiated(negotiated)
        self.sock, self.authority, self.headers = sock, authority, headers
        self.responses: dict[int, Response] = {}
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        self.connection_unacknowledged = 0
        self.owing: set[int] = set()  # streams with read bytes not yet handed back
        self.server_settings_seen = False
        self._flush()
        # Like Go's transport, learn the server's stream limit before using it.
        while not self.server_settings_seen:
            self.read()

    @property
    def stream_limit(self) -> int:
        limit = self.conn.remote_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
        return STREAMS_WHEN_UNLIMITED if limit is None else limit

    def can_open(self) -> bool:
        return self.conn.open_outbound_streams < self.stream_limit

    def start(self, method: str, path: str, body: bytes | None = None) -> int:
        """Send one request; its response collects in ``responses[stream_id]``."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "https"), (":authority", self.authority), (":path", path),
                   *self.headers]
        if body:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.responses[stream_id] = Response()
        self._flush()
        return stream_id

    def read(self) -> list[int]:
        """Block for one read; the ids of the streams it ended."""
        return self._handle(self.sock.recv(65536))

    def poll(self) -> list[int]:
        """Read whatever has arrived, without blocking (a partial TLS record
        or a session ticket alone is nothing to read yet)."""
        ended = []
        timeout = self.sock.gettimeout()
        while True:
            self.sock.settimeout(0)
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return ended
            finally:
                self.sock.settimeout(timeout)
            ended += self._handle(data)

    def _handle(self, data: bytes) -> list[int]:
        if not data:
            raise ConnectionLost("server closed the connection")
        ended = []
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id].status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                response = self.responses[event.stream_id]
                response.body += event.data
                response.unacknowledged += event.flow_controlled_length
                self.connection_unacknowledged += event.flow_controlled_length
                self.owing.add(event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                response = self.responses[event.stream_id]
                response.ended, response.reset = True, isinstance(event, h2.events.StreamReset)
                ended.append(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.server_settings_seen = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise ConnectionLost(f"GOAWAY {event.error_code!r}")
        self._acknowledge()
        self._flush()
        return ended

    def fetch(self, method: str, path: str, body: bytes | None = None) -> bytes:
        stream_id = self.start(method, path, body)
        while not self.responses[stream_id].ended:
            self.read()
        return self.finish(stream_id, method, path)

    def finish(self, stream_id: int, method: str = "GET", path: str = "") -> bytes:
        """An ended stream's body; an error status or a reset raises."""
        response = self.responses.pop(stream_id)
        if response.reset or response.status is None or response.status >= 300:
            raise RuntimeError(f"h2 {method} {path}: status {response.status}, reset {response.reset}, "
                               f"{bytes(response.body[:300])!r}")
        return bytes(response.body)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except OSError:
            pass
        self.sock.close()

    def _acknowledge(self) -> None:
        """Hand read bytes back as Go does: a stream's after 4 KiB, the
        connection's once half of its window is used."""
        for stream_id in list(self.owing):
            response = self.responses[stream_id]
            if response.ended:
                self.owing.discard(stream_id)
            elif response.unacknowledged >= STREAM_REFRESH:
                self.conn.increment_flow_control_window(response.unacknowledged, stream_id)
                response.unacknowledged = 0
                self.owing.discard(stream_id)
        if self.connection_unacknowledged >= CONNECTION_WINDOW // 2:
            self.conn.increment_flow_control_window(self.connection_unacknowledged)
            self.connection_unacknowledged = 0

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)
