"""The agent's side for tests: roles, a cluster's credentials, a fake endpoint.

The certificates are tests.support.pki's: the API server's and the agent's
are signed by KUBE_CA.
"""
from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from teleport_py.kube.credentials import ClusterCredentials
from teleport_py.resources.role import KubernetesResource, Role, RoleConditions
from tests.support import pki


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

    async def fetch(self, name):
        self.fetched.append(name)
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
