"""A highly available deployment of real processes for end-to-end tests: a
3-member etcd cluster (TLS with client certificates), two
``twistd -n teleport-auth`` on it sharing a recordings directory, two
``twistd -n teleport-proxy`` given both auth servers, and two
``twistd -n teleport-kube`` agents serving one cluster of the real
kube-apiserver (tests/support/kubeenv.py). Every process can be killed and
started again by index, with the same ports, data dir and configuration.
``agent_proxy_server`` (the first proxy by default) is what agents are given;
``proxy_public_addr`` (none by default) is every proxy's public address (a
load balancer in front of them: ``RoundRobinBalancer``).

It is a ``tests.e2e.Deployment`` whose ``config`` is the first auth
server's (``tctl``) and whose ``proxy`` is the first proxy; ``env(i)`` is
a user's home logged in through proxy ``i``.
"""
from __future__ import annotations

import os
import re

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols import portforward

from teleport_py.backend.etcd_gateway import Gateway
from tests.e2e import AGENT_RBAC, VIEWERS_RBAC, Deployment, tool
from tests.support.etcd import EtcdCluster
from tests.support.kubeenv import shared_control_plane
from tests.support.procs import ManagedProcess, free_port

PROCESS_READY_TIMEOUT = 90.0
CLUSTER = "my-cluster"


class HADeployment(Deployment):
    def __init__(self, testcase, workdir: str, *, auths: int = 2, proxies: int = 2, agents: int = 2):
        super().__init__(testcase, workdir)
        from twisted.internet import reactor

        self.reactor = reactor
        self.etcd = EtcdCluster(reactor, self.path("etcd"))
        self.prefix = "/teleport/example"
        self.auth_ports = [free_port() for _ in range(auths)]
        self.proxy_ports = [free_port() for _ in range(proxies)]
        self.proxies_addr = [f"127.0.0.1:{port}" for port in self.proxy_ports]
        self.proxy = self.proxies_addr[0]
        self.auth_configs = [self.path(f"auth{i}.yaml") for i in range(auths)]
        self.config = self.auth_configs[0]
        self.auths: list[ManagedProcess | None] = [None] * auths
        self.proxy_procs: list[ManagedProcess | None] = [None] * proxies
        self.agents: list[ManagedProcess | None] = [None] * agents
        self.homes = [self.path(f"home{i}") for i in range(proxies)]
        for home in self.homes:
            os.makedirs(home, exist_ok=True)
        self.pin = ""
        #: What agents are given as teleport.proxy_server (they learn the other proxies from it).
        self.agent_proxy_server = self.proxies_addr[0]
        #: Every proxy's proxy_service.public_addr, if any.
        self.proxy_public_addr: str | None = None

    # -- configuration -----------------------------------------------------------

    def _storage(self) -> str:
        files = self.etcd.files
        return (
            "  storage:\n"
            "    type: etcd\n"
            f"    peers: [{', '.join(self.etcd.urls)}]\n"
            f"    prefix: {self.prefix}\n"
            f"    tls_cert_file: {files['client.pem']}\n"
            f"    tls_key_file: {files['client-key.pem']}\n"
            f"    tls_ca_file: {files['ca.pem']}\n"
            f"    audit_sessions_uri: file://{self.path('shared-recordings')}\n"
        )

    def _write_auth_config(self, i: int) -> None:
        self.write(f"auth{i}.yaml", (
            "version: v3\n"
            "teleport:\n"
            f"  nodename: auth{i}\n"
            f"  data_dir: {self.path(f'auth{i}-data')}\n"
            f"{self._storage()}"
            f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_ports[i]}', cluster_name: example}}\n"
            "proxy_service: {enabled: false}\n"
        ))

    def _write_proxy_config(self, i: int, token: str) -> None:
        auth_servers = ", ".join(f"127.0.0.1:{port}" for port in self.auth_ports)
        self.write(f"proxy{i}.yaml", (
            "version: v3\n"
            "teleport:\n"
            f"  nodename: proxy{i}\n"
            f"  data_dir: {self.path(f'proxy{i}-data')}\n"
            f"  auth_servers: [{auth_servers}]\n"
            f"  ca_pin: {self.pin}\n"
            f"  join_params: {{token_name: {token}}}\n"
            "auth_service: {enabled: false}\n"
            "proxy_service:\n"
            f"  web_listen_addr: '127.0.0.1:{self.proxy_ports[i]}'\n"
            + (f"  public_addr: '{self.proxy_public_addr}'\n" if self.proxy_public_addr else "")
        ))

    def _write_agent_config(self, i: int, token: str) -> None:
        self.write(f"agent{i}.yaml", (
            "version: v3\n"
            "teleport:\n"
            f"  nodename: kube-agent-{i}\n"
            f"  data_dir: {self.path(f'agent{i}-data')}\n"
            f"  proxy_server: {self.agent_proxy_server}\n"
            f"  join_params: {{token_name: {token}}}\n"
            f"  ca_pin: {self.pin}\n"
            "auth_service: {enabled: false}\n"
            "proxy_service: {enabled: false}\n"
            "kubernetes_service:\n"
            "  enabled: true\n"
            f"  kubeconfig_file: {self.agent_kubeconfig}\n"
            "  labels: {env: prod}\n"
        ))

    # -- processes -----------------------------------------------------------------

    def _twistd(self, name: str, plugin: str, config: str) -> ManagedProcess:
        return self.spawn(name, [tool("twistd"), "--pidfile=", "-n", plugin, "--config", config])

    async def start_auth(self, i: int) -> None:
        self.auths[i] = self._twistd(f"auth{i}", "teleport-auth", self.auth_configs[i])
        await self.auths[i].wait_for_port(self.auth_ports[i], PROCESS_READY_TIMEOUT)

    async def start_proxy(self, i: int) -> None:
        self.proxy_procs[i] = self._twistd(f"proxy{i}", "teleport-proxy", self.path(f"proxy{i}.yaml"))
        await self.proxy_procs[i].wait_for_port(self.proxy_ports[i], PROCESS_READY_TIMEOUT)

    def start_agent_process(self, i: int) -> None:
        """Started; it serves once its tunnel is up (``wait_for_clusters``)."""
        self.agents[i] = self._twistd(f"agent{i}", "teleport-kube", self.path(f"agent{i}.yaml"))

    async def start(self, labels=None, plane=None) -> "HADeployment":
        self.test.addCleanup(self.etcd.stop)
        await self.etcd.start()
        self.plane = plane or await shared_control_plane()
        await self.plane.apply(AGENT_RBAC)
        await self.plane.apply(VIEWERS_RBAC)
        self.agent_kubeconfig = self.path("agent-kubeconfig")
        self.plane.write_kubeconfig(self.agent_kubeconfig, contexts={CLUSTER: ("teleport-agent", ())})
        for i in range(len(self.auth_ports)):
            self._write_auth_config(i)
        # Both at once: whichever writes first creates the CAs.
        for i in range(len(self.auth_ports)):
            self.auths[i] = self._twistd(f"auth{i}", "teleport-auth", self.auth_configs[i])
        for i, proc in enumerate(self.auths):
            await proc.wait_for_port(self.auth_ports[i], PROCESS_READY_TIMEOUT)
        self.pin = re.search(r"CA pin:\s+(sha256:[0-9a-f]{64})", (await self.tctl("status")).out).group(1)
        proxy_token = (await self.tctl("tokens", "add", "--type=proxy", "--format=text")).out.strip()
        for i in range(len(self.proxy_ports)):
            self._write_proxy_config(i, proxy_token)
            await self.start_proxy(i)
        kube_token = (await self.tctl("tokens", "add", "--type=kube", "--format=text")).out.strip()
        for i in range(len(self.agents)):
            self._write_agent_config(i, kube_token)
            self.start_agent_process(i)
        self.agent = self.agents[0]
        return self

    # -- users -----------------------------------------------------------------------

    def env(self, i: int = 0) -> dict[str, str]:
        """A user's home logged in through proxy ``i``."""
        home = self.homes[i]
        return {
            "HOME": home,
            "TELEPORT_HOME": os.path.join(home, ".tsh"),
            "KUBECONFIG": os.path.join(home, ".kube", "config"),
            "PATH": os.path.dirname(tool("tsh")) + os.pathsep + os.environ.get("PATH", os.defpath),
        }

    async def login_everywhere(self, user: str, password: str) -> None:
        """``tsh login`` through every proxy, each in its own home, and
        ``tsh kube login`` once the cluster is listed."""
        for i, proxy in enumerate(self.proxies_addr):
            await self.tsh("login", f"--proxy={proxy}", f"--user={user}", "--insecure",
                           stdin=password.encode() + b"\n", env=self.env(i))
        await self.wait_for_clusters({CLUSTER})
        for i in range(len(self.proxies_addr)):
            await self.tsh("kube", "login", CLUSTER, env=self.env(i))

    # -- etcd ------------------------------------------------------------------------------

    async def etcd_call(self, member: int, path: str, body: dict) -> dict:
        """One JSON gateway call to etcd member ``member`` alone."""
        gateway = Gateway(self.reactor, [self.etcd.members[member].url], self.etcd.client_tls, timeout=5.0)
        try:
            return await gateway.call(path, body)
        finally:
            await gateway.close()


