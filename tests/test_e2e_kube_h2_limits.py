"""The agent's HTTP/2 limits (and HTTP/1.1's head deadline) end to end: raw h2 clients through the real
proxy, reverse tunnel and agent to a real kube-apiserver. A header block
left unfinished ends its connection after the agent's
``read_header_timeout`` (audited as a request cut short, 408; an HTTP/1.1
head too, with its method and target), a rapid
reset flood ends its connection (GOAWAY ENHANCE_YOUR_CALM, audited 429), a
connection with no request is closed after ``idle_timeout`` (not audited),
and all the while another kubectl connection is served."""
from __future__ import annotations

import glob
import os
import ssl
import time

import h2.config
import h2.connection
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame
from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.e2e import Deployment, coroutine_test
from tests.support.raw_requests import Endpoint, RawRequest, send

PODS = b"/api/v1/namespaces/default/pods"
HEAD_SECONDS, IDLE_SECONDS = 2, 4
#: More than the agent's reset burst (kube/h2_guard.py RESET_BURST), sent at once.
RESETS = 1500


def _open(endpoint: Endpoint) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    sock = endpoint.connect("h2", timeout=30)
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _until_closed(sock: ssl.SSLSocket, timeout: float) -> tuple[list[Frame], float]:
    """The frames the agent sent until the connection ended, and how long that took."""
    started, data = time.monotonic(), b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ssl.SSLError, ConnectionError):
        pass
    elapsed = time.monotonic() - started
    sock.close()
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames, elapsed


def _goaway(frames: list[Frame]) -> GoAwayFrame:
    (goaway,) = [frame for frame in frames if isinstance(frame, GoAwayFrame)]
    return goaway


def _request_headers(endpoint: Endpoint) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", endpoint.server_name.encode()),
            (b":path", PODS)]


class HTTP2LimitsEndToEndTests(TestCase):
    timeout = 600

    def served(self, endpoint: Endpoint) -> None:
        response = send(endpoint, RawRequest(b"GET", PODS, http2=True))
        self.assertEqual(response.status, 200, response.body[:300])

    def unfinished_header_block(self, endpoint: Endpoint) -> None:
        sock, conn = _open(endpoint)
        block = conn.encoder.encode(_request_headers(endpoint))
        sock.sendall(HeadersFrame(1, data=block[:4]).serialize())  # no END_HEADERS, and nothing more
        self.served(endpoint)  # meanwhile, another connection is served
        frames, elapsed = _until_closed(sock, timeout=60)
        self.assertGreaterEqual(elapsed, HEAD_SECONDS - 1)
        goaway = _goaway(frames)
        self.assertEqual(goaway.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertIn(b"did not arrive within 2 s", goaway.additional_data)

    def unfinished_http1_head(self, endpoint: Endpoint) -> None:
        sock = endpoint.connect("http/1.1", timeout=30)
        sock.sendall(b"GET " + PODS + b"?watch=1 HTTP/1.1\r\nhost: kube\r\n")  # no blank line, and nothing more
        started, data = time.monotonic(), b""
        sock.settimeout(60)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ssl.SSLError, ConnectionError):
            pass
        sock.close()
        self.assertGreaterEqual(time.monotonic() - started, HEAD_SECONDS - 1)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:200])

    def rapid_reset(self, endpoint: Endpoint) -> None:
        sock, conn = _open(endpoint)
        for _ in range(RESETS):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, _request_headers(endpoint), end_stream=True)
            conn.reset_stream(stream, ErrorCodes.CANCEL)
        try:
            sock.sendall(conn.data_to_send())
        except (ssl.SSLError, ConnectionError):
            pass  # the agent may have closed while the flood was still being sent
        frames, _ = _until_closed(sock, timeout=60)
        self.assertEqual(_goaway(frames).error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def idle(self, endpoint: Endpoint) -> None:
        sock, _ = _open(endpoint)
        frames, elapsed = _until_closed(sock, timeout=60)
        self.assertGreaterEqual(elapsed, IDLE_SECONDS - 1)
        self.assertEqual(_goaway(frames).error_code, ErrorCodes.NO_ERROR)

    @coroutine_test
    async def test_stalled_heads_floods_and_idle_connections_end_and_others_are_served(self):
        d = Deployment(self, self.mktemp())
        d.agent_teleport_settings = (f"  connection_limits: {{read_header_timeout: {HEAD_SECONDS}s, "
                                     f"idle_timeout: {IDLE_SECONDS}s}}\n")
        await d.start()
        await d.login_with_kube_access()
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        endpoint = Endpoint("127.0.0.1", d.proxy_port, "kube-teleport-proxy-alpn.teleport.cluster.local",
                            ca_file=os.path.join(keys, "host_ca.pem"), key_file=os.path.join(keys, "key.pem"),
                            cert_file=os.path.join(keys, "kube", "my-cluster", "cert.pem"))
        await threads.deferToThread(self.served, endpoint)
        before = len(await d.events("kube.request"))

        await threads.deferToThread(self.unfinished_header_block, endpoint)
        await threads.deferToThread(self.unfinished_http1_head, endpoint)
        await threads.deferToThread(self.rapid_reset, endpoint)
        await threads.deferToThread(self.idle, endpoint)
        await threads.deferToThread(self.served, endpoint)  # the agent serves on
        # kubectl itself, over h2 as client-go speaks it.
        out = (await d.kubectl("get", "pods", "-n", "default", "-o", "name")).out
        self.assertNotIn("error", out.lower())

        def refusals(events):
            return [e for e in events[before:] if e.get("response_code") in (408, 429)]
        events = await d.wait_for_events("kube.request", until=lambda e: len(refusals(e)) >= 3)
        cut = {e["reason"].partition(":")[0] + str(e["response_code"]): e for e in refusals(events)}
        self.assertEqual(cut["HTTP/2408"]["reason"],
                         f"HTTP/2: the request head did not arrive within {HEAD_SECONDS} s")
        self.assertEqual((cut["HTTP/2408"]["user"], cut["HTTP/2408"]["success"],
                          cut["HTTP/2408"].get("request_path", "")), ("alice", False, ""))
        self.assertEqual(cut["HTTP/1.1408"]["reason"],
                         f"HTTP/1.1: the request head did not arrive within {HEAD_SECONDS} s")
        self.assertEqual((cut["HTTP/1.1408"]["http_method"], cut["HTTP/1.1408"]["request_path"]),
                         ("GET", (PODS + b"?watch=1").decode()))
        self.assertIn("rapid reset", cut["HTTP/2429"]["reason"])
        # The idle connection left no event: only the three refusals, and the requests served.
        self.assertEqual(len(refusals(events)), 3)
        self.assertEqual(sorted({e["response_code"] for e in events[before:]} - {200}), [408, 429])
