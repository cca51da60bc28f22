"""kubectl traffic: route one verified TLS connection to an agent, unparsed.

Everything the route needs is in the user certificate TLS just verified
(who, and which kube cluster), so the proxy never parses kube HTTP except to
answer the cases no agent can: no cluster named, no agent online, or the
agent refusing the stream. kubectl speaks HTTP/2 when the handshake chose
``h2``, so those answers come in the protocol ALPN chose, and the agent is
told which one it is (stream metadata ``alpn``).
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py.alpn import H2_ALPN, HTTP11_ALPN
from teleport_py.kube_status import KubeStatus
from teleport_py.pki import IdentityError, UserIdentity, certificate_pem, identity_from_certificate, peer_certificate
from teleport_py.proxy.registry import AgentRegistry
from teleport_py.tunnel import SpliceEnd

log = Logger()



class StatusAnswer(Protocol):
    """HTTP/1.1: answers the first request with one Status response and hangs up."""

    def __init__(self, code: int, message: str):
        self.response = KubeStatus(code, message).http11()

    def dataReceived(self, data: bytes) -> None:
        if self.response:
            self.transport.write(self.response)
            self.response = b""
            self.transport.loseConnection()


class H2StatusAnswer(Protocol):
    """HTTP/2: answers every request that arrived with the Status, then GOAWAY
    and hang up. kubectl's transport retries requests the GOAWAY did not
    cover on a new connection, which gets the same answer."""

    def __init__(self, code: int, message: str):
        status = KubeStatus(code, message)
        self._body = status.body()
        self._head = status.h2_headers(self._body)
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))

    def connectionMade(self) -> None:
        self._h2.initiate_connection()
        self.transport.write(self._h2.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        if self._h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.info("malformed HTTP/2 from kubectl error={error}", error=e)
            self._hang_up()
            return
        requests = [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)]
        for stream_id in requests:
            try:
                self._h2.send_headers(stream_id, self._head)
                self._h2.send_data(stream_id, self._body, end_stream=True)
            except h2.exceptions.StreamClosedError:
                pass  # kubectl reset it already
        if requests:
            self._hang_up()
        else:
            self.transport.write(self._h2.data_to_send())

    def _hang_up(self) -> None:
        if self._h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
            self._h2.close_connection()
        self.transport.write(self._h2.data_to_send())
        self.transport.loseConnection()


def status_answer(tls_transport, code: int, message: str) -> Protocol:
    """The Status answer in the protocol kubectl's handshake chose."""
    if tls_transport.negotiatedProtocol == H2_ALPN:
        return H2StatusAnswer(code, message)
    return StatusAnswer(code, message)


class _KubectlEnd(SpliceEnd):
    """kubectl's side of the splice; opens the agent's stream once connected,
    and answers 503 itself if the agent refuses it."""

    def __init__(self, open_stream):
        super().__init__()
        self._open_stream = open_stream
        self._answer: Protocol | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._open_stream(self.peer).addErrback(self._refused)

    def _refused(self, failure) -> None:
        """kubectl's bytes so far were held, not relayed: the answer reads them."""
        log.warn("agent refused a kube stream reason={reason}", reason=failure.getErrorMessage())
        if self._lost is not None:
            return
        answer = self._answer = status_answer(
            self.transport, 503, "the kubernetes service could not take the connection, retry")
        answer.makeConnection(self.transport)
        self.transport.resumeProducing()
        pending, self._pending = self._pending, []
        for data in pending:
            answer.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self._answer is not None:
            self._answer.dataReceived(data)
        else:
            super().dataReceived(data)


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
            return status_answer(tls_transport, 403, "the client certificate carries no valid identity")
        if not isinstance(identity, UserIdentity) or not identity.kube_cluster:
            return status_answer(
                tls_transport, 403, "the certificate names no kubernetes cluster; run 'tsh kube login <cluster>' first"
            )
        cluster = identity.kube_cluster
        picked = self._registry.pick(cluster)
        if picked is None:
            log.info("kube cluster offline user={user} cluster={cluster}", user=identity.username, cluster=cluster)
            return status_answer(tls_transport, 503, f'kubernetes cluster "{cluster}" is offline')
        tunnel, agent = picked
        peer = tls_transport.getPeer()
        metadata = {
            "user_cert": certificate_pem(cert).decode("ascii"),
            "client_addr": f"{peer.host}:{peer.port}",
            "kube_cluster": cluster,
            # What the bytes are: the agent speaks the protocol TLS chose.
            "alpn": (tls_transport.negotiatedProtocol or HTTP11_ALPN).decode("ascii"),
        }
        log.info(
            "kube connection routed user={user} cluster={cluster} agent={agent}",
            user=identity.username, cluster=cluster, agent=agent.host_id,
        )
        kubectl, agent_end = _KubectlEnd(lambda end: tunnel.open_stream("kube", metadata, end)), SpliceEnd()
        kubectl.peer, agent_end.peer = agent_end, kubectl
        return kubectl
