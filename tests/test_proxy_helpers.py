"""Shared fixtures for the proxy tests (no tests here): a cluster's CAs and
certificates, and real-TLS client helpers on 127.0.0.1."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from teleport_py.pki import (
    CertAuthority,
    HostIdentity,
    UserIdentity,
    client_tls_options,
    generate_private_key,
    server_tls_options,
)
from teleport_py.proxy.listener import ProxyConnectionCreator

NOW = datetime.now(timezone.utc).replace(microsecond=0)
CLUSTER = "example"
USER_CA = CertAuthority.generate("user", CLUSTER, NOW - timedelta(days=10))
HOST_CA = CertAuthority.generate("host", CLUSTER, NOW - timedelta(days=10))
OTHER_USER_CA = CertAuthority.generate("user", CLUSTER, NOW - timedelta(days=10))
KUBE_SERVER_NAME = "kube-teleport-proxy-alpn.teleport.cluster.local"


def host_pair(host_id: str, role: str, ca: CertAuthority = HOST_CA):
    key = generate_private_key()
    cert = ca.issue_host_certificate(
        key.public_key(),
        HostIdentity(host_id, "node", role, CLUSTER),
        NOW,
        NOW + timedelta(days=1),
        dns_names=("localhost", "kube-teleport-proxy-alpn.teleport.cluster.local", "reversetunnel.teleport.cluster.local"),
        ip_addresses=("127.0.0.1",),
    )
    return cert, key


def user_pair(kube_cluster="k8s", ca: CertAuthority = USER_CA, issued=NOW, lifetime=timedelta(hours=1)):
    key = generate_private_key()
    identity = UserIdentity(
        "alice", ("access",), kube_cluster=kube_cluster, teleport_cluster=CLUSTER, expires=issued + lifetime
    )
    return ca.issue_user_certificate(key.public_key(), identity, issued), key


PROXY_CERT, PROXY_KEY = host_pair("proxy-1", "proxy")


def proxy_creator(web_cert=PROXY_CERT, web_key=PROXY_KEY) -> ProxyConnectionCreator:
    user_cas, host_cas = [USER_CA.certificate], [HOST_CA.certificate]
    return ProxyConnectionCreator.from_options(
        web=server_tls_options(web_cert, web_key, trusted_cas=user_cas, require_client_certificate=False),
        kube=server_tls_options(PROXY_CERT, PROXY_KEY, trusted_cas=user_cas, require_client_certificate=True),
        tunnel=server_tls_options(PROXY_CERT, PROXY_KEY, trusted_cas=host_cas, require_client_certificate=True),
        cluster_web=server_tls_options(PROXY_CERT, PROXY_KEY, trusted_cas=user_cas, require_client_certificate=False),
    )


def kube_client(pair=None):
    cert, key = pair if pair is not None else (None, None)
    return client_tls_options(
        KUBE_SERVER_NAME, trusted_cas=[HOST_CA.certificate], certificate=cert, private_key=key,
        alpn=[b"h2", b"http/1.1"],
    )


def tunnel_client(pair):
    cert, key = pair
    return client_tls_options(
        "127.0.0.1", trusted_cas=[HOST_CA.certificate], certificate=cert, private_key=key,
        alpn=[b"teleport-reversetunnel"],
    )


def web_client(pair=None):
    cert, key = pair if pair is not None else (None, None)
    return client_tls_options("127.0.0.1", trusted_cas=[HOST_CA.certificate], certificate=cert, private_key=key)


@implementer(IHandshakeListener)
class Collect(Protocol):
    """Client side: records handshake, ALPN, bytes received and how it ended."""

    def __init__(self, send: bytes = b""):
        self.send = send
        self.handshake = False
        self.alpn = None
        self.received = b""
        self.reason = None
        self.done: Deferred = Deferred()

    def handshakeCompleted(self):
        self.handshake = True
        self.alpn = self.transport.negotiatedProtocol
        if self.send:
            self.transport.write(self.send)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


async def connect_tls(port: int, options, protocol: Protocol | None = None) -> Protocol:
    """Connect, wait until the connection is closed, return the protocol."""
    protocol = protocol or Collect()
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    await endpoint.connect(Factory.forProtocol(lambda: protocol))
    await protocol.done
    return protocol
