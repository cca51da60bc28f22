"""
The kubelet stand-in behind a real kube-apiserver 1.20.2, driven by real
kubectl builds: exec, cp, port-forward and an interactive TTY, once over
WebSocket (v5 / SPDY-in-WebSocket) and once over SPDY only.
"""

import fcntl
import hashlib
import itertools
import os
import struct
import termios

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.testing import StringTransport
from twisted.protocols.wire import Echo
from twisted.trial import unittest

from tests.support import kubeenv
from tests.support.clients import Collect as _Collect, Terminal as _Terminal, kill_process as _kill
from tests.support.kubelet import (
    KubeletStandin, SessionError, _KubeletConnection, _ResizeDecoder, create_attachable_pod,
)
from tests.support.procs import ManagedProcess, free_port, run, wait_until

_names = itertools.count()


def _reactor():
    from twisted.internet import reactor

    return reactor


class _StandinTests:
    """Mixed into a TestCase with ``websocket`` (stand-in offers it) and ``kubectl_env``."""

    timeout = 300
    websocket = True
    kubectl_env = {}
    exec_protocol = None  # what every exec must have negotiated
    port_forward_protocol = None

    @defer.inlineCallbacks
    def setUp(self):
        self.reactor = _reactor()
        self.plane = yield kubeenv.shared_control_plane(self.reactor)
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.standin = KubeletStandin(self.reactor, self.root, websocket=self.websocket)
        port = yield self.standin.start()
        self.addCleanup(self.standin.stop)
        n = next(_names)
        self.node, self.pod = f"standin-node-{n}", f"standin-pod-{n}"
        yield kubeenv.register_node(self.plane, self.node, port)
        yield kubeenv.create_running_pod(self.plane, self.pod, "default", self.node)
        self.kubectls = kubeenv.kubectl_binaries()

    def env(self):
        home = os.path.join(self.root, os.pardir, "home")
        os.makedirs(home, exist_ok=True)
        return {"HOME": home, "PATH": os.environ.get("PATH", os.defpath), **self.kubectl_env}

    def kubectl(self, binary, *args, stdin=b""):
        argv = [binary, f"--kubeconfig={self.plane.admin_kubeconfig}", *args]
        return run(argv, env=self.env(), stdin=stdin, timeout=120, reactor=self.reactor)

    def assertNegotiated(self, kind, expected):
        """Every upgrade of ``kind`` that succeeded used ``expected``: the path under test really ran."""
        used = {n.protocol for n in self.standin.negotiated if n.kind == kind and n.status == 101}
        self.assertEqual(used, {expected})

    @defer.inlineCallbacks
    def test_exit_code(self):
        for binary in self.kubectls:
            result = yield self.kubectl(binary, "exec", self.pod, "--", "sh", "-c", "exit 3")
            self.assertEqual(result.code, 3, (binary, result.err))
        self.assertNegotiated("exec", self.exec_protocol)

    @defer.inlineCallbacks
    def test_stdin_to_eof(self):
        for binary in self.kubectls:
            result = yield self.kubectl(binary, "exec", "-i", self.pod, "--", "cat", stdin=b"hi\n")
            self.assertEqual((result.code, result.out), (0, "hi\n"), (binary, result.err))
        self.assertNegotiated("exec", self.exec_protocol)

    @defer.inlineCallbacks
    def test_stdout_and_stderr_separated(self):
        for binary in self.kubectls:
            result = yield self.kubectl(binary, "exec", self.pod, "--", "sh", "-c", "echo out; echo err >&2")
            self.assertEqual((result.code, result.out, result.err), (0, "out\n", "err\n"), binary)
        self.assertNegotiated("exec", self.exec_protocol)

    @defer.inlineCallbacks
    def test_cp_round_trip(self):
        local = os.path.join(self.root, os.pardir, "local.bin")
        data = os.urandom(5 * 1024 * 1024)
        with open(local, "wb") as f:
            f.write(data)
        for i, binary in enumerate(self.kubectls):
            result = yield self.kubectl(binary, "cp", local, f"{self.pod}:up{i}.bin")
            self.assertEqual(result.code, 0, (binary, result.err))
            with open(os.path.join(self.root, f"up{i}.bin"), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
            back = os.path.join(self.root, os.pardir, f"back{i}.bin")
            result = yield self.kubectl(binary, "cp", f"{self.pod}:up{i}.bin", back)
            self.assertEqual(result.code, 0, (binary, result.err))
            with open(back, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
        self.assertNegotiated("exec", self.exec_protocol)

    @defer.inlineCallbacks
    def test_port_forward_moves_megabytes_both_ways(self):
        factory = protocol.Factory.forProtocol(Echo)
        echo = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(echo.stopListening)
        remote = echo.getHost().port
        payload = os.urandom(3 * 1024 * 1024)
        for binary in self.kubectls:
            local = free_port()
            forwarder = ManagedProcess(
                [binary, f"--kubeconfig={self.plane.admin_kubeconfig}", "port-forward", f"pod/{self.pod}",
                 f"{local}:{remote}"],
                os.path.join(self.root, os.pardir, f"port-forward-{local}.log"), env=self.env(), reactor=self.reactor,
            ).start()
            try:
                yield forwarder.wait_for_output("Forwarding from", 60)
                for _ in range(2):  # two connections: stream pairs with distinct request ids
                    client = _Collect(payload, len(payload))
                    yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", local), client)
                    echoed = yield client.done
                    self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(payload).digest())
            finally:
                yield forwarder.stop()
        self.assertNegotiated("portforward", self.port_forward_protocol)

    @defer.inlineCallbacks
    def test_interactive_tty_with_resize(self):
        for binary in self.kubectls:
            terminal = _Terminal()
            transport = self.reactor.spawnProcess(
                terminal, binary, [binary, f"--kubeconfig={self.plane.admin_kubeconfig}", "exec", "-it", self.pod,
                                   "--", "sh"],
                env={**self.env(), "TERM": "xterm"}, usePTY=True,
            )
            self.addCleanup(_kill, transport)
            # The user resizes their terminal: kubectl sends a resize event, the stand-in applies it to its pty.
            fcntl.ioctl(transport.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))

            def resized():
                transport.write(b"stty size\n")
                return b"33 111" in terminal.output

            yield wait_until(resized, 60, interval=0.5, reactor=self.reactor)
            transport.write(b"echo typed-$((6*7))\n")
            yield wait_until(lambda: b"typed-42" in terminal.output, 60, reactor=self.reactor)
            transport.write(b"exit 7\n")
            code = yield terminal.ended
            self.assertEqual(code, 7, (binary, bytes(terminal.output[-500:])))
        self.assertNegotiated("exec", self.exec_protocol)

    @defer.inlineCallbacks
    def test_attach_shares_the_container_main_process(self):
        """Two attaches see one process: what B types, A sees too; when the
        process exits, both sessions end (with no exit code, as a kubelet's
        attach) and the next attach gets a new process."""
        pod = self.pod + "-attach"
        yield defer.ensureDeferred(create_attachable_pod(self.plane, pod, "default", self.node))
        for binary in self.kubectls:
            first = _Terminal()
            transport = self.reactor.spawnProcess(
                first, binary, [binary, f"--kubeconfig={self.plane.admin_kubeconfig}", "attach", "-i", pod, "-c", "app"],
                env=self.env())
            self.addCleanup(_kill, transport)

            def attached():
                transport.write(b"echo from-a-$((1+1))\n")
                return b"from-a-2" in first.output

            yield wait_until(attached, 60, interval=0.5, reactor=self.reactor)
            (main,) = self.standin.containers.values()
            second = yield self.kubectl(binary, "attach", "-i", pod, "-c", "app",
                                        stdin=b"echo from-b-$((2+2))\nexit 3\n")
            self.assertEqual((second.code, second.out.count("from-b-4")), (0, 1), (binary, second.err))
            self.assertEqual((yield first.ended), 0)
            self.assertIn(b"from-b-4", first.output)
            yield main.ended
            self.assertEqual(self.standin.containers, {})
        self.assertNegotiated("attach", self.exec_protocol)

    @defer.inlineCallbacks
    def test_attach_with_a_terminal(self):
        pod = self.pod + "-attach-tty"
        yield defer.ensureDeferred(create_attachable_pod(self.plane, pod, "default", self.node))
        for binary in self.kubectls:
            terminal = _Terminal()
            transport = self.reactor.spawnProcess(
                terminal, binary, [binary, f"--kubeconfig={self.plane.admin_kubeconfig}", "attach", "-it", pod,
                                   "-c", "term"],
                env={**self.env(), "TERM": "xterm"}, usePTY=True,
            )
            self.addCleanup(_kill, transport)
            fcntl.ioctl(transport.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 21, 99, 0, 0))

            def resized():
                transport.write(b"stty size\n")
                return b"21 99" in terminal.output

            yield wait_until(resized, 60, interval=0.5, reactor=self.reactor)
            transport.write(b"exit\n")
            self.assertEqual((yield terminal.ended), 0, (binary, bytes(terminal.output[-500:])))
        self.assertNegotiated("attach", self.exec_protocol)


