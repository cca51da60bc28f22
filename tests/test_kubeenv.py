"""
The test harness itself: process helpers on real processes, and a real
kube-apiserver whose authentication and RBAC the rest of the suite relies on.
"""

import base64
import os
import sys

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.support import procs
from tests.support.kubeenv import KubeControlPlane, kubectl_binaries, shared_control_plane
from tests.support.procs import (
    CommandTimeout,
    ManagedProcess,
    ProcessWaitError,
    free_port,
    require_tool,
    run,
    wait_until,
)

PYTHON = sys.executable

LISTEN_AND_WAIT = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(600)
"""

#: Bound to a group used by no other test: the control plane is shared by the
#: whole run, and the end-to-end tests bind "viewers" to broader rights.
POD_READER = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: test-pod-reader
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: test-viewers-read-pods
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: test-pod-reader
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: kubeenv-pod-readers
"""


class FreePortTests(unittest.TestCase):
    def test_never_hands_out_a_port_twice(self):
        """The kernel may answer two bind(0) calls with one port; a deployment
        given that port for both auth and proxy cannot start."""
        import socket
        from unittest import mock

        taken = procs.free_port()
        real_socket = socket.socket

        class RepeatingFirst(real_socket):
            answers = [taken, taken]

            def getsockname(self):
                if RepeatingFirst.answers:
                    return ("127.0.0.1", RepeatingFirst.answers.pop())
                return super().getsockname()

        with mock.patch.object(procs.socket, "socket", RepeatingFirst):
            port = procs.free_port()
        self.assertNotEqual(port, taken)
        self.assertEqual(RepeatingFirst.answers, [])


class RunTests(unittest.TestCase):
    def test_collects_output_code_and_stdin(self):
        script = "import sys; d = sys.stdin.read(); print(d.upper()); print('oops', file=sys.stderr); sys.exit(3)"
        d = run([PYTHON, "-c", script], stdin=b"hello")

        def check(result):
            self.assertEqual((result.code, result.stdout, result.stderr), (3, b"HELLO\n", b"oops\n"))

        return d.addCallback(check)

    def test_timeout_kills(self):
        d = run([PYTHON, "-c", "import time; time.sleep(600)"], timeout=0.2)
        return self.assertFailure(d, CommandTimeout)


class ManagedProcessTests(unittest.TestCase):
    def spawn(self, script, *args):
        process = ManagedProcess([PYTHON, "-c", script, *args], self.mktemp() + ".log").start()
        self.addCleanup(process.kill9)
        return process

    @defer.inlineCallbacks
    def test_wait_for_port_and_output_then_stop(self):
        port = free_port()
        process = self.spawn(LISTEN_AND_WAIT, str(port))
        yield process.wait_for_port(port, timeout=30)
        match = yield process.wait_for_output(r"^listen\w+", timeout=30)
        self.assertEqual(match.group(0), b"listening")
        code = yield process.stop()
        self.assertEqual(code, -15)
        self.assertFalse(process.running)

    @defer.inlineCallbacks
    def test_stop_escalates_to_sigkill(self):
        process = self.spawn(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
        )
        yield process.wait_for_output("ready", timeout=30)
        code = yield process.stop(grace=0.2)
        self.assertEqual(code, -9)

    @defer.inlineCallbacks
    def test_death_while_waiting_reports_log_tail(self):
        process = self.spawn("import sys; print('no config file here'); sys.exit(2)")
        failure = yield self.assertFailure(process.wait_for_output("never", timeout=30), ProcessWaitError)
        self.assertIn("exited with code 2", str(failure))
        self.assertIn("no config file here", str(failure))
        self.assertEqual((yield process.exited), 2)

    @defer.inlineCallbacks
    def test_timeout_reports_log_tail(self):
        process = self.spawn("import time; print('still booting', flush=True); time.sleep(600)")
        yield process.wait_for_output("booting", timeout=30)
        failure = yield self.assertFailure(process.wait_for(lambda: False, timeout=0.2), ProcessWaitError)
        self.assertIn("still booting", str(failure))


PARENT_OF_SLEEPER = """
import sys
from twisted.internet import reactor
from tests.support.procs import ManagedProcess

child = ManagedProcess([sys.executable, "-c", "import time; time.sleep(600)"], sys.argv[1]).start()
print("child", child.pid, flush=True)
reactor.run()
"""


def _gone(pid):
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class OrphanTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_children_die_with_a_killed_test_runner(self):
        log_dir = self.mktemp()
        os.makedirs(log_dir)
        parent = ManagedProcess(
            [PYTHON, "-c", PARENT_OF_SLEEPER, os.path.join(log_dir, "child.log")],
            os.path.join(log_dir, "parent.log"),
            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
        ).start()
        self.addCleanup(parent.kill9)
        match = yield parent.wait_for_output(rb"^child (\d+)$", timeout=30)
        child_pid = int(match.group(1))
        self.assertFalse(_gone(child_pid))
        yield parent.kill9()
        yield wait_until(lambda: _gone(child_pid), timeout=30)


