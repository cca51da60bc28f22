"""A real Auth and Proxy service in this process, on 127.0.0.1 over real TLS,
for tests of the proxy's web port (tsh's web API, the web UI)."""
from __future__ import annotations

import json
import os

from cryptography.hazmat.primitives import serialization
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.auth.service import AuthService
from teleport_py.config import parse_config
from teleport_py.pki import HostIdentity, client_tls_options
from teleport_py.proxy.service import ProxyService
from teleport_py.resources import parse_yaml, resource_to_dict
from tests.support.procs import free_port

ADMIN = HostIdentity(host_id="admin-test", nodename="test", system_role="admin", teleport_cluster="example")
PASSWORD = "correct horse battery"
KUBE_ACCESS = """
kind: role
metadata: {name: kube-access}
version: v7
spec:
  allow:
    kubernetes_labels: {'*': '*'}
    kubernetes_groups: [viewers]
  deny: {}
"""


def public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@implementer(IPolicyForHTTPS)
class ProxyTLS:
    def __init__(self, host_ca, cert=None, key=None):
        self.args = host_ca, cert, key

    def creatorForNetloc(self, hostname, port):
        host_ca, cert, key = self.args
        return client_tls_options("127.0.0.1", trusted_cas=[host_ca], certificate=cert, private_key=key)


class InProcessProxy:
    """``await InProcessProxy.start(testcase)``: both services started, stopped at cleanup."""

    @classmethod
    async def start(cls, testcase) -> "InProcessProxy":
        self = cls()
        self.data_dir = directory = os.path.abspath(testcase.mktemp())
        self.auth_port, self.proxy_port = free_port(), free_port()
        config = parse_config(
            "version: v3\n"
            f"teleport: {{nodename: proxy-test, data_dir: {directory}}}\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_port}', cluster_name: example}}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{self.proxy_port}'}}\n"
        )
        self.auth_service = AuthService(reactor, config)
        self.proxy = ProxyService(reactor, config, local_auth=self.auth_service)
        self.auth_service.startService()
        testcase.addCleanup(self.auth_service.stopService)
        self.proxy.startService()
        testcase.addCleanup(self.proxy.stopService)
        await self.proxy.ready
        self.auth = self.auth_service.auth
        self.host_ca = self.auth.host_ca.certificate
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        return self

    async def another_proxy(self, testcase, public_addr: str | None = None,
                            tunnel_public_addr: str | None = None) -> int:
        """A second proxy of the same cluster (same Auth), started; its port
        (the service is ``self.second``)."""
        port = free_port()
        public = f", public_addr: '{public_addr}'" if public_addr else ""
        if tunnel_public_addr:
            public += f", tunnel_public_addr: '{tunnel_public_addr}'"
        config = parse_config(
            "version: v3\n"
            f"teleport: {{nodename: proxy-test-2, data_dir: {self.data_dir}}}\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_port}', cluster_name: example}}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{port}'{public}}}\n"
        )
        self.second = ProxyService(reactor, config, local_auth=self.auth_service)
        self.second.startService()
        testcase.addCleanup(self.second.stopService)
        await self.second.ready
        return port

    def http(self, cert=None, key=None) -> HTTPClient:
        return HTTPClient(Agent(reactor, contextFactory=ProxyTLS(self.host_ca, cert, key), pool=self.pool))

    def url(self, path, port=None):
        return f"https://127.0.0.1:{port or self.proxy_port}{path}"

    async def request_json(self, method, path, body=None, cert=None, key=None):
        data = None if body is None else json.dumps(body).encode()
        response = await self.http(cert, key).request(method, self.url(path), data=data)
        return response.code, json.loads(await readBody(response))

    async def add_user(self, name: str, roles=("kube-access",)) -> str:
        """The user (and the kube-access role), with a sign-up token returned."""
        await self.auth.resources.upsert(ADMIN, resource_to_dict(parse_yaml(KUBE_ACCESS)[0]), force=True)
        created = await self.auth.users.create(ADMIN, parse_yaml(
            f"kind: user\nversion: v2\nmetadata: {{name: {name}}}\nspec: {{roles: [{', '.join(roles)}]}}\n")[0])
        return created["token"]

    async def heartbeat(self, cluster="k8s"):
        kube = HostIdentity(host_id="agent-1", nodename="node", system_role="kube", teleport_cluster="example")
        await self.auth.kube_servers.heartbeat(kube, {
            "kind": "kube_server", "version": "v3", "metadata": {"name": cluster},
            "spec": {"host_id": "agent-1", "hostname": "node", "version": "teleport_py",
                     "cluster": {"kind": "kube_cluster", "version": "v3",
                                 "metadata": {"name": cluster, "labels": {"env": "test"}}, "spec": {}}},
        })
