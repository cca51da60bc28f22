"""A whole teleport_py deployment for end-to-end tests, on real parts only.

Auth+proxy run as ``twistd -n teleport``, the Kubernetes service as
``twistd -n teleport-kube``, users act through the real ``tsh``, ``tctl`` and
``kubectl`` commands, and requests end at a real kube-apiserver (see
tests/support/kubeenv.py). Nothing here is mocked.
"""
from __future__ import annotations

import json
import os
import re
import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.support.kubeenv import default_kubectl, kubectl_binaries, shared_control_plane
from tests.support.procs import ManagedProcess, free_port, run
from tests.support.seed import KUBE_ACCESS_ROLE

BIN = os.path.dirname(sys.executable)
PASSWORD = "correct horse battery"

#: The agent's own credentials may impersonate, and nothing else: every
#: request it forwards runs with the user's impersonated identity.
AGENT_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: teleport-agent-impersonator}
rules:
- apiGroups: [""]
  resources: ["users", "groups", "serviceaccounts"]
  verbs: ["impersonate"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: teleport-agent-impersonator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: teleport-agent-impersonator}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: teleport-agent}
"""

#: The seed's viewers binding, with explicit rules (a bare control plane has
#: no aggregated ClusterRoles).
VIEWERS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: teleport-test-view}
rules:
- apiGroups: ["", "apps", "batch"]
  resources: ["*"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: viewers-crb}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: teleport-test-view}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: viewers}
"""



def tool(name: str) -> str:
    return os.path.join(BIN, name)


