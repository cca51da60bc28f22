"""Requests sent byte for byte as a test writes them, over HTTP/1.1 or HTTP/2.

kubectl and every HTTP library normalise what they send; a test of how the
agent reads a request target needs the target exactly as written (absolute
form, ``//``, ``%2F``, ``%00``, ...). Blocking sockets: call these from a
thread (``deferToThread``), never on the reactor. One TLS connection per
request, so the connection's local port names the request in the agent's
audit events (``addr_remote``).
"""
from __future__ import annotations

import socket
import ssl
import time

import attrs
import h2.config
import h2.connection
import h2.events
import h11

#: How long a response that has started may take to end: a watch never ends,
#: so its head is all a test reads of it.
TAIL_SECONDS = 0.5


@attrs.frozen
class RawRequest:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    http2: bool = False


@attrs.frozen
class RawResponse:
    """``status`` is None when the connection ended (or was reset) without a response head."""

    status: int | None
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    local_port: int


@attrs.frozen
class Endpoint:
    """Where and as whom to send: a kube SNI on the proxy with a user's kube certificate."""

    host: str
    port: int
    server_name: str
    ca_file: str
    cert_file: str
    key_file: str

    def connect(self, alpn: str, timeout: float) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.set_alpn_protocols([alpn])
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return context.wrap_socket(sock, server_hostname=self.server_name)


def send(endpoint: Endpoint, request: RawRequest, timeout: float = 20.0) -> RawResponse:
    sock = endpoint.connect("h2" if request.http2 else "http/1.1", timeout)
    try:
        port = sock.getsockname()[1]
        if request.http2:
            return _send_h2(sock, endpoint, request, port, timeout)
        return _send_http1(sock, endpoint, request, port, timeout)
    finally:
        sock.close()


def _send_http1(sock, endpoint: Endpoint, request: RawRequest, port: int, timeout: float) -> RawResponse:
    head = [request.method + b" " + request.target + b" HTTP/1.1", b"host: " + endpoint.server_name.encode()]
    head += [name + b": " + value for name, value in request.headers]
    head.append(b"content-length: %d" % len(request.body))
    if not any(name.lower() == b"connection" for name, _ in request.headers):
        head.append(b"connection: close")
    sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + request.body)
    # h11 reads the response once it believes it sent a request of this method.
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method=b"HEAD" if request.method == b"HEAD" else b"GET", target=b"/",
                            headers=[(b"host", b"x")]))
    reader.send(h11.EndOfMessage())
    status, headers, body = None, (), bytearray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = reader.next_event()
        except h11.RemoteProtocolError:
            break
        if event is h11.NEED_DATA:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                reader.receive_data(sock.recv(65536))
            except (OSError, ssl.SSLError):
                break
            continue
        if isinstance(event, h11.Response):
            status, headers = event.status_code, tuple(event.headers)
            deadline = min(deadline, time.monotonic() + TAIL_SECONDS)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    return RawResponse(status, headers, bytes(body), port)


def _send_h2(sock, endpoint: Endpoint, request: RawRequest, port: int, timeout: float) -> RawResponse:
    if sock.selected_alpn_protocol() != "h2":
        return RawResponse(None, (), b"", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.initiate_connection()
    headers = [(b":method", request.method), (b":scheme", b"https"),
               (b":authority", endpoint.server_name.encode()), (b":path", request.target), *request.headers]
    if request.body:
        headers.append((b"content-length", b"%d" % len(request.body)))
    conn.send_headers(1, headers, end_stream=not request.body)
    if request.body:
        conn.send_data(1, request.body, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, response_headers, body = None, (), bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not data:
            break
        try:
            events = conn.receive_data(data)
        except Exception:
            break
        done = False
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                response_headers = tuple(event.headers)
                status = int(dict(response_headers)[b":status"])
                deadline = min(deadline, time.monotonic() + TAIL_SECONDS)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                done = True
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
        if done:
            break
    return RawResponse(status, response_headers, bytes(body), port)