class WebSocketPathTests(_StandinTests, unittest.TestCase):
    """kubectl's defaults: WebSocket first, and the stand-in accepts it."""

    exec_protocol = "v5.channel.k8s.io"
    port_forward_protocol = "SPDY/3.1+portforward.k8s.io"


class SpdyOnlyTests(_StandinTests, unittest.TestCase):
    """kubectl forced to SPDY; the stand-in refuses WebSocket too."""

    websocket = False
    kubectl_env = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
    exec_protocol = "v4.channel.k8s.io"
    port_forward_protocol = "portforward.k8s.io"


class FallbackTests(unittest.TestCase):
    """A stand-in without WebSocket answers 400 and kubectl falls back to SPDY on a new connection."""

    timeout = 300

    @defer.inlineCallbacks
    def test_exec_falls_back_to_spdy(self):
        reactor = _reactor()
        plane = yield kubeenv.shared_control_plane(reactor)
        root = self.mktemp()
        os.makedirs(root)
        standin = KubeletStandin(reactor, root, websocket=False)
        port = yield standin.start()
        self.addCleanup(standin.stop)
        n = next(_names)
        yield kubeenv.register_node(plane, f"standin-node-{n}", port)
        yield kubeenv.create_running_pod(plane, f"standin-pod-{n}", "default", f"standin-node-{n}")
        binary = kubeenv.kubectl_binaries()[0]
        result = yield plane.kubectl("exec", f"standin-pod-{n}", "--", "echo", "fell back", binary=binary)
        self.assertEqual((result.code, result.out), (0, "fell back\n"), result.err)
        self.assertEqual([(x.upgrade, x.status) for x in standin.negotiated], [("websocket", 400), ("spdy/3.1", 101)])


