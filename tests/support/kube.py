"""The agent's side for tests: roles, a cluster's credentials, a fake
endpoint, and an agent in front of a fake API server that kubectl connections
reach over real TCP (``AgentHarness``).

The certificates are tests.support.pki's: the API server's and the agent's
are signed by KUBE_CA, users' by USER_CA.
"""
from __future__ import annotations

import json

import h11
from twisted.internet import defer, reactor
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource, server

from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.canonical import canonical_request
from teleport_py.kube.context import Decision, KubeCluster, RequestContext
from teleport_py.kube.credentials import ClusterCredentials
from teleport_py.pki import server_tls_options
from teleport_py.resources.role import KubernetesResource, Role, RoleConditions
from tests.support import pki
from tests.support.pki import user_cert_pem


def role(name="dev", resources=None, users=(), groups=("developers",)) -> Role:
    """A v8 role for clusters labelled env=dev: by default every verb on pods in ``default``."""
    allow = RoleConditions(
        kubernetes_labels={"env": ("dev",)},
        kubernetes_resources=tuple(resources or (KubernetesResource(kind="pods", namespace="default", name="*",
                                                                   verbs=("*",), api_group=""),)),
        kubernetes_users=tuple(users), kubernetes_groups=tuple(groups),
    )
    return Role(name=name, version="v8", allow=allow, deny=RoleConditions())


def credentials(port: int, token: str = "") -> ClusterCredentials:
    """Cluster ``c1`` on 127.0.0.1:``port``: a bearer token if given, else the agent's client certificate."""
    if token:
        return ClusterCredentials(name="c1", host="127.0.0.1", port=port, ca_certificates=(pki.KUBE_CA.certificate,),
                                  token=token)
    return ClusterCredentials(name="c1", host="127.0.0.1", port=port, ca_certificates=(pki.KUBE_CA.certificate,),
                              client_certificate=pki.AGENT_CERT, client_key=pki.AGENT_KEY)


class FakeRoles:
    """Roles by name, as Auth would return them; remembers what was fetched."""

    def __init__(self, *roles):
        self.by_name = {r.name: r for r in roles}
        self.fetched = []
        #: While set, lookups wait for it: authorization is in progress.
        self.gate: defer.Deferred | None = None

    async def fetch(self, name):
        self.fetched.append(name)
        if self.gate is not None:
            await self.gate
        return self.by_name.get(name)


class FakeEndpoint:
    """Connects each protocol to a fresh StringTransport that 'negotiated' ``alpn``."""

    def __init__(self, alpn=b"h2"):
        self.alpn = alpn
        #: (protocol, transport) of each connection, in order.
        self.connections = []

    @property
    def transports(self):
        return [transport for _, transport in self.connections]

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        transport.negotiatedProtocol = self.alpn
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def request_context(kubectl, request: h11.Request, decision: Decision) -> RequestContext:
    """The context ``KubeCaller`` would build for ``request`` on ``kubectl``'s stream."""
    canonical = canonical_request(request.method, request.target, b"proxy", request.headers)
    return RequestContext(kubectl.caller.stream, canonical, decision)


# -- an agent in front of a fake API server, and kubectl -------------------------


class Recorder(resource.Resource):
    """Records each request's headers; ``/stream`` holds the response open."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        #: The HTTP connection each request came on, in order.
        self.channels = []
        self.streaming = defer.Deferred()

    def render(self, request):
        self.requests.append((request.method, request.uri, list(request.requestHeaders.getAllRawHeaders()),
                              request.content.read()))
        self.channels.append(request.channel)
        if request.path == b"/api/v1/namespaces/default/pods" and b"watch" in request.args:
            request.write(b'{"type":"ADDED"}\n')
            self.streaming.callback(request)
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"kind": "PodList", "items": []}).encode()

    def header(self, name: bytes, index: int = -1) -> list[bytes]:
        return [v for n, vs in self.requests[index][2] if n.lower() == name for v in vs]


class Client(Protocol):
    """A raw kubectl connection: collects what arrives, signals each arrival."""

    def __init__(self):
        self.received = b""
        self.arrived = defer.Deferred()
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data
        arrived, self.arrived = self.arrived, defer.Deferred()
        arrived.callback(data)

    def connectionLost(self, reason):
        self.lost.callback(None)

    async def until(self, marker: bytes):
        while marker not in self.received:
            await self.arrived


def kubectl_request(method: bytes, target: bytes, *headers: tuple[bytes, bytes], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request as kubectl writes it (Host: proxy)."""
    http = h11.Connection(h11.CLIENT)
    all_headers = [(b"host", b"proxy"), *headers]
    if body or method in (b"POST", b"PUT"):
        all_headers.append((b"content-length", b"%d" % len(body)))
    return http.send(h11.Request(method=method, target=target, headers=all_headers)) + body


class AgentHarness:
    """For a TestCase: ``start()`` puts an agent (``self.acceptor``) in front
    of a fake API server over mutual TLS (``self.recorder`` unless another
    site is given), ``connect()`` opens a kubectl connection to it,
    ``request``/``response`` write and read HTTP/1.1 on that connection."""

    def setUp(self):
        self.audit = []
        self.roles = FakeRoles(role(), role("ops", users=("ops-a", "ops-b")))
        self.recorder = Recorder()

    async def start(self, upstream_factory=None, token="", labels=None):
        site = upstream_factory or server.Site(self.recorder)
        tls = server_tls_options(pki.API_CERT, pki.API_KEY, trusted_cas=[pki.KUBE_CA.certificate],
                                 require_client_certificate=not token)
        api = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(TLSMemoryBIOFactory(tls, False, site))
        self.addCleanup(api.stopListening)
        cluster = KubeCluster("c1", labels or {"env": "dev"}, credentials(api.getHost().port, token))
        self.acceptor = StreamAcceptor(reactor, clusters={"c1": cluster}, user_cas=[pki.USER_CA.certificate],
                                   roles=RoleCache(reactor, self.roles.fetch), emit=self.audit.append)
        self.addCleanup(self.acceptor.close)
        return cluster

    async def connect(self, **metadata) -> Client:
        metadata.setdefault("user_cert", user_cert_pem())
        metadata.setdefault("kube_cluster", "c1")
        metadata.setdefault("client_addr", "192.0.2.1:5000")
        front = Factory.forProtocol(lambda: self.acceptor.accept_stream(metadata))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(front)
        self.addCleanup(port.stopListening)
        client = Client()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client))

        async def close():
            client.transport.loseConnection()
            await client.lost
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(close()))
        return client

    request = staticmethod(kubectl_request)

    async def response(self, client: Client, marker: bytes = b"") -> tuple[h11.Response, bytes]:
        """Parse one complete response from what the client has received so far."""
        while True:
            if not client.received:
                await client.arrived
                continue
            http = h11.Connection(h11.CLIENT)
            http.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
            http.send(h11.EndOfMessage())
            http.receive_data(client.received)
            response, body = None, b""
            while True:
                event = http.next_event()
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return response, body
                else:
                    break
            await client.arrived
