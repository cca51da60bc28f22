"""The Kubernetes service agent as a Twisted service: join, tunnel, serve."""
from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from teleport_py.auth.client import AuthClient
from teleport_py.auth.errors import NotFound
from teleport_py.diag import diag_listener
from teleport_py.config import Config
from teleport_py.kube.credentials import (
    TOKEN_REREAD_INTERVAL,
    CredentialsError,
    load_in_cluster,
    load_kubeconfig,
    refresh_token_files,
)
from teleport_py.kube.readiness import KubeReadiness
from teleport_py.kube.event_spool import EventSpool
from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.connection_watch import ClusterDefaultsCache
from teleport_py.kube.locks import LockWatch
from teleport_py.kube.memory_budget import MemoryBudget
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.heartbeat import Heartbeat
from teleport_py.kube.join import identity_dir, obtain_identity
from teleport_py.kube.sessions import SessionRecorder
from teleport_py.kube.agent_pool import AgentPool
from teleport_py.renewal import HostCertRenewal
from teleport_py.lifecycle import Drainable, RoleService, StartError, Step, wait_until
from teleport_py.pki import identity_from_certificate
from teleport_py.quiet import QuietHTTPConnectionPool
from teleport_py.recording.spool import RecordingSpool
from teleport_py.resources import resource_from_dict
from teleport_py.tunnel import StreamRejected

log = Logger()


def load_clusters(config: Config) -> dict[str, KubeCluster]:
    """Clusters from the kubeconfig (one per context) or the service account."""
    kube = config.kube
    try:
        if kube.kubeconfig_file:
            credentials = load_kubeconfig(kube.kubeconfig_file)
        else:
            credentials = [load_in_cluster(kube.kube_cluster_name)]
    except CredentialsError as e:
        setting = "kubernetes_service.kubeconfig_file" if kube.kubeconfig_file else "kubernetes_service.kube_cluster_name"
        where = f" ({kube.kubeconfig_file})" if kube.kubeconfig_file and kube.kubeconfig_file not in str(e) else ""
        raise StartError(f"{setting}{where}: {e}") from None
    return {c.name: KubeCluster(c.name, kube.labels, c) for c in credentials}


class TunnelService(Drainable):
    """The reverse tunnels (one per proxy): dialled on start; on stop, GOAWAY
    and each closed once its streams are done, or all cut at the deadline."""

    name = "reverse tunnels"

    def __init__(self, reactor, client: AgentPool):
        self.reactor = reactor
        self.client = client

    def startService(self) -> None:
        super().startService()
        self.client.start()

    def stop_by(self, deadline: float) -> Deferred:
        self.stopping()
        return Deferred.fromCoroutine(self._close(deadline))

    async def _close(self, deadline: float) -> None:
        closed = self.client.stop()
        if not await wait_until(self.reactor, lambda: closed.called, deadline):
            self.client.abort()


class Serving(Drainable):
    """Accepting kubectl's streams. On stop: announce no clusters (the proxy
    routes new connections elsewhere or answers "offline"), refuse new
    streams, tell HTTP/2 clients to open no new requests here (GOAWAY), and
    let the open ones finish until the deadline, when HTTP/2 requests still
    open are reset."""

    name = "serving"

    def __init__(self, reactor, streams: StreamAcceptor, tunnel: AgentPool):
        self.reactor = reactor
        self.streams = streams
        self.tunnel = tunnel

    def accept_stream(self, kind: str, metadata: dict):
        if kind not in ("kube", "kube_search"):
            raise StreamRejected(f"unsupported stream kind {kind!r}")
        if not self.running:
            raise StreamRejected("the kubernetes service is stopping")
        if kind == "kube_search":
            return self.streams.accept_search(metadata)
        return self.streams.accept_stream(metadata)

    def stop_by(self, deadline: float) -> Deferred:
        self.stopping()
        self.tunnel.announce([])
        self.streams.drain()
        return Deferred.fromCoroutine(self._drain(deadline))

    def _open_streams(self) -> int:
        return sum(tunnel.streams_of_kind("kube") for tunnel in self.tunnel.tunnels)

    async def _drain(self, deadline: float) -> None:
        if not await wait_until(self.reactor, lambda: not self._open_streams(), deadline):
            log.info("shutdown_timeout reached with {count} kubectl connection(s) open; closing them",
                     count=self._open_streams())
            self.streams.go_away()


