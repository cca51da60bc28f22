"""The agent's Kubernetes front: which protocol serves a `kube` tunnel stream.

Each stream is one kubectl TLS connection the proxy terminated, for a user
whose certificate is verified again here. Requests are decided and forwarded
by ``kube.authorize`` and ``kube.upstream``; ``kube.http1`` or
``kube.http2`` speaks the protocol kubectl's TLS handshake with the proxy
chose (stream metadata ``alpn``; absent from older proxies: HTTP/1.1).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Mapping, Sequence

import attrs
from cryptography import x509
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py.kube.authorize import CheckerCache, Discovery, KubeCaller, RoleCache
from teleport_py.kube.credentials import ClusterCredentials
from teleport_py.kube.http1 import KubeConnection
from teleport_py.kube.http2 import KubeHTTP2Connection
from teleport_py.kube.sessions import SessionRecorder
from teleport_py.kube.upstream import UpstreamPool
from teleport_py.kube.upstream_h2 import H2Pool
from teleport_py.pki import IdentityError, UserIdentity, identity_from_certificate
from teleport_py.tunnel import StreamRejected

log = Logger()


@attrs.frozen
class KubeCluster:
    """A cluster this agent serves: its name and labels as users' roles see them."""

    name: str
    labels: Mapping[str, str] = attrs.field(converter=dict, hash=False)
    credentials: ClusterCredentials


class Forwarder:
    """Accepts `kube` streams for the clusters this agent serves."""

    def __init__(
        self,
        reactor,
        *,
        clusters: Mapping[str, KubeCluster],
        user_cas: Sequence[x509.Certificate],
        roles: RoleCache,
        emit: Callable[[dict], None],
        teleport_cluster: str = "",
        discovery: Discovery | None = None,
        sessions: SessionRecorder | None = None,
    ) -> None:
        self.reactor = reactor
        self.discovery = discovery or Discovery(reactor)
        self.clusters = dict(clusters)
        self.user_cas = tuple(user_cas)
        self.roles = roles
        self.emit = emit
        self.teleport_cluster = teleport_cluster
        self.sessions = sessions
        self.checkers = CheckerCache()
        self._pools: dict[str, UpstreamPool] = {}
        self._h2_pools: dict[str, H2Pool] = {}
        #: Live HTTP/2 fronts, told to go away on shutdown.
        self.h2_connections: set[KubeHTTP2Connection] = set()

    def accept_stream(self, metadata: Mapping) -> Protocol:
        """The stream's protocol, only for a user certificate our user CA signed
        that is valid now and routed to a cluster we serve, speaking the
        protocol the proxy's handshake with kubectl chose."""
        identity = self._verified_user(metadata.get("user_cert"))
        cluster = self.clusters.get(metadata.get("kube_cluster"))
        if cluster is None or identity.kube_cluster != cluster.name:
            log.warn("refused kube stream user={user} cluster={cluster}",
                     user=identity.username, cluster=metadata.get("kube_cluster"))
            raise StreamRejected("kubernetes cluster not served here")
        alpn = metadata.get("alpn", "http/1.1")
        front = _FRONTS.get(alpn) if isinstance(alpn, str) else None
        if front is None:
            raise StreamRejected("unknown application protocol")
        return front(KubeCaller(self, identity, cluster, str(metadata.get("client_addr", ""))))

    def _verified_user(self, pem) -> UserIdentity:
        now = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except (AttributeError, ValueError, UnicodeError):
            raise StreamRejected("missing or malformed user certificate") from None
        for ca in self.user_cas:
            try:
                identity = identity_from_certificate(cert, user_ca=ca, host_ca=None, now=now)
            except IdentityError:
                continue
            if isinstance(identity, UserIdentity):
                return identity
        raise StreamRejected("user certificate is not valid")

    def pool(self, cluster: KubeCluster) -> UpstreamPool:
        """The cluster's keep-alive connections to its API server. TLS options
        are built once per cluster: they load keys and make an OpenSSL
        context, a tenth of the agent's CPU when done per connection."""
        pool = self._pools.get(cluster.name)
        if pool is None:
            creds = cluster.credentials
            tls = creds.tls_options()
            pool = self._pools[cluster.name] = UpstreamPool(
                self.reactor, lambda: wrapClientTLS(tls, HostnameEndpoint(self.reactor, creds.host, creds.port)))
        return pool

    def h2_pool(self, cluster: KubeCluster) -> H2Pool:
        """The cluster's multiplexed HTTP/2 connections to its API server
        (watches). ALPN offers HTTP/1.1 too, so a server without HTTP/2
        still completes the handshake and says so (``H2NotSupported``)."""
        pool = self._h2_pools.get(cluster.name)
        if pool is None:
            creds = cluster.credentials
            tls = creds.tls_options(alpn=(b"h2", b"http/1.1"))
            pool = self._h2_pools[cluster.name] = H2Pool(
                self.reactor, lambda: wrapClientTLS(tls, HostnameEndpoint(self.reactor, creds.host, creds.port)))
        return pool

    def close(self) -> Deferred:
        """On shutdown: HTTP/2 clients are told to go away (GOAWAY), API
        server connections closed; fires when they are closed."""
        for connection in list(self.h2_connections):
            connection.go_away()
        pools = list(self._pools.values()) + list(self._h2_pools.values())
        self._pools, self._h2_pools = {}, {}
        return gatherResults([pool.close() for pool in pools])


#: The front end for each protocol the proxy may have negotiated with kubectl.
_FRONTS = {"http/1.1": KubeConnection, "h2": KubeHTTP2Connection}