# -- a load balancer --------------------------------------------------------------


class _BackendClientFactory(portforward.ProxyClientFactory):
    noisy = False

    def __init__(self, balancer: "RoundRobinBalancer", tried: int) -> None:
        self.balancer = balancer
        self.tried = tried

    def clientConnectionFailed(self, connector, reason):
        if self.tried + 1 >= len(self.balancer.backends):
            self.server.transport.loseConnection()
            return
        self.balancer.connect(self.server, self.tried + 1)


class _Front(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # nothing is read before a backend is there
        self.factory.balancer.connect(self, 0)


class RoundRobinBalancer:
    """A TLS-passthrough TCP load balancer, written the way Twisted's
    ``protocols.portforward`` is (each side the other's producer): each
    connection goes to the next backend and, when that one does not accept,
    to the one after (what a real balancer's health check does).
    ``RoundRobinBalancer(backends).listen()``, ``.port``, ``.stop()``."""

    def __init__(self, reactor, backends: list[tuple[str, int]]) -> None:
        self.reactor = reactor
        self.backends = backends
        self._next = 0
        self.port = free_port()
        self._listening = None

    def connect(self, front: _Front, tried: int) -> None:
        host, port = self.backends[self._next % len(self.backends)]
        self._next += 1
        client = _BackendClientFactory(self, tried)
        client.setServer(front)
        self.reactor.connectTCP(host, port, client, timeout=5)

    async def listen(self) -> "RoundRobinBalancer":
        factory = portforward.ProxyFactory("", 0)
        factory.protocol = _Front
        factory.balancer = self
        factory.noisy = False
        endpoint = TCP4ServerEndpoint(self.reactor, self.port, interface="127.0.0.1")
        self._listening = await endpoint.listen(factory)
        return self

    def stop(self):
        return self._listening.stopListening()
