"""The proxy's one public TLS port: the handshake decides what a connection is.

A connection starts in the web context (client certificate optional, user
CA). The SNI callback moves kube traffic to the kube context (user
certificate required) and the ALPN callback moves reverse tunnels to the
tunnel context (host certificate required), so a missing, expired or foreign
certificate is refused by OpenSSL before a single byte reaches an agent.
After the handshake (which ``limits.LimitedTLSFactory`` bounds in time), the
context the connection ended in names its route.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocol
from zope.interface import implementer

from teleport_py.alpn import H2_ALPN, HTTP11_ALPN, TUNNEL_ALPN
from teleport_py.limits import Build
from teleport_py.pki.tls import openssl_pair, present

KUBE_SNI_PREFIX = b"kube-teleport-proxy-alpn."
#: The web API under the proxy's cluster certificate (host CA) instead of the
#: configured public one: joining agents verify it against their pinned CA.
CLUSTER_WEB_SNI = b"reversetunnel.teleport.cluster.local"

_REQUIRE_CERT = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


class Route(Enum):
    WEB = "web"
    KUBE = "kube"
    TUNNEL = "tunnel"


def _openssl_verdict(connection, certificate, error_number, depth, ok) -> bool:
    """Keep OpenSSL's chain, expiry and purpose verdict (rejections are logged by ``limits.AfterHandshake``)."""
    return bool(ok)


def _http11_only(connection: SSL.Connection, offered: list[bytes]):
    """The web API speaks HTTP/1.1 only."""
    return HTTP11_ALPN if HTTP11_ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _kube_alpn(connection: SSL.Connection, offered: list[bytes]):
    """h2 whenever kubectl offers it: client-go then multiplexes all of a
    process's requests, watches included, on this one connection, which
    is one tunnel stream and one HTTP/2 front in the agent (the stream's
    metadata says which protocol was chosen). Exec, attach and port-forward
    still come on connections offering only HTTP/1.1."""
    if H2_ALPN in offered:
        return H2_ALPN
    return _http11_only(connection, offered)


@implementer(IOpenSSLServerConnectionCreator)
@attrs.frozen
class ProxyConnectionCreator:
    """
    Three SSL contexts, one per route, built by ``pki.server_tls_options``
    (which sets trust, minimum version and whether a client certificate is
    required). The callbacks installed here switch a connection between them.
    """

    web: SSL.Context
    kube: SSL.Context
    tunnel: SSL.Context
    cluster_web: SSL.Context | None = None
    #: Context -> the renewed host certificate and key its new connections present.
    renewed: dict = attrs.field(factory=dict, eq=False)

    @classmethod
    def from_options(cls, web, kube, tunnel, cluster_web=None) -> "ProxyConnectionCreator":
        creator = cls(web.getContext(), kube.getContext(), tunnel.getContext(),
                      cluster_web.getContext() if cluster_web is not None else None)
        creator.web.set_tlsext_servername_callback(creator._server_name)
        creator.web.set_alpn_select_callback(creator._web_alpn)
        creator.kube.set_alpn_select_callback(_kube_alpn)
        creator.tunnel.set_alpn_select_callback(creator._web_alpn)
        if creator.cluster_web is not None:
            # Agents dial their tunnel under this very name too: ALPN still wins.
            creator.cluster_web.set_alpn_select_callback(creator._web_alpn)
        return creator

    def use_host_certificate(self, certificate, private_key, *, web: bool) -> None:
        """A renewed host certificate for new connections on every route
        (``web`` too unless browsers get a configured certificate there).
        The contexts stay (routes are told apart by them); each new
        connection presents the renewed pair instead of its context's."""
        pair = openssl_pair(certificate, private_key)
        for context in (self.kube, self.tunnel, self.cluster_web, self.web if web else None):
            if context is not None:
                self.renewed[context] = pair

    def _present(self, connection: SSL.Connection) -> None:
        present(connection, self.renewed.get(connection.get_context()))

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.web, None)
        connection.set_app_data(tlsProtocol)
        self._present(connection)
        return connection

    def route_of(self, connection: SSL.Connection) -> Route:
        context = connection.get_context()
        if context is self.kube:
            return Route.KUBE
        if context is self.tunnel:
            return Route.TUNNEL
        return Route.WEB

    def _server_name(self, connection: SSL.Connection) -> None:
        name = (connection.get_servername() or b"").lower()
        if name.startswith(KUBE_SNI_PREFIX):
            self._switch(connection, self.kube)
        elif name == CLUSTER_WEB_SNI and self.cluster_web is not None:
            # Same route and client-certificate rules as the web context; only
            # the certificate presented differs.
            connection.set_context(self.cluster_web)
            self._present(connection)

    def _web_alpn(self, connection: SSL.Connection, offered: list[bytes]):
        if TUNNEL_ALPN in offered:
            self._switch(connection, self.tunnel)
            return TUNNEL_ALPN
        return _http11_only(connection, offered)

    def _switch(self, connection: SSL.Connection, context: SSL.Context) -> None:
        """OpenSSL keeps the verify mode of the first context; require the certificate explicitly."""
        connection.set_context(context)
        connection.set_verify(_REQUIRE_CERT, _openssl_verdict)
        self._present(connection)


def dispatch(creator: ProxyConnectionCreator, choose: Callable[[Route, object], IProtocol | None]) -> Build:
    """What serves a connection once its handshake is done (``limits.AfterHandshake``):
    ``choose(route, tls_transport)`` returns the protocol for the route its
    TLS context names, or None to hang up."""

    def build(tls_transport) -> IProtocol | None:
        return choose(creator.route_of(tls_transport.getHandle()), tls_transport)

    return build
