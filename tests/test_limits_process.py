"""Listener limits of a real ``twistd -n teleport`` (auth + proxy): a TCP
connection that never starts TLS is closed within the handshake timeout on
both ports, an oversized or slow request head gets a clear error, and a
client that keeps sending a huge head is cut off instead of read to the end.
Clients are plain sockets (stdlib ssl) in threads, as a scanner or a
misbehaving client would be."""
from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support.clients import read_until_closed
from tests.support.procs import ManagedProcess, free_port

BIN = os.path.dirname(sys.executable)
HANDSHAKE_TIMEOUT = 1.0
READ_HEADER_TIMEOUT = 2.0
#: Generous: the machine may be loaded; what matters is "closed", not "how fast".
SLACK = 15.0


def _seconds_until_closed(port: int, send: bytes = b"") -> float:
    """Connect, send ``send`` (maybe nothing), wait until the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(HANDSHAKE_TIMEOUT + SLACK)
        if send:
            sock.sendall(send)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


def _tls(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test checks what the server answers, not who it is
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_HEADER_TIMEOUT + SLACK)
    return context.wrap_socket(sock, server_hostname="localhost")


def _answer(sock: ssl.SSLSocket) -> tuple[int, dict]:
    head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _oversized_head(port: int) -> tuple[int, dict]:
    with _tls(port) as sock:
        sock.sendall(b"GET /webapi/ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        return _answer(sock)


def _slow_head(port: int) -> tuple[int, dict, float]:
    with _tls(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /webapi/ping HTTP/1.1\r\n")
        code, body = _answer(sock)
        return code, body, time.monotonic() - started


def _endless_head(port: int, cap: int) -> tuple[int, str]:
    """Send one header line until the server stops us; how much went, and how it ended."""
    sent = 0
    chunk = b"a" * (1 << 20)
    with _tls(port) as sock:
        sock.sendall(b"GET /webapi/ping HTTP/1.1\r\nX-Big: ")
        try:
            while sent < cap:
                sock.sendall(chunk)
                sent += len(chunk)
        except (OSError, ssl.SSLError) as e:
            return sent, type(e).__name__
    return sent, "not stopped"


class ListenerLimitsProcessTests(TestCase):
    timeout = 180

    async def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.auth_port, self.proxy_port = free_port(), free_port()
        config = os.path.join(self.dir, "teleport.yaml")
        with open(config, "w") as f:
            f.write(
                "version: v3\n"
                "teleport:\n"
                f"  nodename: limits\n  data_dir: {self.dir}/data\n"
                "  connection_limits:\n"
                f"    handshake_timeout: {HANDSHAKE_TIMEOUT:g}s\n"
                f"    read_header_timeout: {READ_HEADER_TIMEOUT:g}s\n"
                f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_port}', cluster_name: example}}\n"
                f"proxy_service: {{web_listen_addr: '127.0.0.1:{self.proxy_port}'}}\n"
            )
        self.proc = ManagedProcess(
            [os.path.join(BIN, "twistd"), "--pidfile=", "-n", "teleport", "--config", config],
            os.path.join(self.dir, "teleport.log"), cwd=self.dir,
        )
        self.proc.start()
        self.addCleanup(self.proc.stop)
        await self.proc.wait_for_port(self.proxy_port, timeout=60)
        await self.proc.wait_for_port(self.auth_port, timeout=60)

    async def test_a_connection_that_never_starts_tls_is_closed_on_both_ports(self):
        for port in (self.proxy_port, self.auth_port):
            seconds = await deferToThread(_seconds_until_closed, port)
            self.assertLess(seconds, HANDSHAKE_TIMEOUT + SLACK, f"port {port} kept a silent connection")
        self.assertIn(b"TLS handshake not completed in 1.0 s", self.proc.output())

    async def test_plain_http_on_the_tls_port_is_closed(self):
        seconds = await deferToThread(_seconds_until_closed, self.proxy_port, b"GET / HTTP/1.1\r\n\r\n")
        self.assertLess(seconds, HANDSHAKE_TIMEOUT + SLACK)

    async def test_an_oversized_head_gets_431_on_both_ports(self):
        for port in (self.proxy_port, self.auth_port):
            code, body = await deferToThread(_oversized_head, port)
            self.assertEqual(code, 431)
            self.assertEqual(body["error"]["message"], "the request head is larger than 16384 bytes")

    async def test_a_slow_head_gets_408(self):
        code, body, seconds = await deferToThread(_slow_head, self.proxy_port)
        self.assertEqual(code, 408)
        self.assertIn("did not arrive within 2 s", body["error"]["message"])
        self.assertGreaterEqual(seconds, READ_HEADER_TIMEOUT * 0.9)

    async def test_a_head_without_end_is_not_read_to_its_end(self):
        cap = 1 << 30
        sent, ended = await deferToThread(_endless_head, self.proxy_port, cap)
        self.assertNotEqual(ended, "not stopped", "the proxy read 1 GiB of one header line")
        self.assertLess(sent, cap)
        # The proxy is still serving.
        code, _ = await deferToThread(_oversized_head, self.proxy_port)
        self.assertEqual(code, 431)
