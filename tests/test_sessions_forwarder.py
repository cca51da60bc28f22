"""Upgrades through the agent's forwarder on real sockets: the recording relay
carries a kubectl-like SPDY exec both ways unchanged, refusals are Status
answers and audited, unrecordable or garbled sessions end alone."""
from __future__ import annotations

import json
import os

import h11
from twisted.internet import defer, reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.sessions import SessionRecorder
from teleport_py.pki import server_tls_options
from teleport_py.recording.format import read_all
from teleport_py.recording.spool import RecordingSpool
from teleport_py.remotecommand import CLIENT
from teleport_py.resources.role import KubernetesResource
from tests.support.conversations import spdy_exec_conversation
from tests.support.kube import AgentHarness, FakeRoles, credentials, role
from tests.support.pki import API_CERT, API_KEY, KUBE_CA, USER_CA, user_cert_pem

EXEC = b"/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&stdout=true&tty=true"
UPGRADE = ((b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1"),
           (b"x-stream-protocol-version", b"v4.channel.k8s.io"))


class SpdyUpstream(Protocol):
    """An API server that answers 101 (v4) and then lets the test speak for it."""

    def connectionMade(self):
        self.http = h11.Connection(h11.SERVER)
        self.received = b""
        self.switched = False
        self.arrived = defer.Deferred()
        self.lost = defer.Deferred()
        self.factory.instances.append(self)

    def dataReceived(self, data):
        if self.switched:
            self.received += data
            arrived, self.arrived = self.arrived, defer.Deferred()
            arrived.callback(None)
            return
        self.http.receive_data(data)
        while (event := self.http.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            pass
        if event is h11.PAUSED:
            self.switched = True
            self.transport.write(self.http.send(h11.InformationalResponse(status_code=101, headers=[
                (b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1"),
                (b"x-stream-protocol-version", b"v4.channel.k8s.io")])))

    def connectionLost(self, reason):
        self.lost.callback(None)

    async def until(self, length: int):
        while len(self.received) < length:
            await self.arrived


class SessionForwarderTests(AgentHarness, TestCase):
    async def start(self, roles=None, record=True):
        self.upstreams = Factory.forProtocol(SpdyUpstream)
        self.upstreams.instances = []
        tls = server_tls_options(API_CERT, API_KEY, trusted_cas=[KUBE_CA.certificate], require_client_certificate=True)
        api = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TLSMemoryBIOFactory(tls, False, self.upstreams))
        self.addCleanup(api.stopListening)
        self.directory = self.mktemp()
        spool = RecordingSpool(reactor, self.directory, upload=None, stored=None,
                               run_blocking=lambda f, *a: maybeDeferred(f, *a))
        spool.stop()
        sessions = SessionRecorder(reactor, self.audit.append, spool) if record else None
        cluster = KubeCluster("c1", {"env": "dev"}, credentials(api.getHost().port))
        self.acceptor = StreamAcceptor(reactor, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                                   roles=RoleCache(reactor, (roles or self.roles).fetch), emit=self.audit.append,
                                   sessions=sessions)

    async def upgraded(self):
        client = await self.connect()
        client.transport.write(self.request(b"POST", EXEC, *UPGRADE))
        await client.until(b"\r\n\r\n")
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101"))
        head = len(client.received)
        (upstream,) = self.upstreams.instances
        return client, upstream, head

    def test_exec_session_is_relayed_recorded_and_audited(self):
        async def go():
            await self.start()
            client, upstream, head = await self.upgraded()
            conversation = spdy_exec_conversation()
            sent = {CLIENT: 0, "server": 0}
            for direction, data in conversation.chunks:
                sent[direction] += len(data)
                if direction == CLIENT:
                    client.transport.write(data)
                    await upstream.until(sent[CLIENT])
                else:
                    upstream.transport.write(data)
                    while len(client.received) < head + sent["server"]:
                        await client.arrived
            self.assertEqual(upstream.received, conversation.joined(CLIENT))
            self.assertEqual(client.received[head:], conversation.joined("server"))
            upstream.transport.loseConnection()
            await client.lost
            types = [e["event"] for e in self.audit]
            self.assertEqual(types, ["kube.request", "session.start", "resize", "resize", "exec", "session.end"])
            self.assertEqual(self.audit[4]["exitCode"], "3")
            sid = self.audit[1]["sid"]
            while not os.path.exists(os.path.join(self.directory, sid + ".rec")):
                await defer.Deferred(lambda d: None).addTimeout(0.01, reactor).addErrback(lambda f: None)
            with open(os.path.join(self.directory, sid + ".rec"), "rb") as f:
                recording = read_all(f.read())
            self.assertEqual(b"".join(e["data"] for e in recording if e["type"] == "print"), b"$ exit 3\r\n")
        return defer.Deferred.fromCoroutine(go())

    def test_bytes_right_after_the_request_head_are_relayed(self):
        """kubectl may send its first SPDY frames in the same segment as the
        upgrade request: they must reach the API server after the 101."""
        async def go():
            await self.start()
            conversation = spdy_exec_conversation()
            first = next(data for direction, data in conversation.chunks if direction == CLIENT)
            client = await self.connect()
            client.transport.write(self.request(b"POST", EXEC, *UPGRADE) + first)
            await client.until(b"\r\n\r\n")
            self.assertTrue(client.received.startswith(b"HTTP/1.1 101"))
            (upstream,) = self.upstreams.instances
            await upstream.until(len(first))
            self.assertEqual(upstream.received, first)
            client.transport.loseConnection()
            await upstream.lost
        return defer.Deferred.fromCoroutine(go())

    def test_exec_without_the_verb_is_a_status_and_audited(self):
        async def go():
            reader = role("reader", resources=[KubernetesResource(
                kind="pods", namespace="default", name="*", verbs=("get", "list"), api_group="")])
            await self.start(roles=FakeRoles(reader))
            client = await self.connect(user_cert=user_cert_pem(roles=("reader",)))
            client.transport.write(self.request(b"POST", EXEC, *UPGRADE))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 403)
            status = json.loads(body)
            self.assertEqual((status["kind"], status["status"], status["code"]), ("Status", "Failure", 403))
            self.assertIn("exec", status["message"])
            self.assertEqual(self.upstreams.instances, [])
            (event,) = self.audit
            self.assertEqual((event["event"], event["success"], event["verb"], event["response_code"]),
                             ("kube.request", False, "exec", 403))
        return defer.Deferred.fromCoroutine(go())

    def test_without_recording_the_session_is_refused(self):
        async def go():
            await self.start(record=False)
            client = await self.connect()
            client.transport.write(self.request(b"POST", EXEC, *UPGRADE))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 502)
            self.assertIn("cannot be recorded", json.loads(body)["message"])
            (upstream,) = self.upstreams.instances
            await upstream.lost
            self.assertEqual([e.get("response_code") for e in self.audit], [101, 502])
        return defer.Deferred.fromCoroutine(go())

    def test_garbage_after_the_upgrade_ends_only_that_session(self):
        async def go():
            await self.start()
            client, upstream, _ = await self.upgraded()
            client.transport.write(b"\x80\x07\x00\x01\x00\x00\x00\x00 not spdy")
            await client.lost
            await upstream.lost
            self.assertEqual(upstream.received, b"")
            self.assertIn("error", self.audit[-1])
            self.upstreams.instances.clear()
            second, upstream2, _ = await self.upgraded()  # the agent serves on
            second.transport.loseConnection()
            await upstream2.lost
        return defer.Deferred.fromCoroutine(go())
