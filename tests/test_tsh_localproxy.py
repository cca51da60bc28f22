"""``tsh proxy kube``'s listener, kubectl-free: real TLS on 127.0.0.1 to a fake upstream kube path."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, SSL4ServerEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from teleport_py.pki import (
    CertAuthority,
    HostIdentity,
    UserIdentity,
    client_tls_options,
    generate_private_key,
    identity_from_certificate,
    peer_certificate,
    server_tls_options,
)
from teleport_py.tsh.localproxy import (
    KubeLocalProxyFactory,
    LocalCA,
    kube_cluster_from_server_name,
    listener_tls_options,
    server_name_for,
)
from tests.support.procs import free_port


def _now():
    return datetime.now(timezone.utc).replace(microsecond=0)


class ServerNameTests(SynchronousTestCase):
    @given(st.text(min_size=1, max_size=40))
    def test_round_trip(self, name):
        server_name = server_name_for(name)
        self.assertTrue(server_name.endswith(".kube.localhost"))
        self.assertEqual(kube_cluster_from_server_name(server_name.encode()), name)

    @given(st.binary(max_size=80))
    def test_garbage_names_nothing(self, data):
        result = kube_cluster_from_server_name(data + b".kube.localhost")
        self.assertTrue(result is None or isinstance(result, str))

    def test_other_names(self):
        for name in (None, b"localhost", b"kube.localhost", b"zz.kube.localhost", b"6869.example.com"):
            self.assertIsNone(kube_cluster_from_server_name(name))

    def test_local_ca_is_kept(self):
        directory = Path(self.mktemp())
        first = LocalCA.load_or_create(directory, _now())
        self.assertEqual(LocalCA.load_or_create(directory, _now()).certificate, first.certificate)
        self.assertEqual((directory / "ca_key.pem").stat().st_mode & 0o777, 0o600)


@implementer(IHandshakeListener)
class Upstream(Protocol):
    """The proxy's kube path: greets, then echoes upper-cased; records what TLS told it."""

    def connectionMade(self):
        self.factory.connections.append(self)

    def handshakeCompleted(self):
        self.server_name = self.transport.getHandle().get_servername()
        self.identity = identity_from_certificate(
            peer_certificate(self.transport), user_ca=self.factory.user_ca.certificate, host_ca=None
        )
        self.transport.write(b"hello from " + self.identity.kube_cluster.encode())

    def dataReceived(self, data):
        self.transport.write(data.upper())


