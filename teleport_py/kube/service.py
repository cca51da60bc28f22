"""The Kubernetes service agent as a Twisted service: join, tunnel, serve."""
from __future__ import annotations

import os

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from teleport_py.auth.client import AuthClient
from teleport_py.auth.errors import NotFound
from teleport_py.config import Config
from teleport_py.kube.event_spool import EventSpool
from teleport_py.kube.credentials import load_in_cluster, load_kubeconfig
from teleport_py.kube.forwarder import Forwarder, KubeCluster, RoleCache
from teleport_py.kube.heartbeat import Heartbeat
from teleport_py.kube.join import identity_dir, obtain_identity
from teleport_py.kube.sessions import SessionRecorder
from teleport_py.kube.tunnel_client import TunnelClient, proxy_endpoint
from teleport_py.pki import identity_from_certificate
from teleport_py.recording.spool import RecordingSpool
from teleport_py.resources import resource_from_dict
from teleport_py.tunnel import StreamRejected


def load_clusters(config: Config) -> dict[str, KubeCluster]:
    """Clusters from the kubeconfig (one per context) or the service account."""
    kube = config.kube
    if kube.kubeconfig_file:
        credentials = load_kubeconfig(kube.kubeconfig_file)
    else:
        credentials = [load_in_cluster(kube.kube_cluster_name)]
    return {c.name: KubeCluster(c.name, kube.labels, c) for c in credentials}


class KubeService(service.Service):
    """``ready`` fires once joined and dialling the proxy; a failure to start
    (bad kubeconfig, refused join) stops the reactor with the reason logged."""

    log = Logger()
    name = "kube"

    def __init__(self, reactor, config: Config, token: str | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.token = token or ""
        self.ready: Deferred = Deferred()
        self.tunnel: TunnelClient | None = None
        self.auth: AuthClient | None = None
        self.forwarder: Forwarder | None = None
        self._spool: EventSpool | None = None
        self._recordings: RecordingSpool | None = None
        self._heartbeat: Heartbeat | None = None

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._start()).addCallbacks(self.ready.callback, self._failed)

    def _failed(self, failure) -> None:
        self.log.failure("kubernetes service failed to start", failure)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)
        if self.reactor.running:
            self.reactor.stop()

    async def _start(self) -> None:
        clusters = load_clusters(self.config)  # fail before joining if we could serve nothing
        identity = await obtain_identity(self.reactor, self.config, self.token)
        host = identity_from_certificate(identity.certificate, user_ca=None, host_ca=identity.host_cas[0])
        self._spool = EventSpool(
            self.reactor, os.path.join(identity_dir(self.config.data_dir), "events-spool"), self._upload_events
        )
        # Recordings are written here first and uploaded in the background, so
        # neither a lost Auth connection nor an agent restart loses them.
        self._recordings = RecordingSpool(
            self.reactor,
            os.path.join(identity_dir(self.config.data_dir), "recordings"),
            upload=lambda *chunk: self.auth.upload_recording(*chunk),
            stored=lambda session_id: self.auth.recording_stored(session_id),
        )
        self.forwarder = Forwarder(
            self.reactor,
            clusters=clusters,
            user_cas=identity.user_cas,
            roles=RoleCache(self.reactor, self._fetch_role),
            emit=self._spool.emit,
            teleport_cluster=host.teleport_cluster,
            sessions=SessionRecorder(
                self.reactor, self._spool.emit, self._recordings, record_output=self.config.kube.record_exec_output
            ),
        )
        proxy = self.config.proxy_server
        self.tunnel = TunnelClient(
            self.reactor,
            proxy_endpoint(self.reactor, proxy.connect_host(), proxy.port, identity),
            clusters=[{"name": c.name, "labels": dict(c.labels)} for c in clusters.values()],
            accept_stream=self._accept_stream,
        )
        self.auth = AuthClient.over_endpoints(self.reactor, self.tunnel.auth_endpoint_factory(identity))
        self._heartbeat = Heartbeat(
            self.reactor, self.auth.heartbeat_kube, [(c.name, c.labels) for c in clusters.values()],
            host.host_id, host.nodename,
        )
        self.tunnel.start()
        self._heartbeat.start()
        self._spool.schedule_upload()
        self._recordings.upload_soon()
        self.log.info("kubernetes service {host} serving clusters={clusters} via proxy {proxy}",
                      host=host.host_id, clusters=sorted(clusters), proxy=str(proxy))

    def _accept_stream(self, kind: str, metadata: dict):
        if kind != "kube":
            raise StreamRejected(f"unsupported stream kind {kind!r}")
        return self.forwarder.accept_stream(metadata)

    def _upload_events(self, batch: list[dict]):
        return self.auth.append_events(batch)

    async def _fetch_role(self, name: str):
        try:
            return resource_from_dict(await self.auth.get("role", name))
        except NotFound:
            return None

    def stopService(self):
        super().stopService()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._spool is not None:
            self._spool.stop()
        if self._recordings is not None:
            self._recordings.stop()
        stopping = []
        if self.forwarder is not None:
            stopping.append(self.forwarder.close())
        if self.tunnel is not None:
            stopping.append(self.tunnel.stop())
        return gatherResults(stopping)
