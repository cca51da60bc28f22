"""The proxy's port for tests: its connection creator, and real-TLS clients
of each of its routes on 127.0.0.1 (the certificates are tests.support.pki's)."""
from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from teleport_py.pki import client_tls_options, server_tls_options
from teleport_py.proxy.listener import ProxyConnectionCreator
from tests.support import pki

KUBE_SERVER_NAME = "kube-teleport-proxy-alpn.teleport.cluster.local"


def proxy_creator(web_cert=None, web_key=None) -> ProxyConnectionCreator:
    """The proxy's routes with pki's CAs and proxy certificate (``web_cert`` on the web route if given)."""
    cert, key = pki.PROXY_CERT, pki.PROXY_KEY
    if web_cert is None:
        web_cert, web_key = cert, key
    user_cas, host_cas = [pki.USER_CA.certificate], [pki.HOST_CA.certificate]
    return ProxyConnectionCreator.from_options(
        web=server_tls_options(web_cert, web_key, trusted_cas=user_cas, require_client_certificate=False),
        kube=server_tls_options(cert, key, trusted_cas=user_cas, require_client_certificate=True),
        tunnel=server_tls_options(cert, key, trusted_cas=host_cas, require_client_certificate=True),
        cluster_web=server_tls_options(cert, key, trusted_cas=user_cas, require_client_certificate=False),
    )


def kube_client(pair=None):
    cert, key = pair if pair is not None else (None, None)
    return client_tls_options(
        KUBE_SERVER_NAME, trusted_cas=[pki.HOST_CA.certificate], certificate=cert, private_key=key,
        alpn=[b"h2", b"http/1.1"],
    )


def tunnel_client(pair):
    cert, key = pair
    return client_tls_options(
        "127.0.0.1", trusted_cas=[pki.HOST_CA.certificate], certificate=cert, private_key=key,
        alpn=[b"teleport-reversetunnel"],
    )


def web_client(pair=None):
    cert, key = pair if pair is not None else (None, None)
    return client_tls_options("127.0.0.1", trusted_cas=[pki.HOST_CA.certificate], certificate=cert, private_key=key)


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
