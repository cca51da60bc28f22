"""The agent's connections to each cluster's API server, by kind.

Per cluster, a pool of keep-alive HTTP/1.1 connections (kube/upstream.py)
and a set of multiplexed HTTP/2 connections (kube/upstream_h2.py), each
built on first use. TLS options are built once per cluster: they load keys
and make an OpenSSL context, a tenth of the agent's CPU when done per
connection.
"""
from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint

from teleport_py.alpn import H2_ALPN, HTTP11_ALPN
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.upstream import UpstreamPool
from teleport_py.kube.upstream_h2 import H2Pool
from teleport_py.tls_transport import TLSClientEndpoint


class ClusterConnections:
    """Every API server connection pool of this agent, closed together on shutdown."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._pools: dict[str, UpstreamPool] = {}
        self._h2_pools: dict[str, H2Pool] = {}

    def pool(self, cluster: KubeCluster) -> UpstreamPool:
        """The cluster's keep-alive HTTP/1.1 connections to its API server."""
        pool = self._pools.get(cluster.name)
        if pool is None:
            pool = self._pools[cluster.name] = UpstreamPool(self._reactor, self._endpoint(cluster))
        return pool

    def h2_pool(self, cluster: KubeCluster) -> H2Pool:
        """The cluster's multiplexed HTTP/2 connections to its API server
        (watches). ALPN offers HTTP/1.1 too, so a server without HTTP/2
        still completes the handshake and says so (``H2NotSupported``)."""
        pool = self._h2_pools.get(cluster.name)
        if pool is None:
            pool = self._h2_pools[cluster.name] = H2Pool(
                self._reactor, self._endpoint(cluster, alpn=(H2_ALPN, HTTP11_ALPN)))
        return pool

    def _endpoint(self, cluster: KubeCluster, **tls):
        creds = cluster.credentials
        options = creds.tls_options(**tls)
        return lambda: TLSClientEndpoint(options, HostnameEndpoint(self._reactor, creds.host, creds.port))

    def close(self) -> Deferred:
        """Close every pool; fires when their connections are closed."""
        pools = list(self._pools.values()) + list(self._h2_pools.values())
        self._pools, self._h2_pools = {}, {}
        return gatherResults([pool.close() for pool in pools])
