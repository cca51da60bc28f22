"""kubectl traffic: route one verified TLS connection to an agent, unparsed.

Everything the route needs is in the user certificate TLS just verified
(who, and which kube cluster), so the proxy never parses kube HTTP except to
answer the two cases no agent can: no cluster named, or no agent online.
"""
from __future__ import annotations

from http import HTTPStatus

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py.pki import IdentityError, UserIdentity, certificate_pem, identity_from_certificate, peer_certificate
from teleport_py.proxy.registry import AgentRegistry
from teleport_py.rbac.status import status_body
from teleport_py.tunnel import SpliceEnd

log = Logger()


def status_response(code: int, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying a Kubernetes ``Status``, then close."""
    status = HTTPStatus(code)
    body = status_body(code, status.phrase.replace(" ", ""), message)
    head = (
        f"HTTP/1.1 {code} {status.phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class StatusAnswer(Protocol):
    """Answers the first request with one Status response and hangs up."""

    def __init__(self, code: int, message: str):
        self.response = status_response(code, message)

    def dataReceived(self, data: bytes) -> None:
        if self.response:
            self.transport.write(self.response)
            self.response = b""
            self.transport.loseConnection()


class _KubectlEnd(SpliceEnd):
    """kubectl's side of the splice; opens the agent's stream once connected,
    and answers 503 itself if the agent refuses it."""

    def __init__(self, open_stream):
        super().__init__()
        self._open_stream = open_stream

    def connectionMade(self) -> None:
        super().connectionMade()
        self._open_stream(self.peer).addErrback(self._refused)

    def _refused(self, failure) -> None:
        log.warn("agent refused a kube stream reason={reason}", reason=failure.getErrorMessage())
        if self._lost is None:
            self.transport.write(status_response(503, "the kubernetes service could not take the connection, retry"))
            self.transport.loseConnection()


class KubeRouter:
    """Builds the protocol for one kubectl connection (``Route.KUBE``)."""

    def __init__(self, registry: AgentRegistry, user_ca):
        self._registry = registry
        self._user_ca = user_ca

    def connection(self, tls_transport) -> Protocol:
        cert = peer_certificate(tls_transport)
        try:
            identity = identity_from_certificate(cert, user_ca=self._user_ca, host_ca=None)
        except IdentityError as e:
            log.warn("kube connection with an unusable certificate refused reason={reason}", reason=str(e))
            return StatusAnswer(403, "the client certificate carries no valid identity")
        if not isinstance(identity, UserIdentity) or not identity.kube_cluster:
            return StatusAnswer(
                403, "the certificate names no kubernetes cluster; run 'tsh kube login <cluster>' first"
            )
        cluster = identity.kube_cluster
        picked = self._registry.pick(cluster)
        if picked is None:
            log.info("kube cluster offline user={user} cluster={cluster}", user=identity.username, cluster=cluster)
            return StatusAnswer(503, f'kubernetes cluster "{cluster}" is offline')
        tunnel, agent = picked
        peer = tls_transport.getPeer()
        metadata = {
            "user_cert": certificate_pem(cert).decode("ascii"),
            "client_addr": f"{peer.host}:{peer.port}",
            "kube_cluster": cluster,
        }
        log.info(
            "kube connection routed user={user} cluster={cluster} agent={agent}",
            user=identity.username, cluster=cluster, agent=agent.host_id,
        )
        kubectl, agent_end = _KubectlEnd(lambda end: tunnel.open_stream("kube", metadata, end)), SpliceEnd()
        kubectl.peer, agent_end.peer = agent_end, kubectl
        return kubectl
