"""Who may open a web terminal, on a real proxy and Auth over real TLS: the
WebSocket upgrade needs the session cookie, an Origin that is the proxy's
and the session's CSRF token in the URL; anything else is an HTTP refusal
before any upgrade. An admitted terminal whose cluster is offline is told
so on the error channel and closed. The whole chain (agent, API server,
browser) is tests.test_web_terminal."""
from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from teleport_py.pki import client_tls_options
from teleport_py.quiet import connect_protocol
from teleport_py.websocket import OP_BINARY, OP_CLOSE, FrameParser
from teleport_py.web.terminal_protocol import accept_key
from tests.support.proxy_service import PASSWORD, InProcessProxy
from teleport_py.pki import HostIdentity

PROXY = HostIdentity(host_id="proxy-test", nodename="test", system_role="proxy", teleport_cluster="example")
KEY = base64.b64encode(b"0123456789abcdef").decode()


class _Raw(Protocol):
    """Sends one request head, keeps everything answered until the close."""

    def __init__(self, head: bytes) -> None:
        self.head, self.data, self.closed = head, b"", Deferred()

    def connectionMade(self):
        self.transport.write(self.head)

    def dataReceived(self, data):
        self.data += data
        head, _, body = self.data.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if (length and len(body) >= length[0]) or body.endswith(b"0\r\n\r\n"):  # a whole refusal: done
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed.callback(self.data)


class TerminalUpgradeTests(TestCase):
    timeout = 60

    async def setUp(self):
        self.running = await InProcessProxy.start(self)
        token = await self.running.add_user("alice", ("kube-access",))
        await self.running.auth.users.complete_signup(PROXY, token, PASSWORD)
        response = await self.running.http().post(
            self.running.url("/web/api/login"), json.dumps({"user": "alice", "password": PASSWORD}).encode(),
            headers=Headers({b"content-type": [b"application/json"]}))
        body = json.loads(await readBody(response))
        self.cookie = response.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0].decode()
        self.csrf = body["csrf_token"]
        self.origin = f"https://127.0.0.1:{self.running.proxy_port}"

    def head(self, *, cookie=True, origin=True, csrf=True, protocol="v5.channel.k8s.io", cluster="k8s"):
        query = {"namespace": "default", "pod": "web-0", "container": "app", "command": "sh"}
        if csrf:
            query["csrf"] = self.csrf if csrf is True else csrf
        lines = [f"GET /web/api/kube/{cluster}/exec?{urlencode(query)} HTTP/1.1",
                 f"Host: 127.0.0.1:{self.running.proxy_port}", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {KEY}", f"Sec-WebSocket-Protocol: {protocol}"]
        if cookie:
            lines.append(f"Cookie: {self.cookie}")
        if origin:
            lines.append(f"Origin: {self.origin if origin is True else origin}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def exchange(self, head: bytes) -> bytes:
        tls = client_tls_options("127.0.0.1", trusted_cas=[self.running.host_ca])
        raw = _Raw(head)
        await connect_protocol(SSL4ClientEndpoint(reactor, "127.0.0.1", self.running.proxy_port, tls), raw)
        later = reactor.callLater(20, raw.transport.abortConnection)
        try:
            return await raw.closed
        finally:
            if later.active():
                later.cancel()

    async def refused(self, head: bytes) -> tuple[int, str]:
        answer = await self.exchange(head)
        status = int(answer.split(b" ", 2)[1])
        head, body = answer.split(b"\r\n\r\n", 1)
        if b"transfer-encoding: chunked" in head.lower():
            chunks, body = [], body
            while (size := int(body.split(b"\r\n", 1)[0], 16)):
                rest = body.split(b"\r\n", 1)[1]
                chunks.append(rest[:size])
                body = rest[size + 2:]
            body = b"".join(chunks)
        return status, json.loads(body)["error"]["message"]

    async def test_refused_without_cookie_origin_or_csrf(self):
        self.assertEqual((await self.refused(self.head(cookie=False)))[0], 401)
        self.assertEqual(await self.refused(self.head(origin=False)), (403, "cross-origin request refused"))
        self.assertEqual(await self.refused(self.head(origin="https://evil.example")),
                         (403, "cross-origin request refused"))
        self.assertEqual(await self.refused(self.head(csrf=False)),
                         (403, "missing or wrong CSRF token (csrf); reload the page"))
        self.assertEqual((await self.refused(self.head(csrf="x" * 43)))[0], 403)
        status, message = await self.refused(self.head(protocol="chat"))
        self.assertEqual(status, 400)
        self.assertIn("v5.channel.k8s.io", message)

    async def test_an_offline_cluster_is_said_on_the_error_channel(self):
        await self.running.heartbeat("k8s")  # Auth knows it; no agent's tunnel serves it
        answer = await self.exchange(self.head())
        head, rest = answer.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode(), head)
        frames = FrameParser(expect_masked=False).feed(rest)
        self.assertEqual([f.opcode for f in frames], [OP_BINARY, OP_CLOSE])
        status = json.loads(frames[0].payload[1:])
        self.assertEqual((frames[0].payload[:1], status["status"]), (b"\x03", "Failure"))
        self.assertEqual(status["message"], 'kubernetes cluster "k8s" is offline')

    async def test_a_cluster_auth_does_not_know(self):
        """Auth refuses the kube certificate: nothing is opened to any agent."""
        answer = await self.exchange(self.head(cluster="forbidden-cluster"))
        frames = FrameParser(expect_masked=False).feed(answer.split(b"\r\n\r\n", 1)[1])
        status = json.loads(frames[0].payload[1:])
        self.assertEqual(status["status"], "Failure")
        self.assertEqual((status["code"], status["reason"], status["message"]),
                         (404, "NotFound", 'kubernetes cluster "forbidden-cluster" not found'))