class RequireToolTests(unittest.SynchronousTestCase):
    def test_finds_on_path_and_by_path(self):
        self.assertEqual(require_tool(PYTHON), PYTHON)
        self.assertEqual(require_tool("python3", path=os.path.dirname(PYTHON)), os.path.join(os.path.dirname(PYTHON), "python3"))

    def test_missing_skips_outside_ci(self):
        self.patch(os, "environ", {**os.environ, "CI": "false"})
        self.assertRaises(unittest.SkipTest, require_tool, "no-such-tool-teleport-py")

    def test_missing_fails_under_ci(self):
        self.patch(os, "environ", {**os.environ, "CI": "true"})
        error = self.assertRaises(unittest.FailTest, require_tool, "/nonexistent/kube-apiserver")
        self.assertIn("/nonexistent/kube-apiserver", str(error))


class ControlPlaneTests(unittest.TestCase):
    """End to end against the real kube-apiserver shared by the whole run."""

    timeout = 300

    def plane(self):
        return shared_control_plane(reactor)

    @defer.inlineCallbacks
    def test_admin_lists_namespaces_with_every_kubectl(self):
        plane = yield self.plane()
        binaries = kubectl_binaries()
        if procs.running_under_ci():
            self.assertEqual(len(binaries), 2)
        for binary in binaries:
            result = yield plane.kubectl("get", "ns", "-o", "name", binary=binary)
            self.assertEqual(result.code, 0, f"{binary}: {result.err}")
            self.assertIn("namespace/kube-system", result.out.split())

    @defer.inlineCallbacks
    def test_admin_kubeconfig_holds_a_client_certificate(self):
        plane = yield self.plane()
        with open(plane.admin_kubeconfig) as f:
            config = yaml.safe_load(f)
        self.assertEqual(os.stat(plane.admin_kubeconfig).st_mode & 0o777, 0o600)
        user = config["users"][0]["user"]
        cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
        self.assertEqual(
            [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)], ["system:masters"]
        )

    @defer.inlineCallbacks
    def test_rbac_is_enforced_per_user_and_group(self):
        plane = yield self.plane()
        yield plane.apply(POD_READER)
        kubeconfig = plane.write_kubeconfig(
            self.mktemp(), contexts={"bob": ("bob", ("kubeenv-pod-readers",)), "mallory": ("mallory", ("strangers",))}
        )
        allowed = yield plane.kubectl("get", "pods", "-n", "default", kubeconfig=kubeconfig)
        self.assertEqual(allowed.code, 0, allowed.err)

        denied = yield plane.kubectl("delete", "pod", "anything", "-n", "default", kubeconfig=kubeconfig)
        self.assertNotEqual(denied.code, 0)
        self.assertIn('User "bob" cannot delete resource "pods"', denied.err)

        stranger = yield plane.kubectl("--context=mallory", "get", "pods", kubeconfig=kubeconfig)
        self.assertNotEqual(stranger.code, 0)
        self.assertIn('User "mallory" cannot list resource "pods"', stranger.err)

    @defer.inlineCallbacks
    def test_multi_context_kubeconfig_with_certificate_and_token_users(self):
        plane = yield self.plane()
        yield plane.apply(POD_READER)
        kubeconfig = plane.write_kubeconfig(
            self.mktemp(),
            contexts={"viewer-cluster": ("bob", ("kubeenv-pod-readers",))},
            token_contexts={"admin-cluster": "admin"},
            current_context="admin-cluster",
        )
        current = yield plane.kubectl("config", "current-context", kubeconfig=kubeconfig)
        self.assertEqual(current.out.strip(), "admin-cluster")

        as_admin = yield plane.kubectl("get", "ns", "-o", "name", kubeconfig=kubeconfig)
        self.assertEqual(as_admin.code, 0, as_admin.err)
        as_bob = yield plane.kubectl("--context=viewer-cluster", "get", "ns", kubeconfig=kubeconfig)
        self.assertIn('User "bob" cannot list resource "namespaces"', as_bob.err)
        as_bob = yield plane.kubectl("--context=viewer-cluster", "get", "pods", kubeconfig=kubeconfig)
        self.assertEqual(as_bob.code, 0, as_bob.err)

    @defer.inlineCallbacks
    def test_only_the_right_token_authenticates(self):
        plane = yield self.plane()
        kubeconfig = plane.write_kubeconfig(self.mktemp(), token_contexts={"by-token": "admin"})
        right = yield plane.kubectl("get", "ns", kubeconfig=kubeconfig)
        self.assertEqual(right.code, 0, right.err)
        wrong = yield plane.kubectl("--token=not-the-token", "get", "ns", kubeconfig=kubeconfig)
        self.assertNotEqual(wrong.code, 0)
        self.assertIn("Unauthorized", wrong.err)


class ControlPlaneLifecycleTests(unittest.TestCase):
    """A private control plane, because these tests break it."""

    timeout = 300

    @defer.inlineCallbacks
    def test_apiserver_kill9_is_noticed(self):
        plane = KubeControlPlane(reactor, self.mktemp())
        self.addCleanup(plane.stop)
        yield plane.start()
        code = yield plane.apiserver.kill9()
        self.assertEqual(code, -9)
        self.assertEqual((yield plane.apiserver.exited), -9)
        result = yield plane.kubectl("get", "ns", "--request-timeout=5s")
        self.assertNotEqual(result.code, 0)

    @defer.inlineCallbacks
    def test_stop_removes_data(self):
        plane = KubeControlPlane(reactor, self.mktemp())
        yield plane.start()
        self.assertTrue(os.path.isdir(os.path.join(plane.workdir, "etcd")))
        yield plane.stop()
        self.assertFalse(os.path.exists(plane.workdir))
        self.assertFalse(plane.etcd.running)
