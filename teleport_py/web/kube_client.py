"""The proxy as a Kubernetes client of its agents, for a web session.

A browser has no certificate of its own; its session holds the one Auth
issued at sign-in, which names no kube cluster. For a cluster the proxy asks
Auth, as the user (the session's certificate forwarded, as for every web
call), for a certificate routed to it (``certs/user`` with ``kube_cluster``,
what ``tsh kube login`` does): Auth refuses a cluster the user's roles do
not reach. That certificate goes in a ``kube`` tunnel stream's metadata
exactly as the proxy routes kubectl's, so the agent verifies it, authorizes
by the user's roles, impersonates and audits; the proxy only speaks
HTTP/1.1 on the stream. Its private key is dropped at once (the agent
checks the certificate, not possession of its key); the certificate is
kept per session and cluster until it ends, so a page's calls do not each
issue one.
"""
from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from teleport_py.alpn import HTTP11_ALPN
from teleport_py.auth.errors import AuthError
from teleport_py.pki import IdentityError, UserIdentity, generate_private_key, identity_from_certificate, \
    load_certificate_pem

#: Certificates kept (session x cluster); the oldest goes first past this.
MAX_CERTIFICATES = 10000
#: A list answer larger than this is refused (pod lists carry whole specs).
MAX_LIST_BODY = 16 << 20
LIST_TIMEOUT = 30.0


class ClusterOffline(AuthError):
    status = 503
    kind = "connection_problem"


class KubeAnswer(AuthError):
    """The agent (or the API server through it) refused a call: its Status message."""
    kind = "kubernetes"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@implementer(IAgentEndpointFactory)
class _StreamEndpoints:
    def __init__(self, endpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri):
        return self._endpoint


class _Bounded(Protocol):
    def __init__(self, limit: int) -> None:
        self.done: Deferred = Deferred()
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self.transport.stopProducing()
            return
        self._parts.append(data)

    def connectionLost(self, reason) -> None:
        if self._size > self._limit:
            self.done.errback(KubeAnswer(502, f"the Kubernetes answer is larger than {self._limit} bytes"))
        elif reason.check(ResponseDone):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


class WebKube:
    """Kubernetes calls and execs for web sessions, through the agents' tunnels."""

    def __init__(self, reactor, registry, user_ca, *, max_certificates: int = MAX_CERTIFICATES) -> None:
        self._reactor = reactor
        self._registry = registry
        self._user_ca = user_ca
        self._max = max_certificates
        #: Not persistent: each call is its own tunnel stream, closed after it.
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        #: (user, session certificate, cluster) -> (certificate PEM, expiry)
        self._certificates: dict[tuple[str, bytes, str], tuple[str, float]] = {}

    async def certificate(self, auth, session, cluster: str) -> str:
        """The session user's certificate routed to ``cluster`` (issued by
        Auth for ``auth``, the client forwarding the session's certificate)."""
        key = (session.user, session.certificate_pem, cluster)
        now = self._reactor.seconds()
        cached = self._certificates.get(key)
        if cached is not None and cached[1] > now + 30:
            return cached[0]
        public_pem = generate_private_key().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        result = await auth.reissue(public_pem, kube_cluster=cluster)
        try:
            pem = result["cert"]
            identity = identity_from_certificate(load_certificate_pem(pem.encode("ascii")), user_ca=self._user_ca,
                                                 host_ca=None)
        except (KeyError, AttributeError, ValueError, IdentityError):
            raise AuthError("the auth server answered with an unusable certificate") from None
        if not isinstance(identity, UserIdentity) or identity.username != session.user \
                or identity.kube_cluster != cluster:
            raise AuthError("the auth server answered with a certificate for someone or somewhere else")
        self._remember(key, pem, identity.expires.timestamp())
        return pem

    def _remember(self, key, pem: str, expires: float) -> None:
        now = self._reactor.seconds()
        for k in [k for k, (_, ends) in self._certificates.items() if ends <= now]:
            del self._certificates[k]
        while len(self._certificates) >= self._max:
            del self._certificates[next(iter(self._certificates))]
        self._certificates[key] = (pem, expires)

    def endpoint(self, cluster: str, certificate_pem: str, client_addr: str):
        """A client endpoint whose connections are ``kube`` streams to an
        agent serving ``cluster``, as this certificate's user."""
        picked = self._registry.pick(cluster)
        if picked is None:
            raise ClusterOffline(f'kubernetes cluster "{cluster}" is offline')
        tunnel, _agent = picked
        return tunnel.endpoint("kube", {"user_cert": certificate_pem, "client_addr": client_addr,
                                        "kube_cluster": cluster, "alpn": HTTP11_ALPN.decode("ascii")})

    async def get(self, cluster: str, certificate_pem: str, client_addr: str, path: str) -> Any:
        """GET ``path`` from the cluster's API server, as the user; the JSON answer."""
        agent = Agent.usingEndpointFactory(
            self._reactor, _StreamEndpoints(self.endpoint(cluster, certificate_pem, client_addr)),
            pool=self._pool)
        requested = agent.request(b"GET", b"http://kubernetes" + path.encode("ascii"),
                                  Headers({b"accept": [b"application/json"],
                                           b"user-agent": [b"teleport_py-web-terminal"]}))
        body = _Bounded(MAX_LIST_BODY)
        # One deadline for the answer and its body: then the stream is cut.
        timeout = self._reactor.callLater(LIST_TIMEOUT, lambda: (
            body.transport.stopProducing() if body.transport is not None else requested.cancel()))
        try:
            response = await requested
            response.deliverBody(body)
            content = await body.done
        except Exception:
            if not timeout.active():
                raise KubeAnswer(504, f"the Kubernetes service did not answer within {LIST_TIMEOUT:g} s") from None
            raise
        finally:
            if timeout.active():
                timeout.cancel()
        try:
            payload = json.loads(content)
        except ValueError:
            raise KubeAnswer(502, f"the Kubernetes service answered HTTP {response.code} with a non-JSON body") \
                from None
        if response.code >= 400:
            message = payload.get("message") if isinstance(payload, dict) else None
            raise KubeAnswer(response.code, message if isinstance(message, str) and message
                             else f"the Kubernetes service answered HTTP {response.code}")
        return payload
