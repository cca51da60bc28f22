"""``tsh proxy kube``: a loopback TLS listener that forwards kubectl to the proxy with the user's certificate.

Programs that cannot run an exec plugin (or should not see the user's
Teleport certificate) get a kubeconfig pointing at 127.0.0.1. The listener
has its own small CA, kept in the profile's key directory:

- its server certificate covers ``*.kube.localhost``; each kube cluster is
  one name under it (the cluster name hex-encoded, so any name fits a DNS
  label), and the kubeconfig sets that name as ``tls-server-name``, so the
  SNI of each connection says which cluster it is for;
- it requires a client certificate from the same CA, written only into the
  0600 kubeconfig, so other local users cannot borrow the listener.

Each accepted connection is spliced to one TLS connection to the proxy's kube
path (SNI ``kube-teleport-proxy-alpn.teleport.cluster.local``, the user's
certificate routed to that cluster), asking the proxy for the protocol
kubectl chose here: kubectl sees the same thing as through ``tsh kube
login``. kubectl is offered ``h2`` only if the proxy's kube path takes it
(one handshake at start-up; an older proxy speaks HTTP/1.1 only), since the
bytes are relayed as they are.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path

from attrs import frozen
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.alpn import H2_ALPN, HTTP11_ALPN
from teleport_py.pki import (
    CertAuthority,
    HostIdentity,
    certificate_pem,
    client_tls_options,
    generate_private_key,
    private_key_pem,
    server_tls_options,
    write_private_file,
)
from teleport_py.tsh.kubeconfig import (
    KUBE_PROXY_SERVER_NAME,
    certificate_user,
    teleport_context_name,
    upsert_cluster,
    upsert_context,
    upsert_user,
)
from teleport_py.tcp import no_delay
from teleport_py.tunnel.splice import SpliceEnd

SERVER_NAME_SUFFIX = ".kube.localhost"
# The local CA is trusted by this listener alone; the cluster name and system
# roles below only satisfy HostIdentity's shape and grant nothing anywhere.
LOCAL_CA_CLUSTER = "tsh-local-proxy"
_SERVER_IDENTITY = HostIdentity("local-proxy", "localhost", "proxy", LOCAL_CA_CLUSTER)
_CLIENT_IDENTITY = HostIdentity("kube-client", "localhost", "kube", LOCAL_CA_CLUSTER)
#: Offered to kubectl, most preferred first, when the proxy takes them all.
KUBE_ALPN = (H2_ALPN, HTTP11_ALPN)
HTTP11_ONLY = (HTTP11_ALPN,)
#: How long asking the proxy which protocols it speaks may take.
PROBE_TIMEOUT = 10.0

log = Logger()


def server_name_for(kube_cluster: str) -> str:
    """``<hex of the name>.kube.localhost``: any cluster name becomes one valid DNS label."""
    return kube_cluster.encode("utf-8").hex() + SERVER_NAME_SUFFIX


def kube_cluster_from_server_name(server_name: bytes | None) -> str | None:
    """The cluster a connection's SNI names, or None if it names none."""
    if server_name is None:
        return None
    name = server_name.decode("ascii", "replace").lower()
    if not name.endswith(SERVER_NAME_SUFFIX):
        return None
    try:
        return bytes.fromhex(name[: -len(SERVER_NAME_SUFFIX)]).decode("utf-8")
    except ValueError:
        return None


@frozen
class LocalCA:
    """The listener's own CA, created on first use and kept (0600) in ``directory``."""

    authority: CertAuthority

    @classmethod
    def load_or_create(cls, directory: Path, now: datetime) -> LocalCA:
        cert_path, key_path = directory / "ca.pem", directory / "ca_key.pem"
        if cert_path.exists() and key_path.exists():
            authority = CertAuthority.from_pem("host", LOCAL_CA_CLUSTER, cert_path.read_bytes(), key_path.read_bytes())
            if authority.certificate.not_valid_after_utc > now:
                return cls(authority)
        authority = CertAuthority.generate("host", LOCAL_CA_CLUSTER, now)
        cert_pem, key_pem = authority.to_pem()
        write_private_file(key_path, key_pem)
        write_private_file(cert_path, cert_pem)
        return cls(authority)

    @property
    def certificate(self) -> x509.Certificate:
        return self.authority.certificate

    def issue_server_certificate(self, public_key, now: datetime, not_after: datetime) -> x509.Certificate:
        return self.authority.issue_host_certificate(
            public_key, _SERVER_IDENTITY, now, not_after, dns_names=["*" + SERVER_NAME_SUFFIX], ip_addresses=["127.0.0.1"]
        )

    def issue_client_certificate(self, public_key, now: datetime, not_after: datetime) -> x509.Certificate:
        return self.authority.issue_host_certificate(public_key, _CLIENT_IDENTITY, now, not_after)


def listener_tls_options(local_ca: LocalCA, now: datetime, not_after: datetime, alpn: Sequence[bytes] = KUBE_ALPN):
    """A ``*.kube.localhost`` server certificate; only clients holding a certificate from the same CA get in."""
    key = generate_private_key()
    certificate = local_ca.issue_server_certificate(key.public_key(), now, not_after)
    return server_tls_options(
        certificate, key, trusted_cas=[local_ca.certificate], require_client_certificate=True, alpn=list(alpn)
    )


