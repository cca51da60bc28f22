"""A deployment for session tests: auth+proxy and an agent (tests.e2e), a
user allowed exec/attach/port-forward, logged in with tsh, and a pod served
by the kubelet stand-in; used by the session end-to-end tests and the
browser tests of the web UI."""
from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import struct
import termios

from twisted.internet.task import deferLater

from tests.e2e import KUBE_ACCESS_ROLE, Deployment
from tests.support.clients import Terminal, kill_process
from tests.support.kubeenv import create_running_pod, register_node
from tests.support.kubelet import KubeletStandin
from tests.support.procs import wait_until
from tests.support.session_roles import SESSIONS_RBAC, SESSIONS_ROLE

_names = itertools.count()

#: The command column may hold spaces; the columns around it cannot.
_RECORDING_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.*?)\s+(\d{4}-\d\d-\d\dT\S+)\s+(yes|no)\s*$")


def _reactor():
    from twisted.internet import reactor

    return reactor


class SessionsMixin:
    timeout = 900
    websocket = True
    kubectl_env: dict = {}

    async def deployment(self, roles="access,kube-sessions") -> Deployment:
        self.reactor = _reactor()
        d = await Deployment(self, self.mktemp()).start()
        await d.plane.apply(SESSIONS_RBAC)
        await d.tctl("create", "-f", d.write("sessions.yaml", SESSIONS_ROLE))
        await d.tctl("create", "-f", d.write("kube-access.yaml", KUBE_ACCESS_ROLE))
        await d.add_user("alice", "access")
        await d.tctl("users", "update", "alice", f"--set-roles={roles}")
        await d.login("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        self.root = d.path("pod-root")
        os.makedirs(self.root)
        self.standin = KubeletStandin(self.reactor, self.root, websocket=self.websocket)
        port = await self.standin.start()
        self.addCleanup(self.standin.stop)
        n = next(_names)
        self.node, self.pod = f"session-node-{os.getpid()}-{n}", f"session-pod-{os.getpid()}-{n}"
        await register_node(d.plane, self.node, port)
        await create_running_pod(d.plane, self.pod, "default", self.node)
        self.d = d
        return d

    def env(self):
        return {**self.d.env(), **self.kubectl_env}

    def kubectl(self, binary, *args, **kw):
        return self.d.kubectl(*args, binary=binary, env=self.env(), **kw)

    def terminal(self, binary, *args) -> tuple[Terminal, object]:
        terminal = Terminal()
        transport = self.reactor.spawnProcess(
            terminal, binary, [binary, "exec", "-it", self.pod, "--", *args],
            env={**self.env(), "TERM": "xterm"}, usePTY=True,
        )
        self.addCleanup(kill_process, transport)
        return terminal, transport

    async def sized_terminal(self, binary, rows: int, cols: int, *args) -> tuple[Terminal, object]:
        """``kubectl exec -it`` on a pty of ``rows`` x ``cols``, once the shell sees that size."""
        terminal, transport = self.terminal(binary, *args)
        fcntl.ioctl(transport.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def resized():
            transport.write(b"stty size\n")
            return b"%d %d" % (rows, cols) in terminal.output

        await wait_until(resized, 60, interval=0.5, reactor=self.reactor)
        return terminal, transport

    async def typed(self, terminal, transport, line: bytes, expect: bytes):
        transport.write(line)
        await wait_until(lambda: expect in terminal.output, 60, reactor=self.reactor)

    def sleep(self, seconds: float):
        return deferLater(self.reactor, seconds, lambda: None)

    async def recordings(self) -> list[tuple[str, ...]]:
        """(id, user, kind, pod, command, started, complete) rows of ``tsh recordings ls``."""
        rows = (await self.d.tsh("recordings", "ls")).out.splitlines()[2:]
        return [m.groups() for m in map(_RECORDING_ROW.match, rows) if m]

    async def play_json(self, sid: str) -> list[dict]:
        out = (await self.d.tsh("play", sid, "--format=json")).out
        return [json.loads(line) for line in out.splitlines() if line.strip()]


