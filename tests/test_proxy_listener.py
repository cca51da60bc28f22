"""Handshake dispatch on the proxy's one port, with real TLS on 127.0.0.1."""
from __future__ import annotations

from datetime import timedelta

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from teleport_py.pki import CertAuthority, UserIdentity, client_tls_options, identity_from_certificate, peer_certificate
from teleport_py.config import ConnectionLimits
from teleport_py.limits import LimitedTLSFactory
from teleport_py.proxy.listener import Route, dispatch
from tests.support.pki import HOST_CA, NOW, OTHER_USER_CA, USER_CA, host_pair, user_pair
from tests.support.proxy import KUBE_SERVER_NAME, connect_tls, kube_client, proxy_creator, tunnel_client, web_client


class Announce(Protocol):
    """Server side: tells the client which route it got and who it is."""

    def __init__(self, route: Route):
        self.route = route

    def connectionMade(self):
        cert = peer_certificate(self.transport)
        who = "anonymous"
        if cert is not None:
            identity = identity_from_certificate(cert, user_ca=USER_CA.certificate, host_ca=HOST_CA.certificate)
            who = identity.username if isinstance(identity, UserIdentity) else identity.host_id
        self.transport.write(f"{self.route.value} {who}".encode())
        self.transport.loseConnection()


class DispatchTests(TestCase):
    async def setUp(self):
        self.creator = proxy_creator()
        factory = LimitedTLSFactory(reactor, ConnectionLimits(), self.creator, dispatch(self.creator, lambda r, t: Announce(r)))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def test_kube_sni_routes_to_kube_with_h2_when_offered(self):
        client = await connect_tls(self.port, kube_client(user_pair()))
        self.assertEqual(client.received, b"kube alice")
        self.assertEqual(client.alpn, b"h2")

    async def test_kube_without_h2_gets_http11(self):
        cert, key = user_pair()
        client = await connect_tls(self.port, client_tls_options(
            KUBE_SERVER_NAME, trusted_cas=[HOST_CA.certificate], certificate=cert, private_key=key,
            alpn=[b"http/1.1"]))
        self.assertEqual((client.received, client.alpn), (b"kube alice", b"http/1.1"))

    async def test_web_api_never_negotiates_h2(self):
        client = await connect_tls(self.port, client_tls_options(
            "127.0.0.1", trusted_cas=[HOST_CA.certificate], alpn=[b"h2", b"http/1.1"]))
        self.assertEqual((client.received, client.alpn), (b"web anonymous", b"http/1.1"))

    async def test_tunnel_alpn_routes_to_tunnel(self):
        client = await connect_tls(self.port, tunnel_client(host_pair("agent-1", "kube")))
        self.assertEqual(client.received, b"tunnel agent-1")
        self.assertEqual(client.alpn, b"teleport-reversetunnel")

    async def test_tunnel_alpn_wins_over_the_cluster_server_name(self):
        """Agents verify the proxy as reversetunnel.teleport.cluster.local."""
        cert, key = host_pair("agent-1", "kube")
        options = client_tls_options(
            "reversetunnel.teleport.cluster.local", trusted_cas=[HOST_CA.certificate], certificate=cert,
            private_key=key, alpn=[b"teleport-reversetunnel"],
        )
        client = await connect_tls(self.port, options)
        self.assertEqual(client.received, b"tunnel agent-1")

    async def test_anything_else_is_web_with_optional_certificate(self):
        anonymous = await connect_tls(self.port, web_client())
        self.assertEqual(anonymous.received, b"web anonymous")
        with_cert = await connect_tls(self.port, web_client(user_pair("")))
        self.assertEqual(with_cert.received, b"web alice")

    async def assertRefused(self, options):
        client = await connect_tls(self.port, options)
        self.assertEqual(client.received, b"")
        self.assertFalse(client.handshake and client.received)

    async def test_kube_refused_without_certificate(self):
        await self.assertRefused(kube_client())

    async def test_kube_refused_with_expired_certificate(self):
        await self.assertRefused(kube_client(user_pair(issued=NOW - timedelta(hours=3))))

    async def test_kube_refused_with_other_ca(self):
        await self.assertRefused(kube_client(user_pair(ca=OTHER_USER_CA)))

    async def test_kube_refused_with_host_certificate(self):
        await self.assertRefused(kube_client(host_pair("agent-1", "kube")))

    async def test_tunnel_refused_with_user_certificate(self):
        await self.assertRefused(tunnel_client(user_pair()))

    async def test_cluster_name_serves_web_with_the_cluster_certificate(self):
        """With a public certificate on the web API, SNI reversetunnel.* still
        gets the host-CA certificate that joining agents verify by pin."""
        public_ca = CertAuthority.generate("host", HOST_CA.cluster_name, NOW - timedelta(days=1))  # a stranger to our clients
        public_cert, public_key = host_pair("www", "proxy", ca=public_ca)
        creator = proxy_creator(public_cert, public_key)
        factory = LimitedTLSFactory(reactor, ConnectionLimits(), creator, dispatch(creator, lambda r, t: Announce(r)))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        cluster = client_tls_options("reversetunnel.teleport.cluster.local", trusted_cas=[HOST_CA.certificate])
        client = await connect_tls(port.getHost().port, cluster)
        self.assertEqual(client.received, b"web anonymous")
        public = await connect_tls(port.getHost().port, web_client())  # verifies against the host CA: refused
        self.assertEqual(public.received, b"")

    async def test_web_refuses_certificate_from_other_ca(self):
        await self.assertRefused(web_client(user_pair(ca=OTHER_USER_CA)))
