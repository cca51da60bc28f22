"""
exec, cp, an interactive TTY and port-forward end to end: tsh kube login ->
proxy -> reverse tunnel -> agent -> real kube-apiserver -> kubelet stand-in,
with both real kubectl builds, over WebSocket and over SPDY only; then the
recordings (tsh recordings ls / tsh play) and the audit log they left.
"""
from __future__ import annotations

import glob
import hashlib
import os

from twisted.internet import defer, protocol
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.protocols.wire import Echo
from twisted.trial.unittest import TestCase

from tests.e2e import coroutine_test
from tests.support.kubeenv import kubectl_binaries
from tests.support.clients import Collect as _Collect, Terminal as _Terminal, kill_process as _kill
from tests.support.kubelet import create_attachable_pod
from tests.support.procs import free_port, wait_until
from tests.support.sessions import SessionsMixin

#: Teleport allows reading pods but not the ``exec`` verb.
READ_ONLY_ROLE = """\
kind: role
version: v7
metadata:
  name: kube-read-only
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_groups: [session-users]
    kubernetes_resources:
      - kind: pod
        namespace: '*'
        name: '*'
        verbs: [get, list]
"""


class _UpgradeThenGarbage(protocol.Protocol):
    """A client that gets a real 101 for an exec, then sends bytes no protocol allows."""

    GARBAGE = b"\x80\x03\x00\x63\x00\x00\x00\x04junk" + b"\xff" * 64

    def __init__(self, request: bytes):
        self._request = request
        self.received = bytearray()
        self.upgraded = defer.Deferred()
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data):
        self.received += data
        if not self.upgraded.called and b"\r\n\r\n" in self.received:
            self.upgraded.callback(bytes(self.received.split(b"\r\n", 1)[0]))

    def connectionLost(self, reason):
        if not self.upgraded.called:
            self.upgraded.errback(reason)
        self.closed.callback(None)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class _SessionTests(SessionsMixin):
    """The whole session feature set for one transport (WebSocket or SPDY-only)."""

    @coroutine_test
    async def test_exec_cp_tty_port_forward_recordings_and_audit(self):
        d = await self.deployment()
        binaries = kubectl_binaries()
        data = os.urandom(4 * 1024 * 1024)
        local = d.path("random.bin")
        with open(local, "wb") as f:
            f.write(data)
        echo = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo))
        self.addCleanup(echo.stopListening)
        remote = echo.getHost().port
        payload = os.urandom(3 * 1024 * 1024)

        for i, binary in enumerate(binaries):
            failed = await self.kubectl(binary, "exec", self.pod, "--", "sh", "-c", "exit 3", expect=3)
            self.assertIn("3", failed.err)
            piped = await self.kubectl(binary, "exec", "-i", self.pod, "--", "sh", "-c", "cat; echo done-$((40+2))",
                                       stdin=b"piped line\n")
            self.assertEqual(piped.out, "piped line\ndone-42\n")

            await self.kubectl(binary, "cp", local, f"{self.pod}:up{i}.bin")
            with open(os.path.join(self.root, f"up{i}.bin"), "rb") as f:
                self.assertEqual(_sha(f.read()), _sha(data))
            back = d.path(f"back{i}.bin")
            await self.kubectl(binary, "cp", f"{self.pod}:up{i}.bin", back)
            with open(back, "rb") as f:
                self.assertEqual(_sha(f.read()), _sha(data))

            terminal, transport = await self.sized_terminal(binary, 33, 111, "sh")
            await self.typed(terminal, transport, b"echo interactive-$((6*7))\n", b"interactive-42")
            transport.write(b"exit 7\n")
            self.assertEqual(await terminal.ended, 7, bytes(terminal.output[-500:]))

            port = free_port()
            forwarder = d.spawn("port-forward", [binary, "port-forward", f"pod/{self.pod}", f"{port}:{remote}"],
                                env=self.env())
            await forwarder.wait_for_output("Forwarding from", 60)
            for _ in range(2):
                client = _Collect(payload)
                await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port), client)
                self.assertEqual(_sha(await client.done), _sha(payload))
            await forwarder.stop()

        # The path under test really ran (what the kubelet negotiated with the API server).
        used = {n.protocol for n in self.standin.negotiated if n.status == 101}
        self.assertLessEqual(self.protocols, used)
        if not self.websocket:
            self.assertEqual(used, self.protocols)

        # Recordings reach Auth at each session's end; wait for the TTY ones.
        async def interactive_sessions():
            rows = await self.recordings()
            return [r for r in rows if r[4] == "sh" and r[6] == "yes"]

        deadline = self.reactor.seconds() + 60
        while len(await interactive_sessions()) < len(binaries):
            self.assertLess(self.reactor.seconds(), deadline, await self.recordings())
            await self.sleep(1)
        for row in await interactive_sessions():
            sid = row[0]
            played = (await d.tsh("play", sid, "--speed", "1000")).out
            self.assertIn("interactive-42", played)
            events = await self.play_json(sid)
            self.assertIn({"width": 111, "height": 33}, [
                {"width": e["width"], "height": e["height"]} for e in events if e["type"] == "resize"])
            self.assertEqual([e["code"] for e in events if e["type"] == "exit"], [7])
        kinds = {r[2] for r in await self.recordings()}
        self.assertIn("portforward", kinds)

        # The agent's audit spool uploads in the background: wait for the last events.
        wanted = {"session.start", "session.end", "exec", "port", "resize"}
        deadline = self.reactor.seconds() + 60
        while True:
            audit = await d.events(*wanted)
            types = {e.get("event") for e in audit}
            if wanted <= types and sum(e.get("event") == "resize" for e in audit) >= len(binaries):
                break
            self.assertLess(self.reactor.seconds(), deadline, types)
            await self.sleep(1)
        exits = [e.get("exitCode") for e in audit if e.get("event") == "exec"]
        self.assertIn("3", exits)
        self.assertIn("7", exits)
        ports = [e.get("port") for e in audit if e.get("event") == "port"]
        self.assertIn(remote, [int(p) for p in ports])

    @coroutine_test
    async def test_attach_piped_and_with_a_terminal_recorded_and_audited(self):
        """kubectl attach joins the container's running main process (the
        stand-in keeps one per container), through teleport_py, recorded and audited."""
        d = await self.deployment()
        pod = self.pod + "-attach"
        await create_attachable_pod(d.plane, pod, "default", self.node)
        binaries = kubectl_binaries()
        for i, binary in enumerate(binaries):
            piped = await self.kubectl(binary, "attach", "-i", pod, "-c", "app",
                                       stdin=b"echo piped-%d-$((6*7))\nexit\n" % i)
            self.assertIn(f"piped-{i}-42", piped.out)

            terminal = _Terminal()
            transport = self.reactor.spawnProcess(
                terminal, binary, [binary, "attach", "-it", pod, "-c", "term"],
                env={**self.env(), "TERM": "xterm"}, usePTY=True)
            self.addCleanup(_kill, transport)

            def attached():
                transport.write(b"echo attached-%d-$((6*7))\n" % i)
                return f"attached-{i}-42".encode() in terminal.output

            await wait_until(attached, 60, interval=0.5, reactor=self.reactor)
            transport.write(b"exit\n")
            self.assertEqual(await terminal.ended, 0, bytes(terminal.output[-500:]))

        used = {n.protocol for n in self.standin.negotiated if n.kind == "attach" and n.status == 101}
        self.assertEqual(len(used), 1)
        self.assertLessEqual(used, self.protocols)

        async def attach_recordings():
            return [r for r in await self.recordings() if r[2] == "attach" and r[6] == "yes"]

        deadline = self.reactor.seconds() + 60
        while len(await attach_recordings()) < 2 * len(binaries):
            self.assertLess(self.reactor.seconds(), deadline, await self.recordings())
            await self.sleep(1)
        played = [(await d.tsh("play", row[0], "--speed", "1000")).out for row in await attach_recordings()]
        for i in range(len(binaries)):
            self.assertTrue(any(f"piped-{i}-42" in out for out in played), played)
            self.assertTrue(any(f"attached-{i}-42" in out for out in played), played)

        deadline = self.reactor.seconds() + 60
        while True:
            audit = [e for e in await d.events("session.start", "session.end") if e.get("session_kind") == "attach"]
            counts = [sum(e.get("event") == kind for e in audit) for kind in ("session.start", "session.end")]
            if min(counts) >= 2 * len(binaries):
                break
            self.assertLess(self.reactor.seconds(), deadline, counts)
            await self.sleep(1)
        self.assertEqual({e.get("kubernetes_pod_name") for e in audit}, {pod})