class SessionIsolationTests(unittest.SynchronousTestCase):
    """In memory: bad bytes end one connection, with an answer and no exception."""

    def connection(self, websocket=True):
        standin = KubeletStandin(None, self.mktemp(), websocket=websocket)
        connection = _KubeletConnection(standin)
        transport = StringTransport()
        connection.makeConnection(transport)
        return standin, connection, transport

    def test_garbage_after_spdy_upgrade_aborts_that_connection(self):
        standin, connection, transport = self.connection()
        connection.dataReceived(
            b"POST /portforward/default/pod HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n"
            b"\x80\x03\x00\x63\x00\x00\x00\x00garbage: control frame type 99"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertIn(b"X-Stream-Protocol-Version: portforward.k8s.io", transport.value())
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(standin.negotiated[0].protocol, "portforward.k8s.io")

    def test_garbage_after_websocket_upgrade_aborts_that_connection(self):
        _, connection, transport = self.connection()
        connection.dataReceived(
            b"GET /portforward/default/pod HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n\r\n"
        )
        # RFC 6455 section 1.3's example key and accept value.
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", transport.value())
        connection.dataReceived(b"\x82\x05hello")  # unmasked client frame: not WebSocket
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_websocket_refused_when_disabled(self):
        standin, connection, transport = self.connection(websocket=False)
        connection.dataReceived(
            b"GET /exec/default/pod/app?command=true&output=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(standin.negotiated[0].status, 400)

    def test_no_common_spdy_protocol_is_403(self):
        _, connection, transport = self.connection()
        connection.dataReceived(
            b"POST /exec/default/pod/app?command=true HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        self.assertIn(b"X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io", transport.value())

    def test_unknown_path_and_bad_http(self):
        _, connection, transport = self.connection()
        connection.dataReceived(b"GET /pods HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "))
        _, connection, transport = self.connection()
        connection.dataReceived(b"\x00\x01 not http\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))


class ResizeDecoderTests(unittest.SynchronousTestCase):
    def test_events_cut_anywhere(self):
        stream = b'{"Width":120,"Height":40}\n{"Width":80,"Height":24}\n'
        for cut in range(len(stream) + 1):
            decoder = _ResizeDecoder()
            self.assertEqual(decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]), [(120, 40), (80, 24)])

    def test_out_of_range(self):
        self.assertRaises(SessionError, _ResizeDecoder().feed, b'{"Width":70000,"Height":1}\n')

    @given(st.binary(max_size=6000))
    def test_arbitrary_bytes_raise_only_session_error(self, data):
        decoder = _ResizeDecoder()
        try:
            decoder.feed(data)
            decoder.flush()
        except SessionError:
            pass