class Client(Protocol):
    def __init__(self):
        self.received = b""
        self.waiting = []
        self.lost = Deferred()

    def dataReceived(self, data):
        self.received += data
        for size, d in list(self.waiting):
            if len(self.received) >= size:
                self.waiting.remove((size, d))
                d.callback(self.received)

    def wait_for(self, size):
        d = Deferred()
        self.waiting.append((size, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason):
        self.lost.callback(None)


class LocalProxyTests(TestCase):
    timeout = 30

    def setUp(self):
        now = _now()
        self.user_ca = CertAuthority.generate("user", "example", now)
        self.host_ca = CertAuthority.generate("host", "example", now)
        self.local_ca = LocalCA.load_or_create(Path(self.mktemp()), now)
        self.user_key = generate_private_key()
        self.credential_requests = []
        return Deferred.fromCoroutine(self._listen(now))

    async def _listen(self, now):
        upstream_key = generate_private_key()
        upstream_cert = self.host_ca.issue_host_certificate(
            upstream_key.public_key(), HostIdentity("proxy", "proxy", "proxy", "example"), now,
            now + timedelta(hours=1), dns_names=["*.teleport.cluster.local"],
        )
        upstream_factory = Factory.forProtocol(Upstream)
        upstream_factory.connections = []
        upstream_factory.user_ca = self.user_ca
        self.upstream = upstream_factory
        tls = server_tls_options(upstream_cert, upstream_key, trusted_cas=[self.user_ca.certificate],
                                 require_client_certificate=True, alpn=[b"h2", b"http/1.1"])
        upstream_port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(upstream_factory)
        self.addCleanup(upstream_port.stopListening)
        # An older proxy: its kube path speaks HTTP/1.1 only.
        tls = server_tls_options(upstream_cert, upstream_key, trusted_cas=[self.user_ca.certificate],
                                 require_client_certificate=True, alpn=[b"http/1.1"])
        old_port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(upstream_factory)
        self.addCleanup(old_port.stopListening)
        self.old_proxy_port = old_port.getHost().port

        factory = KubeLocalProxyFactory(
            reactor,
            proxy_host="127.0.0.1",
            proxy_port=upstream_port.getHost().port,
            host_cas=[self.host_ca.certificate],
            kube_clusters=["prod", "staging"],
            credentials=self.credentials,
        )
        self.factory = factory
        tls = listener_tls_options(self.local_ca, now, now + timedelta(hours=1))
        local_port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(factory)
        self.addCleanup(local_port.stopListening)
        self.local_port = local_port.getHost().port

    def credentials(self, kube_cluster):
        self.credential_requests.append(kube_cluster)
        now = _now()
        identity = UserIdentity("alice", ["access"], kube_cluster=kube_cluster, teleport_cluster="example",
                                expires=now + timedelta(hours=1))
        return succeed((self.user_ca.issue_user_certificate(self.user_key.public_key(), identity, now), self.user_key))

    async def connect(self, kube_cluster, ca=None, with_certificate=True, alpn=(b"http/1.1",)):
        ca = ca or self.local_ca
        kwargs = {}
        if with_certificate:
            key = generate_private_key()
            now = _now()
            kwargs = dict(certificate=ca.issue_client_certificate(key.public_key(), now, now + timedelta(hours=1)),
                          private_key=key)
        creator = client_tls_options(server_name_for(kube_cluster), trusted_cas=[self.local_ca.certificate],
                                     alpn=list(alpn), **kwargs)
        endpoint = wrapClientTLS(creator, HostnameEndpoint(reactor, "127.0.0.1", self.local_port))
        client = Client()
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.lost)
        self.addCleanup(client.transport.loseConnection)
        return client

    async def test_relays_both_ways_to_the_cluster_named_by_sni(self):
        prod = await self.connect("prod")
        self.assertEqual(await prod.wait_for(len(b"hello from prod")), b"hello from prod")
        prod.transport.write(b"get /api")
        self.assertEqual(await prod.wait_for(len(b"hello from prodGET /API")), b"hello from prodGET /API")

        staging = await self.connect("staging")
        self.assertEqual(await staging.wait_for(len(b"hello from staging")), b"hello from staging")

        self.assertEqual(self.credential_requests, ["prod", "staging"])
        self.assertEqual([c.server_name for c in self.upstream.connections],
                         [b"kube-teleport-proxy-alpn.teleport.cluster.local"] * 2)
        self.assertEqual([c.identity.kube_cluster for c in self.upstream.connections], ["prod", "staging"])
        self.assertEqual([c.transport.negotiatedProtocol for c in self.upstream.connections], [b"http/1.1"] * 2)

    async def test_the_proxy_is_asked_for_the_protocol_kubectl_chose(self):
        """kubectl's bytes are relayed as they are, so both handshakes must agree."""
        h2 = await self.connect("prod", alpn=(b"h2", b"http/1.1"))
        await h2.wait_for(len(b"hello from prod"))
        http11 = await self.connect("prod", alpn=(b"http/1.1",))
        await http11.wait_for(len(b"hello from prod"))
        self.assertEqual([h2.transport.negotiatedProtocol, http11.transport.negotiatedProtocol], [b"h2", b"http/1.1"])
        self.assertEqual([c.transport.negotiatedProtocol for c in self.upstream.connections], [b"h2", b"http/1.1"])

    async def test_kubectl_is_offered_h2_only_if_the_proxy_takes_it(self):
        """kubectl's bytes are relayed as they are: offering kubectl h2 in
        front of a proxy that speaks HTTP/1.1 only would break every request."""
        self.assertEqual(await self.factory.kube_protocols("prod"), (b"h2", b"http/1.1"))
        self.factory.proxy_port = self.old_proxy_port
        self.assertEqual(await self.factory.kube_protocols("prod"), (b"http/1.1",))
        self.factory.proxy_port = free_port()  # nothing listens there
        self.assertEqual(await self.factory.kube_protocols("prod"), (b"http/1.1",))

    async def test_large_transfer_keeps_every_byte(self):
        client = await self.connect("prod")
        payload = bytes(range(97, 123)) * 40000  # ~1 MB, more than any socket buffer
        greeting = len(b"hello from prod")
        await client.wait_for(greeting)
        client.transport.write(payload)
        received = await client.wait_for(greeting + len(payload))
        self.assertEqual(received[greeting:], payload.upper())

    async def test_client_without_certificate_is_refused(self):
        client = await self.connect("prod", with_certificate=False)
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(self.upstream.connections, [])
        self.assertEqual(self.credential_requests, [])

    async def test_client_certificate_from_another_ca_is_refused(self):
        stranger = LocalCA.load_or_create(Path(self.mktemp()), _now())
        client = await self.connect("prod", ca=stranger)
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(self.upstream.connections, [])

    async def test_unknown_cluster_is_refused(self):
        client = await self.connect("other")
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(self.upstream.connections, [])
        self.assertEqual(self.credential_requests, [])