class KubeService(RoleService):
    """Joined first (or the saved identity), then started in this order and
    stopped in reverse: API server connections, the reverse tunnel, the
    connection to Auth through it, the audit and recording spools, serving
    kubectl, heartbeats, host certificate renewal. So a stop says goodbye to Auth, stops taking new
    kubectl connections and lets the open ones finish, then stops the
    spools (what is not uploaded stays on disk), and closes the tunnel last."""

    role = name = "kube"

    def __init__(self, reactor, config: Config, token: str | None = None) -> None:
        super().__init__(reactor, config.shutdown_timeout)
        self.config = config
        self.token = token or ""
        self.tunnel: AgentPool | None = None
        self.auth: AuthClient | None = None
        self.streams: StreamAcceptor | None = None
        self.renewal: HostCertRenewal | None = None

    async def compose(self) -> None:
        clusters = load_clusters(self.config)  # fail before joining if we could serve nothing
        readiness = KubeReadiness(self.reactor, clusters)
        if self.config.diag_addr is not None:  # up before joining: liveness holds while we join
            await self.start_child(diag_listener(
                self.reactor, self.config.diag_addr, self.config.connection_limits, readiness))
        token_files = LoopingCall(refresh_token_files, self.reactor, [c.credentials for c in clusters.values()])
        token_files.clock = self.reactor
        await self.start_child(Step(
            "token files", start=lambda: token_files.start(TOKEN_REREAD_INTERVAL, now=False), stop=token_files.stop))
        identity = await obtain_identity(self.reactor, self.config, self.token)
        readiness.joined = True
        host = identity_from_certificate(identity.certificate, user_ca=None, host_ca=identity.host_cas[0])
        spool = EventSpool(
            self.reactor, os.path.join(identity_dir(self.config.data_dir), "events-spool"), self._upload_events
        )
        # Recordings are written here first and uploaded in the background, so
        # neither a lost Auth connection nor an agent restart loses them.
        recordings = RecordingSpool(
            self.reactor,
            os.path.join(identity_dir(self.config.data_dir), "recordings"),
            upload=lambda *chunk: self.auth.upload_recording(*chunk),
            stored=lambda session_id: self.auth.recording_stored(session_id),
        )
        locks = LockWatch(self.reactor, lambda: self.auth.list_locks())
        self.streams = StreamAcceptor(
            self.reactor,
            clusters=clusters,
            user_cas=identity.user_cas,
            roles=RoleCache(self.reactor, self._fetch_role),
            emit=spool.emit,
            emit_line=spool.emit_line,
            teleport_cluster=host.teleport_cluster,
            sessions=SessionRecorder(
                self.reactor, spool.emit, recordings, record_output=self.config.kube.record_exec_output
            ),
            buffers=MemoryBudget(self.config.kube.buffer_memory_limit),
            limits=self.config.connection_limits,
            cluster_defaults=ClusterDefaultsCache(self.reactor, lambda: self.auth.call("GET", "ping")),
            locks=locks,
            durable=spool.durable,
        )
        proxy = self.config.proxy_server
        heartbeat: Heartbeat | None = None
        # One tunnel to each proxy of the cluster, learnt from the one at proxy_server.
        self.tunnel = AgentPool(
            self.reactor,
            proxy,
            identity,
            clusters=[{"name": c.name, "labels": dict(c.labels)} for c in clusters.values()],
            accept_stream=lambda kind, metadata: serving.accept_stream(kind, metadata),
            on_up=lambda: heartbeat.beat_now(),
        )
        serving = Serving(self.reactor, self.streams, self.tunnel)
        readiness.tunnel_up = lambda: self.tunnel.up
        auth_pool = QuietHTTPConnectionPool(self.reactor, persistent=True)
        to_auth = self.tunnel.auth_endpoint_factory(identity)
        self.auth = AuthClient.over_endpoints(self.reactor, to_auth, auth_pool)

        def renewed(new_identity) -> None:
            """New connections (a redialled tunnel, Auth connections) present
            the renewed certificate; the open tunnel keeps its connection."""
            self.tunnel.use(new_identity)
            to_auth.use(new_identity)
            auth_pool.closeCachedConnections()

        self.renewal = HostCertRenewal(
            self.reactor, identity, request=lambda public_key: self.auth.renew_host_certificate(public_key),
            save=lambda new_identity: deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), new_identity.save, identity_dir(self.config.data_dir)),
            on_renewed=renewed,
        )
        heartbeat = Heartbeat(
            self.reactor, self.auth.heartbeat_kube, [(c.name, c.labels) for c in clusters.values()],
            host.host_id, host.nodename,
        )
        await self.start_child(Step("API server connections", stop=self.streams.close))
        await self.start_child(TunnelService(self.reactor, self.tunnel))
        await self.start_child(Step("auth connections", stop=auth_pool.closeCachedConnections))
        await self.start_child(Step("audit spool", start=spool.schedule_upload, stop=spool.stop))
        await self.start_child(Step("recording spool", start=recordings.upload_soon, stop=recordings.stop))
        await self.start_child(Step("lock watch", start=locks.start, stop=locks.stop))
        await self.start_child(serving)
        await self.start_child(Step("heartbeat", start=heartbeat.start,
                                    stop=lambda: Deferred.fromCoroutine(heartbeat.goodbye(self.auth.kube_goodbye))))
        await self.start_child(self.renewal)
        self.log.info("kubernetes service {host} serving clusters={clusters} via proxy {proxy}",
                      host=host.host_id, clusters=sorted(clusters), proxy=str(proxy))

    def _upload_events(self, batch: list[dict]):
        return self.auth.append_events(batch)

    async def _fetch_role(self, name: str):
        try:
            return resource_from_dict(await self.auth.get("role", name))
        except NotFound:
            return None