class Deployment:
    """auth+proxy, one Kubernetes service agent, and a user's home directory."""

    def __init__(self, testcase, workdir: str):
        self.test = testcase
        self.dir = os.path.abspath(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.auth_port = free_port()
        self.proxy_port = free_port()
        self.proxy = f"127.0.0.1:{self.proxy_port}"
        self.config = self.path("teleport.yaml")
        self.agent_config = self.path("agent.yaml")
        self.home = self.path("home")
        os.makedirs(self.home, exist_ok=True)
        self.kubeconfig = self.path("home", ".kube", "config")
        self.plane = None
        #: Lines added under auth_service in teleport.yaml (e.g. "  host_cert_ttl: 30s\n").
        self.auth_settings = ""
        #: Lines added under proxy_service in teleport.yaml (e.g. "  https_keypairs: [...]\n").
        self.proxy_settings = ""
        #: Lines added under teleport in agent.yaml (e.g. "  connection_limits: {idle_timeout: 4s}\n").
        self.agent_teleport_settings = ""
        self.main = None
        self.agent = None
        self._spawned = 0

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def write(self, name: str, text: str) -> str:
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- processes ------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        """A long-running process (a service, a watch, a local proxy), stopped at test end."""
        self._spawned += 1
        proc = ManagedProcess(args, self.path(f"{name}-{self._spawned}.log"), env=env, cwd=self.dir)
        proc.start()
        self.test.addCleanup(proc.stop)
        return proc

    async def start_main(self) -> None:
        self.main = self.spawn("teleport", [tool("twistd"), "--pidfile=", "-n", "teleport", "--config", self.config])
        await self.main.wait_for_port(self.proxy_port, timeout=90)
        await self.main.wait_for_port(self.auth_port, timeout=90)

    async def start_agent(self) -> None:
        self.agent = self.spawn(
            "agent", [tool("twistd"), "--pidfile=", "-n", "teleport-kube", "--config", self.agent_config]
        )

    async def start_auth_and_proxy(self) -> tuple[str, str]:
        """The seed's Teleport cluster: auth+proxy started, a kube join token
        added; returns the token and the CA pin (``tctl status``)."""
        self.write(
            "teleport.yaml",
            "version: v3\n"
            "teleport:\n"
            "  nodename: teleport-e2e\n"
            f"  data_dir: {self.path('data')}\n"
            "auth_service:\n"
            f"  listen_addr: 127.0.0.1:{self.auth_port}\n"
            "  cluster_name: example\n"
            f"{self.auth_settings}"
            "proxy_service:\n"
            f"  web_listen_addr: 127.0.0.1:{self.proxy_port}\n"
            f"{self.proxy_settings}",
        )
        await self.start_main()
        token = (await self.tctl("tokens", "add", "--type=kube", "--format=text")).out.strip()
        pin = re.search(r"CA pin:\s+(sha256:[0-9a-f]{64})", (await self.tctl("status")).out).group(1)
        return token, pin

    async def start(self, labels: dict[str, str] | None = None, plane=None) -> "Deployment":
        """``plane``: a started KubeControlPlane of the test's own, else the shared one."""
        self.plane = plane or await shared_control_plane()
        await self.plane.apply(AGENT_RBAC)
        await self.plane.apply(VIEWERS_RBAC)
        self.agent_kubeconfig = self.path("agent-kubeconfig")
        self.plane.write_kubeconfig(
            self.agent_kubeconfig,
            contexts={"my-cluster": ("teleport-agent", ()), "second-cluster": ("teleport-agent", ())},
        )
        token, pin = await self.start_auth_and_proxy()
        label_lines = "".join(f"    {k}: {v}\n" for k, v in (labels or {"env": "prod"}).items())
        self.write(
            "agent.yaml",
            "version: v3\n"
            "teleport:\n"
            "  nodename: kube-agent-e2e\n"
            f"  data_dir: {self.path('agent-data')}\n"
            f"  proxy_server: {self.proxy}\n"
            f"  join_params: {{token_name: {token}}}\n"
            f"  ca_pin: {pin}\n"
            f"{self.agent_teleport_settings}"
            "auth_service: {enabled: false}\n"
            "proxy_service: {enabled: false}\n"
            "kubernetes_service:\n"
            "  enabled: true\n"
            f"  kubeconfig_file: {self.agent_kubeconfig}\n"
            "  labels:\n" + label_lines,
        )
        await self.start_agent()
        return self

    # -- commands ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "HOME": self.home,
            "TELEPORT_HOME": self.path("home", ".tsh"),
            "KUBECONFIG": self.kubeconfig,
            "PATH": BIN + os.pathsep + os.environ.get("PATH", os.defpath),
        }

    async def _checked(self, args, *, stdin=b"", expect=0, env=None, timeout=90):
        result = await run(args, env=env or self.env(), stdin=stdin, timeout=timeout)
        if expect is not None:
            self.test.assertEqual(
                result.code, expect, f"{' '.join(args)} exited {result.code}:\n{result.out}\n{result.err}"
            )
        return result

    def tctl(self, *args, **kw):
        return self._checked([tool("tctl"), "--config", self.config, *args], **kw)

    def tsh(self, *args, **kw):
        return self._checked([tool("tsh"), *args], **kw)

    def kubectl(self, *args, binary=None, **kw):
        return self._checked([binary or default_kubectl(), *args], **kw)

    async def add_user(self, name: str, roles: str) -> None:
        out = (await self.tctl("users", "add", name, f"--roles={roles}")).out
        token = re.search(r"/web/invite/([0-9a-f]+)", out).group(1)
        await self.tsh("signup", f"--proxy={self.proxy}", "--insecure", token, stdin=PASSWORD.encode() + b"\n")

    def user_env(self, user: str) -> dict[str, str]:
        """``env()`` with a home of ``user``'s own: tsh keeps one login per
        proxy, so several users logged in at once each need one."""
        home = self.path(f"home-{user}")
        os.makedirs(home, exist_ok=True)
        return {**self.env(), "HOME": home, "TELEPORT_HOME": os.path.join(home, ".tsh"),
                "KUBECONFIG": os.path.join(home, ".kube", "config")}

    async def login(self, user: str, env: dict[str, str] | None = None) -> None:
        await self.tsh("login", f"--proxy={self.proxy}", f"--user={user}", "--insecure",
                       stdin=PASSWORD.encode() + b"\n", env=env)

    async def login_with_kube_access(self, user: str = "alice") -> None:
        """The seed's steps 2-3: the kube-access role, a user holding it, logged in with tsh."""
        await self.tctl("create", "-f", self.write("kube-access.yaml", KUBE_ACCESS_ROLE))
        await self.add_user(user, "access")
        await self.tctl("users", "update", user, "--set-roles=access,kube-access")
        await self.login(user)

    async def wait_for_clusters(self, expected: set[str], timeout: float = 60.0) -> str:
        """Poll ``tsh kube ls`` until the agent's heartbeats show every cluster."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            out = (await self.tsh("kube", "ls")).out
            names = {line.split()[0] for line in out.splitlines()[2:] if line.strip()}
            if expected <= names:
                return out
            if reactor.seconds() > deadline:
                raise AssertionError(f"clusters {expected} never appeared in tsh kube ls:\n{out}\nagent log:\n{self.agent.log_tail()}")
            await deferLater(reactor, 0.5, lambda: None)

    async def events(self, *types: str) -> list[dict]:
        args = ["events", "--format=json"]
        if types:
            args.append("--type=" + ",".join(types))
        return json.loads((await self.tctl(*args)).out)

    async def wait_for_events(self, *types: str, until, timeout: float = 60.0) -> list[dict]:
        """Poll ``tctl events`` until ``until(events)`` is true.

        The agent's event spool uploads in the background (about a second
        after a request), so a test that reads the audit log right after
        kubectl must wait for what it expects rather than read once.
        """
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            events = await self.events(*types)
            if until(events):
                return events
            if reactor.seconds() > deadline:
                raise AssertionError(f"audit events never matched within {timeout:.0f}s: {events}")
            await deferLater(reactor, 0.5, lambda: None)


def coroutine_test(f):
    """Let trial run an ``async def`` test method."""

    def wrapper(self, *a, **kw):
        return Deferred.fromCoroutine(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


__all__ = ["Deployment", "KUBE_ACCESS_ROLE", "PASSWORD", "coroutine_test", "kubectl_binaries"]
