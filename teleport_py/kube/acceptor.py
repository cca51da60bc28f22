"""The agent's Kubernetes front door: which protocol serves a `kube` tunnel stream.

Each stream is one kubectl TLS connection the proxy terminated, for a user
whose certificate is verified again here before a byte of the stream is
read. The stream then gets the front end for the protocol kubectl's TLS
handshake with the proxy chose (stream metadata ``alpn``; absent from
older proxies: HTTP/1.1): ``kube.http1`` or ``kube.http2``, each with a
`KubeCaller` (kube/authorize.py) that authorizes and forwards its requests.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Awaitable, Callable, Mapping, Sequence
from weakref import WeakKeyDictionary, WeakSet

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py import events
from teleport_py.config import ConnectionLimits
from teleport_py.kube.authorize import AgentServices, CheckerCache, Discovery, KubeCaller, RoleCache
from teleport_py.kube.connection_watch import ClusterDefaults, SessionLimits, WatchedStream, session_limits
from teleport_py.kube.context import KubeCluster, StreamContext
from teleport_py.kube.durable_responses import DurableResponses
from teleport_py.kube.http1 import KubeConnection
from teleport_py.kube.http2 import KubeHTTP2Connection
from teleport_py.kube.locks import LockWatch
from teleport_py.kube.memory_budget import MemoryBudget
from teleport_py.kube.pools import ClusterConnections
from teleport_py.kube.resource_search import ResourceSearch, SearchRefused, SearchStream, parse_query
from teleport_py.kube.sessions import SessionRecorder
from teleport_py.pki import IdentityError, UserIdentity, identity_from_certificate
from teleport_py.tunnel import StreamRejected

log = Logger()

class StreamAcceptor:
    """Accepts `kube` streams for the clusters this agent serves: verifies
    the user certificate in the stream's metadata and picks the front end."""

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
        buffers: MemoryBudget | None = None,
        limits: ConnectionLimits = ConnectionLimits(),
        cluster_defaults: Callable[[], Awaitable[ClusterDefaults]] | None = None,
        locks: LockWatch | None = None,
        durable: Callable[[], Deferred | None] | None = None,
        emit_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reactor = reactor
        #: Where streams send their ``kube.request`` events encoded (EventSpool.emit_line).
        self.emit_line = emit_line
        #: When the events ``emit`` took are on disk (EventSpool.durable):
        #: each stream's responses wait for it. ``None``: ``emit`` itself is durable.
        self.durable = durable
        self.buffers = buffers or MemoryBudget()
        self.limits = limits
        #: With it, each stream ends at its certificate's expiry and when idle
        #: (``connection_watch``), as the roles and these defaults say.
        self.cluster_defaults = cluster_defaults
        self.clusters = dict(clusters)
        self.user_cas = tuple(user_cas)
        self.connections = ClusterConnections(reactor)
        self.services = AgentServices(
            reactor=reactor, roles=roles, checkers=CheckerCache(), discovery=discovery or Discovery(reactor),
            connections=self.connections, emit=emit, teleport_cluster=teleport_cluster, sessions=sessions,
            locks=locks,
        )
        self._search = ResourceSearch(self.services)
        #: Live watched streams and their users: a new lock ends the locked ones.
        self._live: WeakKeyDictionary[WatchedStream, UserIdentity] = WeakKeyDictionary()
        if locks is not None:
            locks.on_change = self._end_locked
        #: HTTP/2 fronts handed out, told to go away on shutdown.
        self._h2_fronts: WeakSet[KubeHTTP2Connection] = WeakSet()

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
        services = self.services
        stream = StreamContext(identity=identity, cluster=cluster, client_addr=str(metadata.get("client_addr", "")),
                               reactor=self.reactor, emit=services.emit, buffers=self.buffers, limits=self.limits,
                               teleport_cluster=services.teleport_cluster, emit_line=self.emit_line)
        protocol = front(KubeCaller(services, stream))
        if isinstance(protocol, KubeHTTP2Connection):
            self._h2_fronts.add(protocol)
        if self.durable is not None:
            protocol = DurableResponses(protocol, self.durable)
        if self.cluster_defaults is None:
            return protocol
        watched = WatchedStream(self.reactor, protocol, expires=identity.expires.timestamp(),
                                limits=lambda: self._session_limits(identity),
                                ended=lambda reason: self._disconnected(stream, reason))
        self._live[watched] = identity
        return watched

    def accept_search(self, metadata: Mapping) -> Protocol:
        """A ``kube_search`` stream (kube/resource_search.py): for a user
        certificate our user CA signed that is valid now (it need not name
        the cluster: searching is for what the user cannot reach yet), on a
        cluster we serve."""
        identity = self._verified_user(metadata.get("user_cert"))
        cluster = self.clusters.get(metadata.get("kube_cluster"))
        if cluster is None:
            raise StreamRejected("kubernetes cluster not served here")
        try:
            query = parse_query(metadata)
        except SearchRefused as e:
            raise StreamRejected(e.message) from None
        return SearchStream(self._search, identity, cluster, query)

    def _end_locked(self) -> None:
        """The locks changed: end every live stream of a user a lock now targets."""
        locks = self.services.locks
        for watched, identity in list(self._live.items()):
            lock = locks.lock_for(identity) if locks is not None else None
            if lock is not None:
                self._live.pop(watched, None)
                watched.end(lock.describe())

    async def _session_limits(self, identity: UserIdentity) -> SessionLimits:
        defaults = await self.cluster_defaults()
        return session_limits(await self.services.roles.roles(identity.roles), defaults)

    def _disconnected(self, stream: StreamContext, reason: str) -> None:
        """The stream is ended for ``reason``: audited as Teleport does (``client.disconnect``)."""
        log.info("kube connection ended user={user} cluster={cluster} reason={reason}",
                 user=stream.identity.username, cluster=stream.cluster.name, reason=reason)
        stream.emit(events.make_event(
            events.CLIENT_DISCONNECT, self.reactor.seconds(), user=stream.identity.username,
            cluster_name=stream.teleport_cluster or stream.identity.teleport_cluster,
            kube_cluster=stream.cluster.name, addr_remote=stream.client_addr, reason=reason,
        ))

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

    def drain(self) -> None:
        """Shutdown begins: every HTTP/2 client is told to open no new
        streams here (GOAWAY); its connection closes once the requests it
        already sent are done."""
        for front in list(self._h2_fronts):
            front.drain()

    def go_away(self) -> None:
        """The drain's deadline: HTTP/2 requests still open are reset and
        their connections closed."""
        for front in list(self._h2_fronts):
            front.go_away()

    def close(self) -> Deferred:
        """On shutdown: HTTP/2 clients are told to go away (`go_away`), API
        server connections closed; fires when they are closed."""
        self.go_away()
        return self.connections.close()


#: The front end for each protocol the proxy may have negotiated with kubectl.
_FRONTS = {"http/1.1": KubeConnection, "h2": KubeHTTP2Connection}