class WebSocketSessionTests(_SessionTests, TestCase):
    """kubectl's defaults: WebSocket where the build has it."""

    protocols = {"v5.channel.k8s.io", "SPDY/3.1+portforward.k8s.io"}


class SpdyOnlySessionTests(_SessionTests, TestCase):
    """kubectl forced to SPDY, and the kubelet refuses WebSocket too."""

    websocket = False
    kubectl_env = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
    protocols = {"v4.channel.k8s.io", "portforward.k8s.io"}


class SessionFailureTests(SessionsMixin, TestCase):
    """Refusals, a dying agent, and a misbehaving client."""

    @coroutine_test
    async def test_role_without_exec_verb_is_refused_and_audited(self):
        d = await self.deployment()
        await d.tctl("create", "-f", d.write("read-only.yaml", READ_ONLY_ROLE))
        # Only this role: the built-in access role would allow every verb.
        await d.tctl("users", "update", "alice", "--set-roles=kube-read-only")
        await d.login("alice")
        await d.tsh("kube", "login", "my-cluster")
        for binary in kubectl_binaries():
            self.assertIn(self.pod, (await self.kubectl(binary, "get", "pods")).out)
            refused = await self.kubectl(binary, "exec", self.pod, "--", "true", expect=1)
            self.assertIn("forbidden", refused.err.lower())
            self.assertIn("exec", refused.err)
        self.assertEqual([n for n in self.standin.negotiated if n.status == 101], [])
        def refused_exec(events):
            return [e for e in events
                    if e.get("user") == "alice" and e.get("response_code") == 403 and "exec" in str(e)]

        denied = refused_exec(await d.wait_for_events("kube.request", until=refused_exec))
        self.assertTrue(denied, "the refused exec is not in the audit log")

    @coroutine_test
    async def test_agent_killed_mid_session_keeps_the_recording(self):
        d = await self.deployment()
        binary = kubectl_binaries()[-1]
        terminal, transport = self.terminal(binary, "sh")
        await self.typed(terminal, transport, b"echo before-the-$((6*7))-kill\n", b"before-the-42-kill")
        # The spool appends at least every second: give it time to reach the disk.
        await self.sleep(3)
        await d.agent.kill9()
        code = await terminal.ended  # the test timeout catches a hang
        self.assertNotEqual(code, 0)

        await d.start_agent()
        await d.wait_for_clusters({"my-cluster"})

        async def recorded():
            for row in await self.recordings():
                if row[4] == "sh":
                    return row[0]
            return None

        deadline = self.reactor.seconds() + 90
        while (sid := await recorded()) is None:
            self.assertLess(self.reactor.seconds(), deadline, "the killed session never reached Auth")
            await self.sleep(1)
        self.assertIn("before-the-42-kill", (await d.tsh("play", sid, "--speed", "1000")).out)

    @coroutine_test
    async def test_garbage_after_upgrade_closes_only_that_session(self):
        d = await self.deployment()
        binary = kubectl_binaries()[-1]
        terminal, transport = self.terminal(binary, "sh")
        await self.typed(terminal, transport, b"echo first-$((1+1))\n", b"first-2")

        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        with open(os.path.join(keys, "kube", "my-cluster", "cert.pem"), "rb") as f:
            cert = f.read()
        with open(os.path.join(keys, "key.pem"), "rb") as f:
            key = f.read()
        with open(os.path.join(keys, "host_ca.pem"), "rb") as f:
            host_ca = f.read()
        options = optionsForClientTLS(
            "kube-teleport-proxy-alpn.teleport.cluster.local",
            trustRoot=Certificate.loadPEM(host_ca),
            clientCertificate=PrivateCertificate.loadPEM(key + cert),
        )
        request = (
            f"POST /api/v1/namespaces/default/pods/{self.pod}/exec?command=sleep&command=30&stdout=true"
            " HTTP/1.1\r\nHost: kube\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        bad = _UpgradeThenGarbage(request)
        await connectProtocol(SSL4ClientEndpoint(self.reactor, "127.0.0.1", d.proxy_port, options), bad)
        status = await bad.upgraded
        self.assertIn(b" 101 ", status)
        bad.transport.write(_UpgradeThenGarbage.GARBAGE)
        await bad.closed  # the test timeout catches a session that stays open

        await self.typed(terminal, transport, b"echo still-$((2+2))\n", b"still-4")
        self.assertTrue(d.agent.running)
        transport.write(b"exit\n")
        self.assertEqual(await terminal.ended, 0)
        self.assertEqual((await self.kubectl(binary, "exec", self.pod, "--", "echo", "after")).out, "after\n")