@implementer(IHandshakeListener)
class _ALPNProbe(Protocol):
    """Completes one handshake, notes the protocol chosen, hangs up."""

    def __init__(self) -> None:
        self.chosen: Deferred = Deferred()

    def handshakeCompleted(self) -> None:
        self.chosen.callback(self.transport.negotiatedProtocol)
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.chosen.called:
            self.chosen.callback(None)


@implementer(IHandshakeListener)
class _KubectlEnd(SpliceEnd):
    """The local side of a splice: nothing is relayed until TLS is done and the proxy is dialled."""

    def __init__(self, factory: KubeLocalProxyFactory):
        super().__init__()
        self.factory = factory
        self.peer = SpliceEnd()
        self.peer.peer = self

    def connectionMade(self) -> None:
        """Wait for handshakeCompleted: pausing now would stall the handshake itself."""

    def handshakeCompleted(self) -> None:
        no_delay(self.transport)
        kube_cluster = kube_cluster_from_server_name(self.transport.getHandle().get_servername())
        if kube_cluster not in self.factory.kube_clusters:
            log.warn("local proxy: refused connection for unknown server name cluster={cluster}", cluster=kube_cluster)
            self.transport.abortConnection()
            return
        self.transport.pauseProducing()
        alpn = self.transport.negotiatedProtocol or HTTP11_ALPN
        dialled = Deferred.fromCoroutine(self.factory.dial(kube_cluster, self.peer, (alpn,)))
        dialled.addErrback(self._dial_failed, kube_cluster)

    def _dial_failed(self, failure, kube_cluster: str) -> None:
        log.failure("local proxy: cannot reach the proxy for cluster={cluster}", failure, cluster=kube_cluster)
        self.transport.abortConnection()


class KubeLocalProxyFactory(Factory):
    """Accepts local TLS connections (wrap the endpoint in the local CA's server TLS options).

    ``credentials(kube_cluster)`` returns a Deferred firing with the user's
    ``(certificate, private_key)`` routed to that cluster; it may reissue.
    """

    def __init__(
        self,
        reactor,
        *,
        proxy_host: str,
        proxy_port: int,
        host_cas: Sequence[x509.Certificate],
        kube_clusters: Collection[str],
        credentials: Callable[[str], Deferred],
    ):
        self.reactor = reactor
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.host_cas = tuple(host_cas)
        self.kube_clusters = frozenset(kube_clusters)
        self.credentials = credentials

    def buildProtocol(self, addr) -> _KubectlEnd:
        return _KubectlEnd(self)

    async def kube_protocols(self, kube_cluster: str) -> tuple[bytes, ...]:
        """What kubectl may be offered: ``h2`` too only if the proxy's kube
        path chooses it, asked with one handshake. A failed handshake means
        HTTP/1.1 only (and each kubectl connection then reports the error)."""
        probe = _ALPNProbe()
        try:
            await self.dial(kube_cluster, probe, KUBE_ALPN)
            chosen = await probe.chosen.addTimeout(PROBE_TIMEOUT, self.reactor)
        except Exception as e:
            log.warn("local proxy: cannot ask the proxy which protocols it speaks error={error}", error=e)
            if probe.transport is not None:
                probe.transport.abortConnection()
            return HTTP11_ONLY
        return KUBE_ALPN if chosen == H2_ALPN else HTTP11_ONLY

    async def dial(self, kube_cluster: str, protocol, alpn: Sequence[bytes] = HTTP11_ONLY) -> None:
        """Only ``alpn`` is offered: for kubectl's connections, the one
        protocol its bytes are already in."""
        certificate, private_key = await self.credentials(kube_cluster)
        creator = client_tls_options(
            KUBE_PROXY_SERVER_NAME,
            trusted_cas=self.host_cas,
            certificate=certificate,
            private_key=private_key,
            alpn=list(alpn),
        )
        endpoint = wrapClientTLS(creator, HostnameEndpoint(self.reactor, self.proxy_host, self.proxy_port))
        await connectProtocol(endpoint, protocol)


def local_kubeconfig(
    *,
    teleport_cluster: str,
    kube_clusters: Sequence[str],
    port: int,
    ca: x509.Certificate,
    client_certificate: x509.Certificate,
    client_key,
) -> dict:
    """One context per cluster, all on the same listener, told apart by tls-server-name."""
    config: dict = {"apiVersion": "v1", "kind": "Config"}
    user = certificate_user(certificate_pem(client_certificate), private_key_pem(client_key))
    for kube_cluster in kube_clusters:
        name = teleport_context_name(teleport_cluster, kube_cluster)
        upsert_cluster(
            config,
            name,
            server="https://127.0.0.1:%d" % port,
            ca_pem=certificate_pem(ca),
            tls_server_name=server_name_for(kube_cluster),
        )
        upsert_context(config, name, cluster=name, user=name)
        upsert_user(config, name, user)
    config["current-context"] = teleport_context_name(teleport_cluster, kube_clusters[0])
    return config
