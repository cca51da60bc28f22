"""The agent's HTTP/1.1 forwarder against a real TLS upstream on 127.0.0.1.

kubectl's side is a plain TCP connection to a listener whose protocols come
from ``StreamAcceptor.accept_stream`` (the same object a tunnel stream would get);
the API server is twisted.web over mutual TLS that records what it received,
or a raw h11 server for upgrades.
"""
from __future__ import annotations

import json
from datetime import timedelta

import attrs
import h11
from twisted.internet import defer, error, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import MAX_UNPARSED_REASON, CheckerCache, RoleCache
from teleport_py.kube.context import Decision, KubeCluster
from teleport_py.kube.http1_client import ClientConnection
from teleport_py.kube.http1_server import IDLE
from teleport_py.kube.upstream import UpstreamRequest
from teleport_py.pki import CertAuthority, UserIdentity, certificate_pem
from teleport_py.rbac import RequestInfo
from teleport_py.tunnel import StreamRejected, TunnelProtocol
from tests.support.kube import AgentHarness, FakeRoles, credentials, kubectl_request, request_context, role
from tests.support.pki import AGENT_CERT, NOW, USER_CA, user_cert_pem


# -- a fake API server ---------------------------------------------------------------


class DropsSecondRequest(Protocol):
    """An API server that answers one request per connection, keeps the
    connection open, and closes it on the next request without answering:
    its idle timeout racing the agent's reuse of the connection."""

    def __init__(self, log):
        self.log = log
        self.http = h11.Connection(h11.SERVER)
        self.answered = 0

    def dataReceived(self, data):
        self.http.receive_data(data)
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.log.append((self, event.method))
                if self.answered:
                    self.transport.loseConnection()
                    return
            elif isinstance(event, h11.EndOfMessage):
                self.answered += 1
                body = b'{"kind":"Namespace"}'
                self.transport.write(self.http.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))])))
                self.transport.write(self.http.send(h11.Data(data=body)) + self.http.send(h11.EndOfMessage()))
                self.http.start_next_cycle()


