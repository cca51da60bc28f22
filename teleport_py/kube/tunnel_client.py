"""The agent's reverse tunnel: dial out to the proxy and stay connected.

The agent needs only outbound access: the proxy opens `kube` streams to us
over this connection, and we open `auth` streams through it to reach Auth
(``agent_pool.AuthOverTunnels``, over whichever tunnels are up).
"""
from __future__ import annotations

import random as _random
from typing import Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.alpn import TUNNEL_ALPN
from teleport_py.backoff import backoff_delay
from teleport_py.identityfile import IdentityFile
from teleport_py.pki import client_tls_options
from teleport_py.quiet import factory_for
from teleport_py.tls_transport import TLSClientEndpoint
from teleport_py.tunnel import StreamRejected, TunnelClosed, TunnelProtocol

log = Logger()

#: Only proxy host certificates carry ``reversetunnel.teleport.cluster.local`` (Auth
#: strips that suffix from every other join), so verifying the proxy under
#: this name proves we reached a proxy of our cluster, whatever address we dialled.
PROXY_TUNNEL_NAME = "reversetunnel.teleport.cluster.local"


@implementer(IStreamClientEndpoint)
class ProxyEndpoint:
    """Mutual TLS to the proxy's public port, ALPN-marked as a reverse tunnel,
    presenting ``identity``; a renewed one (``use``) is presented from the
    next connection on, the current tunnel keeps the one it began with."""

    def __init__(self, reactor, host: str, port: int, identity: IdentityFile) -> None:
        self._tcp = HostnameEndpoint(reactor, host, port)
        self.use(identity)

    def use(self, identity: IdentityFile) -> None:
        self._tls = client_tls_options(
            PROXY_TUNNEL_NAME,
            trusted_cas=identity.host_cas,
            certificate=identity.certificate,
            private_key=identity.private_key,
            alpn=[TUNNEL_ALPN],
        )

    def connect(self, factory):
        return TLSClientEndpoint(self._tls, self._tcp).connect(factory)


def proxy_endpoint(reactor, host: str, port: int, identity: IdentityFile) -> ProxyEndpoint:
    return ProxyEndpoint(reactor, host, port, identity)


class MetadataOnly(Protocol):
    """A stream that says everything in its metadata (announce, discovery): closed at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class TunnelClient:
    """Keeps one tunnel up: reconnects with capped exponential backoff and
    announces the served clusters on every connection."""

    def __init__(
        self,
        reactor,
        endpoint: IStreamClientEndpoint,
        *,
        clusters: Sequence[dict],
        accept_stream: Callable[[str, dict], Protocol],
        random: Callable[[], float] = _random.random,
        on_up: Callable[[], object] = lambda: None,
        identify: Callable[[TunnelProtocol], bool] | None = None,
        on_lost: Callable[[], object] = lambda: None,
    ) -> None:
        """``identify``: when given, the first announce carries no clusters
        and, once the proxy answered it (TLS is done), says whether to keep
        this tunnel (False: closed and dialled again later, as after a
        failure); the real announce follows. ``on_lost``: a tunnel closed."""
        self._reactor = reactor
        self._endpoint = endpoint
        self._clusters = [dict(c) for c in clusters]
        self._accept_stream = accept_stream
        self._random = random
        self._on_up = on_up
        self._identify = identify
        self._on_lost = on_lost
        self._attempt = 0
        self._retry_call = None
        self._stopped = True
        self.tunnel: TunnelProtocol | None = None
        #: The proxy accepted our announce on the current tunnel (readiness).
        self.up = False

    def start(self) -> None:
        self._stopped = False
        self._dial()

    def stop(self) -> Deferred:
        """Stop reconnecting and close the tunnel once its open streams are
        done (GOAWAY: the proxy opens no new ones); fires when it is closed."""
        self._stopped = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self.tunnel is None:
            return succeed(None)
        return self.tunnel.go_away()

    def abort(self) -> None:
        """Close the tunnel now, whatever still runs on it."""
        self._stopped = True
        if self.tunnel is not None and self.tunnel.transport is not None:
            self.tunnel.transport.abortConnection()

    def announce(self, clusters: Sequence[dict]) -> None:
        """Serve these clusters from now on (none: the proxy stops routing
        new kubectl connections here); said again on every connection."""
        self._clusters = [dict(c) for c in clusters]
        if self.tunnel is not None:
            announced = self.tunnel.open_stream("announce", {"clusters": self._clusters}, MetadataOnly())
            announced.addErrback(self._announce_failed)

    def _dial(self) -> None:
        self._retry_call = None
        tunnel = TunnelProtocol(self._reactor, initiator=True, accept_stream=self._accept_stream)
        d = self._endpoint.connect(factory_for(tunnel))
        d.addCallbacks(self._connected, self._dial_failed)

    def _connected(self, tunnel: TunnelProtocol) -> None:
        if self._stopped:  # stopped while dialling
            tunnel.go_away()
            return
        self.tunnel = tunnel
        tunnel.closed.addCallback(self._lost, tunnel)
        if self._identify is not None:
            hello = tunnel.open_stream("announce", {"clusters": []}, MetadataOnly())
            hello.addCallbacks(self._answered, self._announce_failed, callbackArgs=(tunnel,))
            return
        self._announce_on(tunnel)

    def _answered(self, _, tunnel: TunnelProtocol) -> None:
        if tunnel is not self.tunnel or self._stopped:
            return
        if not self._identify(tunnel):
            tunnel.go_away()
            return
        self._announce_on(tunnel)

    def _announce_on(self, tunnel: TunnelProtocol) -> None:
        announced = tunnel.open_stream("announce", {"clusters": self._clusters}, MetadataOnly())
        announced.addCallbacks(self._announced, self._announce_failed)

    def _announced(self, _) -> None:
        """The proxy accepted our certificate and our clusters: a healthy tunnel."""
        self._attempt = 0
        self.up = self.tunnel is not None
        log.info("reverse tunnel up, announced clusters={clusters}", clusters=[c["name"] for c in self._clusters])
        self._on_up()

    def _announce_failed(self, failure) -> None:
        failure.trap(StreamRejected, TunnelClosed)
        log.warn("proxy refused our announce: {reason}", reason=failure.getErrorMessage())

    def _dial_failed(self, failure) -> None:
        log.warn("cannot reach the proxy: {error}", error=failure.getErrorMessage())
        self._retry()

    def _lost(self, _, tunnel: TunnelProtocol) -> None:
        if self.tunnel is tunnel:
            self.tunnel = None
            self.up = False
        self._on_lost()
        self._retry()

    def _retry(self) -> None:
        if self._stopped:
            return
        delay = backoff_delay(self._attempt, self._random)
        self._attempt += 1
        log.info("reconnecting to the proxy in {delay:.1f}s", delay=delay)
        self._retry_call = self._reactor.callLater(delay, self._dial)
