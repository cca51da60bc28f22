"""Real TLS handshakes on 127.0.0.1 with the real reactor, using our connection creators."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
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
from tests.support.pki import CLUSTER, HOST_CA, NOW, OTHER_USER_CA, USER_CA

SERVER_KEY = generate_private_key()
SERVER_CERT = HOST_CA.issue_host_certificate(
    SERVER_KEY.public_key(),
    HostIdentity("proxy-1", "proxy", "proxy", CLUSTER),
    NOW,
    NOW + timedelta(days=1),
    dns_names=("localhost",),
    ip_addresses=("127.0.0.1",),
)
CLIENT_KEY = generate_private_key()
ALICE = UserIdentity("alice", ("access",), teleport_cluster=CLUSTER, expires=NOW + timedelta(hours=1))


def user_cert(ca: CertAuthority = USER_CA, issued: datetime = NOW, lifetime=timedelta(hours=1)) -> x509.Certificate:
    identity = attrs.evolve(ALICE, expires=issued + lifetime)
    return ca.issue_user_certificate(CLIENT_KEY.public_key(), identity, issued)


def localhost_cert(usages, names=(x509.IPAddress(ipaddress.ip_address("127.0.0.1")),)) -> x509.Certificate:
    """A host-CA leaf right for 127.0.0.1 in every way except, possibly, its usage or names."""
    key_id = HOST_CA.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(SERVER_CERT.subject)
        .issuer_name(HOST_CA.certificate.subject)
        .public_key(SERVER_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(HOST_CA.private_key, hashes.SHA256())


@implementer(IHandshakeListener)
class Greeter(Protocol):
    """Server side: after a good handshake, report what TLS told us and hang up."""

    def __init__(self):
        self.lost = Deferred()

    def handshakeCompleted(self):
        self.factory.handshakes.append(
            Handshake(
                peer=peer_certificate(self.transport),
                alpn=self.transport.negotiatedProtocol,
                server_name=self.transport.getHandle().get_servername(),
            )
        )
        self.transport.write(b"hello")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost.callback(None)


@attrs.frozen
class Handshake:
    peer: x509.Certificate | None
    alpn: bytes | None
    server_name: bytes | None


class GreeterFactory(Factory):
    def __init__(self):
        self.handshakes = []
        self.connections = []

    def buildProtocol(self, addr):
        protocol = Greeter()
        protocol.factory = self
        self.connections.append(protocol)
        return protocol


class Collector(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)


@attrs.frozen
class Outcome:
    greeting: bytes
    handshakes: list[Handshake]

    @property
    def accepted(self) -> bool:
        return self.greeting == b"hello" and len(self.handshakes) == 1


class TLSHandshakeTests(TestCase):
    async def connect(self, server_options, client_options, host="127.0.0.1") -> Outcome:
        factory = GreeterFactory()
        port = await SSL4ServerEndpoint(reactor, 0, server_options, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        endpoint = wrapClientTLS(client_options, TCP4ClientEndpoint(reactor, host, port.getHost().port))
        client = await endpoint.connect(Factory.forProtocol(Collector))
        await client.lost
        await DeferredList([connection.lost for connection in factory.connections])
        return Outcome(client.received, factory.handshakes)

    def server(self, **kwargs):
        kwargs.setdefault("trusted_cas", [USER_CA.certificate])
        kwargs.setdefault("require_client_certificate", True)
        return server_tls_options(SERVER_CERT, SERVER_KEY, **kwargs)

    def client(self, hostname="127.0.0.1", certificate=None, **kwargs):
        if certificate is None:
            certificate = user_cert()
        return client_tls_options(
            hostname, trusted_cas=[HOST_CA.certificate], certificate=certificate, private_key=CLIENT_KEY, **kwargs
        )

    async def test_mutual_tls(self):
        certificate = user_cert()
        outcome = await self.connect(self.server(), self.client(certificate=certificate))
        self.assertTrue(outcome.accepted)
        (handshake,) = outcome.handshakes
        self.assertEqual(handshake.peer, certificate)
        identity = identity_from_certificate(handshake.peer, user_ca=USER_CA.certificate, host_ca=HOST_CA.certificate)
        self.assertEqual(identity, attrs.evolve(ALICE, expires=NOW + timedelta(hours=1)))

    async def test_hostname_verified_by_dns_name(self):
        outcome = await self.connect(self.server(), self.client("localhost"))
        self.assertTrue(outcome.accepted)
        self.assertEqual(outcome.handshakes[0].server_name, b"localhost")

    async def test_no_client_certificate_refused_when_required(self):
        client = client_tls_options("127.0.0.1", trusted_cas=[HOST_CA.certificate])
        outcome = await self.connect(self.server(), client)
        self.assertFalse(outcome.accepted)
        self.assertEqual(outcome.handshakes, [])

    async def test_expired_client_certificate_refused(self):
        expired = user_cert(issued=NOW - timedelta(days=2), lifetime=timedelta(days=1))
        outcome = await self.connect(self.server(), self.client(certificate=expired))
        self.assertEqual(outcome.handshakes, [])

    async def test_not_yet_valid_client_certificate_refused(self):
        future = user_cert(issued=NOW + timedelta(days=1))
        outcome = await self.connect(self.server(), self.client(certificate=future))
        self.assertEqual(outcome.handshakes, [])

    async def test_client_certificate_from_another_ca_refused(self):
        forged = user_cert(ca=OTHER_USER_CA)
        self.assertEqual(forged.issuer, USER_CA.certificate.subject)
        outcome = await self.connect(self.server(), self.client(certificate=forged))
        self.assertEqual(outcome.handshakes, [])

    async def test_optional_client_certificate(self):
        """Login and join endpoints: no certificate is fine, a bad one is not."""
        server = self.server(require_client_certificate=False)
        anonymous = await self.connect(server, client_tls_options("127.0.0.1", trusted_cas=[HOST_CA.certificate]))
        self.assertTrue(anonymous.accepted)
        self.assertIsNone(anonymous.handshakes[0].peer)
        forged = await self.connect(server, self.client(certificate=user_cert(ca=OTHER_USER_CA)))
        self.assertEqual(forged.handshakes, [])

    async def test_user_certificate_cannot_serve(self):
        server = server_tls_options(
            user_cert(), CLIENT_KEY, trusted_cas=[USER_CA.certificate], require_client_certificate=False
        )
        client = client_tls_options("127.0.0.1", trusted_cas=[USER_CA.certificate, HOST_CA.certificate])
        outcome = await self.connect(server, client)
        self.assertEqual(outcome.greeting, b"")

    async def test_server_certificate_needs_server_auth_purpose(self):
        """Same CA, names and dates: only the extended key usage decides."""
        client = client_tls_options("127.0.0.1", trusted_cas=[HOST_CA.certificate])
        for usages, accepted in [
            ([ExtendedKeyUsageOID.CLIENT_AUTH], False),
            ([ExtendedKeyUsageOID.SERVER_AUTH], True),
        ]:
            server = server_tls_options(localhost_cert(usages), SERVER_KEY, require_client_certificate=False)
            outcome = await self.connect(server, client)
            self.assertEqual(outcome.greeting == b"hello", accepted, usages)

    async def test_server_certificate_without_names_refused(self):
        client = client_tls_options("127.0.0.1", trusted_cas=[HOST_CA.certificate])
        server = server_tls_options(
            localhost_cert([ExtendedKeyUsageOID.SERVER_AUTH], names=()), SERVER_KEY, require_client_certificate=False
        )
        outcome = await self.connect(server, client)
        self.assertEqual(outcome.greeting, b"")

    async def test_wrong_hostname_refused(self):
        outcome = await self.connect(self.server(), self.client("other.example.com"))
        self.assertEqual(outcome.greeting, b"")

    async def test_server_from_untrusted_ca_refused(self):
        client = client_tls_options("127.0.0.1", trusted_cas=[USER_CA.certificate], certificate=user_cert(),
                                    private_key=CLIENT_KEY)
        outcome = await self.connect(self.server(), client)
        self.assertEqual(outcome.greeting, b"")

    async def test_alpn_visible_to_server_protocol(self):
        server = self.server(alpn=[b"h2", b"teleport-reversetunnel"])
        outcome = await self.connect(server, self.client(alpn=[b"teleport-reversetunnel"]))
        self.assertTrue(outcome.accepted)
        self.assertEqual(outcome.handshakes[0].alpn, b"teleport-reversetunnel")

    async def test_server_name_sent_separately_from_verified_hostname(self):
        sni = "kube-teleport-proxy-alpn.example.com"
        for hostname in ("localhost", "127.0.0.1"):
            outcome = await self.connect(self.server(), self.client(hostname, server_name=sni))
            self.assertTrue(outcome.accepted, hostname)
            self.assertEqual(outcome.handshakes[0].server_name, sni.encode("ascii"))

    async def test_no_server_name_for_an_ip_address(self):
        outcome = await self.connect(self.server(), self.client("127.0.0.1"))
        self.assertTrue(outcome.accepted)
        self.assertIsNone(outcome.handshakes[0].server_name)

    async def test_server_name_does_not_relax_hostname_check(self):
        outcome = await self.connect(self.server(), self.client("other.example.com", server_name="localhost"))
        self.assertEqual(outcome.greeting, b"")


class OptionsTests(SynchronousTestCase):
    def test_required_client_certificate_needs_a_ca(self):
        self.assertRaises(
            ValueError, server_tls_options, SERVER_CERT, SERVER_KEY, trusted_cas=[], require_client_certificate=True
        )

    def test_client_needs_a_ca(self):
        self.assertRaises(ValueError, client_tls_options, "localhost", trusted_cas=[])

    def test_client_certificate_needs_key(self):
        self.assertRaises(
            ValueError, client_tls_options, "localhost", trusted_cas=[HOST_CA.certificate], certificate=SERVER_CERT
        )

    def test_idle_connections_release_their_buffers(self):
        """About 34 KiB per connection otherwise (watches sit idle for minutes)."""
        contexts = [
            server_tls_options(SERVER_CERT, SERVER_KEY, trusted_cas=[], require_client_certificate=False).getContext(),
            client_tls_options("localhost", trusted_cas=[HOST_CA.certificate]).context,
        ]
        for context in contexts:
            self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)

    def test_peer_certificate_of_plain_transport(self):
        self.assertIsNone(peer_certificate(StringTransport()))