class ForwarderTests(AgentHarness, TestCase):
    def test_allowed_request_is_impersonated_and_client_credentials_stripped(self):
        async def go():
            await self.start()
            client = await self.connect()
            client.transport.write(self.request(
                b"GET", b"/api/v1/namespaces/default/pods",
                (b"authorization", b"Bearer user-secret"), (b"impersonate-group", b"developers")))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(json.loads(body)["kind"], "PodList")
            self.assertEqual(self.recorder.header(b"impersonate-user"), [b"alice"])
            self.assertEqual(sorted(self.recorder.header(b"impersonate-group")),
                             [b"developers", b"system:authenticated"])
            self.assertEqual(self.recorder.header(b"authorization"), [])
            (event,) = self.audit
            self.assertEqual((event["event"], event["user"], event["verb"], event["response_code"]),
                             ("kube.request", "alice", "list", 200))
            self.assertEqual((event["resource_kind"], event["resource_namespace"]), ("pods", "default"))
            self.assertEqual(event["kubernetes_groups"], ["developers", "system:authenticated"])
            self.assertEqual(event["addr_remote"], "192.0.2.1:5000")
            self.assertTrue(event["success"])
        return defer.Deferred.fromCoroutine(go())

    def test_each_group_is_its_own_header_line_and_token_replaces_client_auth(self):
        async def go():
            await self.start(token="agent-token")
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods/p1",
                                                (b"authorization", b"Bearer user-secret")))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(self.recorder.header(b"authorization"), [b"Bearer agent-token"])
            raw = [n for n, _ in self.recorder.requests[0][2]]
            self.assertEqual(self.recorder.header(b"impersonate-group"),
                             [b"developers", b"system:authenticated"])
            self.assertEqual(raw.count(b"Impersonate-Group"), 1)  # one header, two values
        return defer.Deferred.fromCoroutine(go())

    def test_denied_request_never_reaches_upstream_and_is_audited(self):
        async def go():
            await self.start()
            client = await self.connect()
            client.transport.write(self.request(b"DELETE", b"/api/v1/namespaces/kube-system/pods/x"))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 403)
            status = json.loads(body)
            self.assertEqual((status["kind"], status["code"]), ("Status", 403))
            self.assertIn('pods "x" is forbidden', status["message"])
            self.assertEqual(self.recorder.requests, [])
            (event,) = self.audit
            self.assertFalse(event["success"])
            self.assertEqual((event["response_code"], event["verb"]), (403, "delete"))
            self.assertTrue(event["reason"])
            # The connection stays usable for the next request.
            client.received = b""
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(len(self.recorder.requests), 1)
        return defer.Deferred.fromCoroutine(go())

    def test_other_impersonation_headers_and_disallowed_groups_are_refused(self):
        async def go():
            await self.start()
            for header in ((b"impersonate-uid", b"1"), (b"impersonate-extra-scopes", b"x"),
                           (b"impersonate-group", b"system:masters"), (b"impersonate-user", b"admin")):
                client = await self.connect()
                client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods", header))
                response, body = await self.response(client)
                self.assertEqual(response.status_code, 403, header)
                self.assertIn("impersonation request has been denied", json.loads(body)["message"])
            self.assertEqual(self.recorder.requests, [])
            self.assertEqual(len(self.audit), 4)
        return defer.Deferred.fromCoroutine(go())

    def test_request_body_is_forwarded(self):
        async def go():
            await self.start()
            client = await self.connect()
            body = json.dumps({"kind": "Pod", "metadata": {"name": "p"}}).encode()
            client.transport.write(self.request(b"POST", b"/api/v1/namespaces/default/pods",
                                                (b"content-type", b"application/json"), body=body))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(self.recorder.requests[0][3], body)
        return defer.Deferred.fromCoroutine(go())

    def test_streaming_response_arrives_incrementally(self):
        async def go():
            await self.start()
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods?watch=1"))
            upstream_request = await self.recorder.streaming
            await client.until(b'{"type":"ADDED"}')
            self.assertNotIn(b"MODIFIED", client.received)
            upstream_request.write(b'{"type":"MODIFIED"}\n')
            await client.until(b'{"type":"MODIFIED"}')
            upstream_request.finish()
            response, body = await self.response(client)
            self.assertEqual(body, b'{"type":"ADDED"}\n{"type":"MODIFIED"}\n')
        return defer.Deferred.fromCoroutine(go())

    def test_requests_share_keep_alive_connections_with_per_request_identity(self):
        """One TLS connection to the API server serves request after request,
        from one kubectl connection and from another user's, each request
        impersonating its own caller."""
        async def go():
            self.roles.by_name["dev"] = role()
            await self.start()
            alice = await self.connect()
            for _ in range(2):
                alice.received = b""
                alice.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
                response, _ = await self.response(alice)
                self.assertEqual(response.status_code, 200)
            bob = await self.connect(user_cert=user_cert_pem(username="bob"))
            bob.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
            response, _ = await self.response(bob)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(len(set(map(id, self.recorder.channels))), 1)
            self.assertEqual([self.recorder.header(b"impersonate-user", i) for i in range(3)],
                             [[b"alice"], [b"alice"], [b"bob"]])
            self.assertEqual(self.acceptor.connections.pool(self.acceptor.clusters["c1"]).idle, 1)
        return defer.Deferred.fromCoroutine(go())

    def test_watch_left_by_kubectl_closes_its_connection(self):
        """A response kubectl stopped reading midway leaves its connection in
        an unknown state: it is closed, never lent to the next request."""
        async def go():
            await self.start()
            watcher = await self.connect()
            watcher.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods?watch=1"))
            upstream_request = await self.recorder.streaming
            await watcher.until(b'{"type":"ADDED"}')
            finished = upstream_request.notifyFinish()
            watcher.transport.loseConnection()
            await watcher.lost
            with self.assertRaises(error.ConnectionLost):
                await finished
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(len(set(map(id, self.recorder.channels))), 2)
        return defer.Deferred.fromCoroutine(go())

    def test_pooled_connection_closed_before_answering_is_retried_only_without_side_effects(self):
        async def go():
            seen = []
            await self.start(upstream_factory=Factory.forProtocol(lambda: DropsSecondRequest(seen)))
            client = await self.connect()
            for expected in (200, 200):  # the second GET is replayed on a new connection
                client.received = b""
                client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default"))
                response, body = await self.response(client)
                self.assertEqual(response.status_code, expected)
                self.assertEqual(body, b'{"kind":"Namespace"}')
            self.assertEqual([method for _, method in seen], [b"GET", b"GET", b"GET"])
            self.assertEqual(len({connection for connection, _ in seen}), 2)
            client.received = b""
            client.transport.write(self.request(b"PUT", b"/api/v1/namespaces/default/pods/web", body=b"{}"))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 502)
            self.assertEqual(json.loads(body)["kind"], "Status")
            self.assertEqual([method for _, method in seen][3:], [b"PUT"])  # sent once, never replayed
        return defer.Deferred.fromCoroutine(go())

    def test_several_kube_users_without_choice_is_refused(self):
        async def go():
            await self.start()
            client = await self.connect(user_cert=user_cert_pem(roles=("ops",)))
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 403)
            self.assertIn("please select a user", json.loads(body)["message"])
        return defer.Deferred.fromCoroutine(go())

    def test_a_discovery_denial_is_plain_text_kubectl_shows(self):
        """client-go reads discovery raw and prints an error body only when
        it is text: the refusal every request of this user gets must read
        there, not as "unknown"."""
        async def go():
            await self.start()
            client = await self.connect(user_cert=user_cert_pem(roles=("ops",)))
            client.transport.write(self.request(b"GET", b"/api", (b"accept", b"application/json")))
            response, body = await self.response(client)
            self.assertEqual((response.status_code, response.reason), (403, b"Forbidden"))
            self.assertEqual(dict(response.headers)[b"content-type"], b"text/plain; charset=utf-8")
            self.assertIn(b"please select a user to impersonate", body)
            self.assertEqual(self.recorder.requests, [])
        return defer.Deferred.fromCoroutine(go())

    def test_unreachable_api_server_is_a_status_502(self):
        async def go():
            await self.start()
            cluster = self.acceptor.clusters["c1"]
            dead = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
            port = dead.getHost().port
            await dead.stopListening()
            self.acceptor.clusters["c1"] = KubeCluster("c1", cluster.labels, credentials(port))
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 502)
            self.assertEqual(json.loads(body)["kind"], "Status")
        return defer.Deferred.fromCoroutine(go())

    def test_absolute_form_targets_get_400_reach_nothing_and_are_audited(self):
        """kube-apiserver would read the full URL and serve the resource,
        while the path classifier saw no ``api`` segment: refused before
        either reads it."""
        async def go():
            await self.start()
            client = await self.connect()
            for method, target in ((b"GET", b"https://x/api/v1/namespaces/default/secrets"),
                                   (b"DELETE", b"http://x/api/v1/namespaces/default/pods/p"),
                                   (b"GET", b"x:443"), (b"OPTIONS", b"*"),
                                   (b"GET", b"/api/v1/namespaces/default/pods#x")):
                client.received = b""
                client.transport.write(self.request(method, target))
                response, body = await self.response(client)
                self.assertEqual((response.status_code, response.reason), (400, b"Bad Request"), target)
                status = json.loads(body)
                self.assertEqual((status["kind"], status["code"], status["reason"]), ("Status", 400, "BadRequest"))
                self.assertIn("teleport refused the request", status["message"])
            self.assertEqual(self.recorder.requests, [])
            self.assertEqual([(e["response_code"], e["success"], e["http_method"]) for e in self.audit],
                             [(400, False, "GET"), (400, False, "DELETE"), (400, False, "GET"),
                              (400, False, "OPTIONS"), (400, False, "GET")])
            self.assertEqual(self.audit[0]["request_path"], "https://x/api/v1/namespaces/default/secrets")
            self.assertIn("absolute-form", self.audit[0]["reason"])
            # The connection carries the next request.
            client.received = b""
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
        return defer.Deferred.fromCoroutine(go())

    def test_the_target_sent_upstream_is_rebuilt_from_what_was_classified(self):
        async def go():
            await self.start()
            client = await self.connect()
            client.transport.write(self.request(
                b"GET", b"/api/v1/namespaces%2Fdefault/pod%73?labelSelector=app%3Dweb;watch=1&x=a+b"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
            (method, uri, _, _), = self.recorder.requests
            self.assertEqual(uri, b"/api/v1/namespaces/default/pods?labelSelector=app%3Dweb%3Bwatch%3D1&x=a%20b")
            (event,) = self.audit
            self.assertEqual((event["verb"], event["resource_kind"], event["resource_namespace"]),
                             ("list", "pods", "default"))
            self.assertEqual(event["request_path"], uri.decode())
        return defer.Deferred.fromCoroutine(go())

    def test_client_gone_during_authorization_sends_nothing_upstream(self):
        """kubectl hangs up while its roles are being looked up: the watch
        it asked for is never opened upstream."""
        async def go():
            await self.start()
            fronts, carriers = [], []
            accept_stream = self.acceptor.accept_stream
            self.acceptor.accept_stream = lambda metadata: fronts.append(accept_stream(metadata)) or fronts[-1]
            connections = self.acceptor.connections
            for kind in ("pool", "h2_pool"):
                carrier = getattr(connections, kind)
                setattr(connections, kind, lambda cluster, carrier=carrier, kind=kind: carriers.append(kind)
                        or carrier(cluster))
            self.roles.gate = defer.Deferred()
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/default/pods?watch=1"))
            while not self.roles.fetched:
                await deferLater(reactor, 0.01)
            client.transport.loseConnection()
            while not fronts[0].closed:
                await deferLater(reactor, 0.01)
            self.roles.gate.callback(None)
            self.assertEqual((carriers, self.recorder.requests), ([], []))
        return defer.Deferred.fromCoroutine(go())

    def test_malformed_http_gets_400_and_is_audited_as_refused(self):
        async def go():
            await self.start()
            for raw, problem in [
                (b"NOT HTTP AT ALL\r\n\r\n", "illegal request line"),
                (b"GET /api/v1/namespaces/default/sec rets HTTP/1.1\r\nHost: x\r\n\r\n", "illegal request line"),
                (b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", "illegal header line"),
                (b"GET /\x1b[2J" + b"a" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "illegal request line"),
            ]:
                with self.subTest(raw=raw[:40]):
                    del self.audit[:]
                    client = await self.connect()
                    client.transport.write(raw)
                    await client.lost
                    self.assertIn(b" 400 ", client.received)
                    (event,) = self.audit
                    self.assertEqual((event["event"], event["success"], event["response_code"], event["user"]),
                                     ("kube.request", False, 400, "alice"))
                    self.assertEqual((event["http_method"], event["request_path"]), ("", ""))
                    self.assertIn(problem, event["reason"])
                    self.assertLessEqual(len(event["reason"]), MAX_UNPARSED_REASON)
                    self.assertTrue(event["reason"].isascii() and event["reason"].isprintable(), event["reason"])
            self.assertEqual(self.recorder.requests, [])
        return defer.Deferred.fromCoroutine(go())


class AcceptStreamTests(SynchronousTestCase):
    def setUp(self):
        cluster = KubeCluster("c1", {"env": "dev"}, credentials(1))
        self.acceptor = StreamAcceptor(reactor, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                                   roles=RoleCache(reactor, FakeRoles().fetch), emit=lambda e: None)

    def test_valid_certificate_for_served_cluster(self):
        protocol = self.acceptor.accept_stream({"user_cert": user_cert_pem(), "kube_cluster": "c1"})
        self.assertEqual(protocol.caller.identity.username, "alice")

    def test_refusals(self):
        other_ca = CertAuthority.generate("user", "example", NOW)
        for metadata in (
            {"kube_cluster": "c1"},
            {"user_cert": "garbage", "kube_cluster": "c1"},
            {"user_cert": 42, "kube_cluster": "c1"},
            {"user_cert": user_cert_pem(ca=other_ca), "kube_cluster": "c1"},
            {"user_cert": user_cert_pem(expires=NOW - timedelta(seconds=5)), "kube_cluster": "c1"},
            {"user_cert": user_cert_pem(kube_cluster="c2"), "kube_cluster": "c1"},
            {"user_cert": user_cert_pem(kube_cluster="c2"), "kube_cluster": "c2"},
            {"user_cert": certificate_pem(AGENT_CERT).decode(), "kube_cluster": "c1"},
            {"user_cert": _forged_allowed_resource("/example/pod/c1/default/web-*"), "kube_cluster": "c1"},
            {"user_cert": _forged_allowed_resource("/example/secret/c1/default/s"), "kube_cluster": "c1"},
        ):
            self.assertRaises(StreamRejected, self.acceptor.accept_stream, metadata)
        # The same certificate with an id that parses is accepted, restricted to it.
        accepted = self.acceptor.accept_stream(
            {"user_cert": _forged_allowed_resource("/example/pod/c1/default/web-0"), "kube_cluster": "c1"})
        self.assertEqual([str(r) for r in accepted.caller.identity.allowed_resources], ["/example/pod/c1/default/web-0"])
        # A search stream verifies the same way; it needs no kube cluster in the certificate.
        self.assertRaises(StreamRejected, self.acceptor.accept_search,
                          {"user_cert": _forged_allowed_resource("nonsense"), "kube_cluster": "c1", "kind": "pod"})
        self.assertRaises(StreamRejected, self.acceptor.accept_search,
                          {"user_cert": user_cert_pem(kube_cluster=""), "kube_cluster": "c1", "kind": "secret"})
        self.assertRaises(StreamRejected, self.acceptor.accept_search,
                          {"user_cert": user_cert_pem(kube_cluster=""), "kube_cluster": "c9", "kind": "pod"})
        self.assertIsNotNone(self.acceptor.accept_search(
            {"user_cert": user_cert_pem(kube_cluster=""), "kube_cluster": "c1", "kind": "pod"}))


def _forged_allowed_resource(text: str) -> str:
    """A user certificate our user CA signed whose allowed-resources attribute
    holds ``text``, which the reader must refuse (fail closed), not ignore."""
    from unittest import mock

    from cryptography import x509 as x509_

    from teleport_py.pki import UserIdentity, generate_private_key
    from teleport_py.pki import ca as ca_module
    from teleport_py.pki.identity import ALLOWED_RESOURCES_OID, user_subject

    def subject(identity):
        name = user_subject(identity)
        return x509_.Name(list(name.rdns) + [x509_.RelativeDistinguishedName(
            [x509_.NameAttribute(ALLOWED_RESOURCES_OID, text)])])

    identity = UserIdentity(username="alice", roles=("dev",), kube_cluster="c1", teleport_cluster="example",
                            expires=NOW + timedelta(hours=1))
    with mock.patch.object(ca_module, "user_subject", subject):
        cert = USER_CA.issue_user_certificate(generate_private_key().public_key(), identity, NOW)
    return certificate_pem(cert).decode()


class UpstreamTLSOptionsTests(TestCase):
    """TLS options are built once per cluster, not per request (they cost a
    key load and an OpenSSL context each)."""

    async def test_built_once_per_cluster(self):
        built = []

        @attrs.frozen
        class CountingCredentials:
            host: str = "127.0.0.1"
            port: int = 1  # nothing listens: only the options matter here

            def tls_options(self):
                built.append(self)
                return credentials(self.port).tls_options()

        cluster = KubeCluster("c1", {}, CountingCredentials())
        forwarder = StreamAcceptor(reactor, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                              roles=RoleCache(reactor, FakeRoles().fetch), emit=lambda event: None)
        for _ in range(3):
            with self.assertRaises(error.ConnectionRefusedError):
                await forwarder.connections.pool(cluster).acquire()
        self.assertEqual(len(built), 1)


class _CountingTransport(StringTransport):
    """Records each write apart: every write to a tunnel stream is a frame."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


class _LentConnection:
    """A pooled API server connection, as far as one exchange sees it."""

    def __init__(self):
        self.http = ClientConnection()
        self.transport = _CountingTransport()
        self.given_back = 0
        self.read_as_is = False

    def lend(self, exchange):
        pass

    def give_back(self):
        self.given_back += 1

    def next_cycle_read_as_is(self):
        self.http = ClientConnection()
        self.read_as_is = True


class _OneConnectionPool:
    def __init__(self, connection):
        self.connection = connection

    async def acquire(self, fresh=False):
        return self.connection


class ResponseRelayTests(SynchronousTestCase):
    """How the API server's response reaches kubectl's stream."""

    def setUp(self):
        self.audit = []
        cluster = KubeCluster("c1", {"env": "dev"}, credentials(1))
        forwarder = StreamAcceptor(reactor, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                              roles=RoleCache(reactor, FakeRoles().fetch), emit=self.audit.append)
        self.kubectl = forwarder.accept_stream({"user_cert": user_cert_pem(), "kube_cluster": "c1"})
        self.kubectl.makeConnection(_CountingTransport())
        self.addCleanup(self.kubectl.connectionLost, None)  # its keep-alive timer goes with it
        self.kubectl.http.receive_data(ForwarderTests.request(b"GET", b"/api/v1/namespaces/default"))
        request = self.kubectl.http.next_event()
        self.kubectl.http.next_event()
        info = RequestInfo(verb="get", api_version="v1", resource="namespaces", namespace="default",
                           name="default", is_resource_request=True)
        self.upstream = UpstreamRequest(self.kubectl, request_context(
            self.kubectl, request, Decision("alice", ("system:authenticated",), info)))
        self.kubectl.upstream = self.upstream
        self.api = _LentConnection()
        self.successResultOf(defer.Deferred.fromCoroutine(self.upstream.start(_OneConnectionPool(self.api))))
        self.upstream.request_done()

    def kubectl_saw(self) -> tuple[h11.Response, bytes]:
        http = h11.Connection(h11.CLIENT)
        http.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
        http.send(h11.EndOfMessage())
        http.receive_data(self.kubectl.transport.value())
        response, body = http.next_event(), b""
        while type(event := http.next_event()) is h11.Data:
            body += event.data
        self.assertIsInstance(event, h11.EndOfMessage)
        return response, body

    def test_a_response_read_at_once_is_one_write(self):
        self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                   b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        self.assertEqual(len(self.kubectl.transport.writes), 1)
        response, body = self.kubectl_saw()
        self.assertEqual((response.status_code, body), (200, b"{}"))
        self.assertEqual([e["response_code"] for e in self.audit], [200])
        self.assertEqual(self.api.given_back, 1)

    def test_a_response_in_pieces_is_relayed_as_it_comes(self):
        self.upstream.dataReceived(b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nno")
        self.assertEqual((len(self.kubectl.transport.writes), self.api.given_back), (1, 0))
        self.assertEqual([e["response_code"] for e in self.audit], [404])
        self.upstream.dataReceived(b"pe")
        self.assertEqual((len(self.kubectl.transport.writes), self.api.given_back), (2, 0))
        self.upstream.dataReceived(b"!")
        response, body = self.kubectl_saw()
        self.assertEqual((response.status_code, body), (404, b"nope!"))
        self.assertNotIn(b"connection", dict(response.headers))
        self.assertEqual((len(self.audit), self.api.given_back), (1, 1))

    def test_a_broken_off_response_cuts_kubectl_off_and_stays_out_of_the_pool(self):
        self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok")
        self.upstream.connectionLost(None)
        self.assertEqual(self.api.given_back, 0)
        self.assertTrue(self.kubectl.transport.disconnecting)
        self.assertEqual(self.kubectl.transport.value().split(b"\r\n\r\n", 1)[1], b"ok")


    def relayed_body(self) -> bytes:
        return self.kubectl.transport.value().split(b"\r\n\r\n", 1)[1]

    def assert_next_request_accepted(self):
        self.assertEqual((self.kubectl.http.our_state, self.kubectl.http.their_done), (IDLE, False))
        self.assertIsNone(self.kubectl.upstream)

    def test_an_unfiltered_chunked_body_goes_as_framed_in_any_pieces(self):
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        body = b"3;ext=1\r\n{\"a\r\nB\r\n\":\"0123456\"\r\n1 \r\n}\r\n000\r\n\r\n"
        self.upstream.dataReceived(head + body[:5])
        for i in range(5, len(body)):
            self.assertEqual(self.api.given_back, 0)
            self.upstream.dataReceived(body[i:i + 1])
        self.assertEqual(self.relayed_body(), body)  # extensions, blanks and all: not re-encoded
        self.assertEqual(self.kubectl_saw()[1], b'{"a":"0123456"}')
        self.assertEqual((self.api.given_back, self.api.read_as_is), (1, True))
        self.assertEqual([e["response_code"] for e in self.audit], [200])
        self.assert_next_request_accepted()

    def test_a_content_length_body_ends_exactly(self):
        self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{}")
        self.assertEqual(self.api.given_back, 0)
        self.upstream.dataReceived(b"{}")
        self.assertEqual((self.relayed_body(), self.api.given_back, self.api.read_as_is), (b"{}{}", 1, True))
        self.assert_next_request_accepted()

    def test_a_response_closing_its_connection_is_not_reused(self):
        self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        self.assertEqual((self.api.given_back, self.api.read_as_is), (1, False))
        self.assertEqual(self.kubectl_saw()[1], b"{}")

    def test_responses_without_a_body(self):
        for status in (b"204 No Content", b"304 Not Modified"):
            with self.subTest(status=status):
                self.setUp()
                self.upstream.dataReceived(b"HTTP/1.1 " + status + b"\r\ncontent-length: 9\r\n\r\n")
                self.assertEqual((self.relayed_body(), self.api.given_back), (b"", 1))
                self.assert_next_request_accepted()

    def assert_failed_closed(self):
        self.assertTrue(self.kubectl.transport.disconnecting)
        self.assertTrue(self.api.transport.disconnecting)
        self.assertEqual(self.api.given_back, 0)
        self.assertEqual([e["response_code"] for e in self.audit], [200])

    def test_malformed_chunks_cut_kubectl_off(self):
        for bad in (b"2\r\n{}x", b"zz\r\n", b"2\r\n{}\r\n0\r\ntrailer: x\r\n\r\n"):
            with self.subTest(bad=bad):
                self.setUp()
                self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + bad)
                self.assert_failed_closed()
                self.assertFalse(self.relayed_body().endswith(b"0\r\n\r\n"))

    def test_bytes_past_the_end_never_reach_kubectl(self):
        for extra in (b"", b"2\r\n{}\r\n0\r\n\r\n"):
            with self.subTest(extra=extra):
                self.setUp()
                self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n" + extra)
                self.upstream.dataReceived(b"{}{}HTTP/1.1 200 OK\r\n")
                self.assert_failed_closed()
                self.assertNotIn(b"HTTP/1.1 200 OK", self.relayed_body())

    def test_a_truncated_chunked_body_cuts_kubectl_off(self):
        self.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n")
        self.upstream.connectionLost(None)
        self.assertTrue(self.kubectl.transport.disconnecting)
        self.assertEqual(self.api.given_back, 0)


class CheckerCacheTests(SynchronousTestCase):
    """A checker is reused only for the very inputs it was built from."""

    def identity(self, username="alice", traits=()):
        return UserIdentity(username, ("dev",), traits=traits, kube_cluster="c1", expires=NOW + timedelta(hours=1))

    def test_same_identity_and_role_objects_share_a_checker(self):
        cache, roles = CheckerCache(), [role()]
        first = cache.checker(self.identity(), roles)
        self.assertIs(cache.checker(self.identity(), list(roles)), first)

    def test_each_input_is_part_of_the_key(self):
        cache, roles = CheckerCache(), [role()]
        first = cache.checker(self.identity(), roles)
        self.assertIsNot(cache.checker(self.identity("bob"), roles), first)
        self.assertIsNot(cache.checker(self.identity(traits={"groups": ["x"]}), roles), first)
        edited = [role(groups=("admins",))]
        checker = cache.checker(self.identity(), edited)
        self.assertIsNot(checker, first)
        self.assertEqual(checker.kube_principals({"env": "dev"})[1], {"admins", "system:authenticated"})

    def test_bounded_oldest_first(self):
        cache, roles = CheckerCache(max_entries=2), [role()]
        a = cache.checker(self.identity("a"), roles)
        b = cache.checker(self.identity("b"), roles)
        cache.checker(self.identity("c"), roles)
        self.assertIs(cache.checker(self.identity("b"), roles), b)
        self.assertIsNot(cache.checker(self.identity("a"), roles), a)


class _Kubectl(Protocol):
    """kubectl's end of a tunnel stream, as the proxy relays it."""

    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class TunnelStreamTests(SynchronousTestCase):
    """kubectl's request arrives on a real tunnel stream (the agent's
    transport in production): its end is seen while the request is being
    authorized, and nothing goes upstream for it."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.roles = FakeRoles(role())
        self.roles.gate = defer.Deferred()
        self.carriers = []
        acceptor = self.acceptor()
        agent = TunnelProtocol(self.clock, initiator=True, accept_stream=lambda kind, metadata:
                               acceptor.accept_stream(metadata))
        proxy = TunnelProtocol(self.clock, initiator=False, accept_stream=None)
        self.pump = iosim.connect(proxy, iosim.makeFakeServer(proxy), agent, iosim.makeFakeClient(agent),
                                  clock=self.clock)
        self.kubectl = _Kubectl()
        proxy.open_stream("kube", {"user_cert": user_cert_pem(), "kube_cluster": "c1"}, self.kubectl)
        self.pump.flush()
        self.kubectl.transport.write(kubectl_request(b"GET", b"/api/v1/namespaces/default/pods?watch=1"))
        self.pump.flush()
        self.assertEqual(self.roles.fetched, ["dev"])

    def acceptor(self) -> StreamAcceptor:
        """An agent whose API server refuses connections, noting which carrier each request asked for."""
        acceptor = StreamAcceptor(self.clock, clusters={"c1": KubeCluster("c1", {"env": "dev"}, credentials(1))},
                                  user_cas=[USER_CA.certificate], roles=RoleCache(self.clock, self.roles.fetch),
                                  emit=lambda event: None)

        async def refused(*args, **kwargs):
            raise error.ConnectionRefusedError()

        class Carrier:
            acquire = request = staticmethod(refused)

        acceptor.connections.pool = lambda cluster: self.carriers.append("http/1.1") or Carrier()
        acceptor.connections.h2_pool = lambda cluster: self.carriers.append("h2") or Carrier()
        return acceptor

    def test_kubectl_gone_during_authorization_gets_nothing_sent_upstream(self):
        self.kubectl.transport.loseConnection()
        self.pump.flush()
        self.roles.gate.callback(None)
        self.pump.flush()
        self.assertEqual(self.carriers, [])

    def test_kubectl_still_there_gets_its_request_sent(self):
        self.roles.gate.callback(None)
        self.pump.flush()
        self.assertEqual(self.carriers, ["h2"])
        self.assertIn(b" 502 ", self.kubectl.received)

    def test_what_is_read_while_authorizing_is_bounded(self):
        """kubectl's connection is read during authorization (to see it
        go), but a body beyond 64 KiB then pauses it until the decision."""
        self.roles.gate = defer.Deferred()
        connection = self.acceptor().accept_stream({"user_cert": user_cert_pem(), "kube_cluster": "c1"})
        transport = StringTransport()
        connection.makeConnection(transport)
        request = kubectl_request(b"PUT", b"/api/v1/namespaces/default/pods/p", body=b"x" * 100_000)
        head = request.index(b"\r\n\r\n") + 4
        connection.dataReceived(request[:head])
        connection.dataReceived(request[head:head + 60_000])
        self.assertEqual(transport.producerState, "producing")
        connection.dataReceived(request[head + 60_000:])
        self.assertEqual(transport.producerState, "paused")
        self.roles.gate.callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertIn(b" 502 ", transport.value())
