"""The seed's steps 3 and 4, end to end through the real chain:
kubectl -> proxy -> reverse tunnel -> agent -> kube-apiserver."""
from __future__ import annotations

import glob
import os

import h2.config
import h2.connection
import h2.events
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from teleport_py.pki import client_tls_options
from teleport_py.pki.keys import load_certificate_pem, load_certificates_pem, load_private_key_pem
from tests.e2e import Deployment, coroutine_test, tool
from tests.support.kubeenv import kubectl_binaries
from tests.support.procs import free_port, tcp_connections, wait_until

DEV_ONLY_ROLE = """\
kind: role
version: v7
metadata:
  name: dev-only
spec:
  allow:
    kubernetes_labels:
      env: dev
    kubernetes_groups: [viewers]
"""


class H2Kubectl(Protocol):
    """A raw HTTP/2 kubectl connection: each stream's status, body and end."""

    def __init__(self):
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, dict] = {}
        self.lost = False
        self.goaway = False

    def connectionMade(self):
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def request(self, path: bytes, *headers: tuple[bytes, bytes]) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = {"status": None, "body": b"", "ended": False, "reset": False}
        self.h2.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", path),
                                         (b":authority", b"kube"), *headers], end_stream=True)
        self.transport.write(self.h2.data_to_send())
        return stream_id

    def dataReceived(self, data):
        for event in self.h2.receive_data(data):
            stream = self.streams.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                stream["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                stream["body"] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                stream["reset"] = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = True
        self.transport.write(self.h2.data_to_send())

    def connectionLost(self, reason):
        self.lost = True


class KubectlEndToEndTests(TestCase):
    timeout = 600

    async def deployment(self) -> Deployment:
        deployment = await Deployment(self, self.mktemp()).start()
        await deployment.login_with_kube_access("alice")
        return deployment

    @coroutine_test
    async def test_seed_scenario_with_kube_login(self):
        d = await self.deployment()
        listing = await d.wait_for_clusters({"my-cluster", "second-cluster"})
        self.assertRegex(listing, r"Kube Cluster Name\s+Labels\s+Selected")
        self.assertRegex(listing, r"my-cluster\s+env=prod")

        out = (await d.tsh("kube", "login", "my-cluster")).out
        self.assertIn('Logged into Kubernetes cluster "my-cluster"', out)
        self.assertFalse(
            any(k in open(d.kubeconfig).read() for k in ("token:", "client-key-data")),
            "the kubeconfig must hold no credential, only the tsh exec plugin",
        )
        await d.plane.kubectl("run", "e2e-pod", "--image=busybox", "--restart=Never", "-n", "default")
        for binary in kubectl_binaries():
            pods = (await d.kubectl("get", "pods", "-A", binary=binary)).out
            self.assertIn("e2e-pod", pods)

        # The API server refuses what the impersonated group may not do.
        denied = await d.kubectl("delete", "pod", "e2e-pod", "-n", "default", expect=1)
        self.assertIn("forbidden", denied.err.lower())
        self.assertIn('"alice"', denied.err)

        # A second cluster from the agent's two-context kubeconfig.
        await d.tsh("kube", "login", "second-cluster")
        context = (await d.kubectl("config", "current-context")).out.strip()
        self.assertEqual(context, "example-second-cluster")
        self.assertIn("default", (await d.kubectl("get", "namespaces")).out)
        self.assertRegex((await d.tsh("kube", "ls")).out, r"second-cluster\s+env=prod\s+\*")

        # A watch shows a pod created afterwards.
        await d.tsh("kube", "login", "my-cluster")
        watch = d.spawn("watch", [kubectl_binaries()[0], "get", "pods", "-n", "default", "-w"], env=d.env())
        await watch.wait_for_output(r"e2e-pod", timeout=60)
        await d.plane.kubectl("run", "late-pod", "--image=busybox", "--restart=Never", "-n", "default")
        await watch.wait_for_output(r"late-pod", timeout=60)

        def expected(events):
            alice = [e for e in events if e.get("user") == "alice"]
            return (any(e.get("verb") == "list" and e.get("response_code") == 200 for e in alice)
                    and any(e.get("verb") == "delete" and e.get("response_code") == 403 for e in alice)
                    and any(e.get("kube_cluster") == "second-cluster" for e in alice))

        events = await d.wait_for_events("kube.request", until=expected)
        alice = [e for e in events if e.get("user") == "alice"]
        self.assertTrue(any(e.get("verb") == "list" and e.get("response_code") == 200 for e in alice), alice)
        self.assertTrue(any(e.get("verb") == "delete" and e.get("response_code") == 403 for e in alice), alice)
        self.assertTrue(any(e.get("kube_cluster") == "second-cluster" for e in alice), alice)

    @coroutine_test
    async def test_user_without_matching_role_is_refused(self):
        d = await self.deployment()
        await d.wait_for_clusters({"my-cluster"})
        await d.tctl("create", "-f", d.write("dev-only.yaml", DEV_ONLY_ROLE))
        await d.add_user("bob", "dev-only")
        await d.login("bob")
        self.assertNotIn("my-cluster", (await d.tsh("kube", "ls")).out)
        refused = await d.tsh("kube", "login", "my-cluster", expect=1)
        self.assertIn("my-cluster", refused.err)

    @coroutine_test
    async def test_seed_scenario_through_tsh_proxy_kube(self):
        d = await self.deployment()
        await d.wait_for_clusters({"my-cluster", "second-cluster"})
        local = d.spawn(
            "tsh-proxy",
            [tool("tsh"), "proxy", "kube", "my-cluster", "second-cluster", "--port", str(free_port())],
            env=d.env(),
        )
        match = await local.wait_for_output(r"export KUBECONFIG=(\S+)", timeout=60)
        env = dict(d.env(), KUBECONFIG=match.group(1).decode())
        await d.plane.kubectl("run", "proxied-pod", "--image=busybox", "--restart=Never", "-n", "default")
        for binary in kubectl_binaries():
            self.assertIn("proxied-pod", (await d.kubectl("get", "pods", "-A", binary=binary, env=env)).out)
        contexts = (await d.kubectl("config", "get-contexts", "-o", "name", env=env)).out.split()
        self.assertEqual(len(contexts), 2, contexts)
        other = [c for c in contexts if "second-cluster" in c][0]
        self.assertIn("default", (await d.kubectl("--context", other, "get", "namespaces", env=env)).out)
        denied = await d.kubectl("delete", "pod", "proxied-pod", "-n", "default", env=env, expect=1)
        self.assertIn("forbidden", denied.err.lower())

    @coroutine_test
    async def test_h2_multiplexes_watches_and_requests_on_one_connection(self):
        """The proxy offers h2 on the kube SNI: 20 watches, a GET and a denied
        request share one TLS connection (one tunnel stream, one HTTP/2
        front in the agent), and the agent's death ends the watches with an
        error, not a hang."""
        d = await self.deployment()
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        read = lambda *parts: open(os.path.join(keys, *parts), "rb").read()
        tls = client_tls_options(
            "kube-teleport-proxy-alpn.teleport.cluster.local", trusted_cas=load_certificates_pem(read("host_ca.pem")),
            certificate=load_certificate_pem(read("kube", "my-cluster", "cert.pem")),
            private_key=load_private_key_pem(read("key.pem")), alpn=[b"h2"])
        client = await connectProtocol(
            wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", d.proxy_port)), H2Kubectl())
        watches = [client.request(b"/api/v1/namespaces/default/configmaps?watch=1") for _ in range(20)]
        get = client.request(b"/api/v1/namespaces/default")
        denied = client.request(b"/api/v1/namespaces/default/pods", (b"impersonate-user", b"admin"))
        streams = client.streams
        await wait_until(lambda: streams[get]["ended"] and streams[denied]["ended"]
                         and all(streams[w]["status"] for w in watches), 60)
        self.assertEqual(client.transport.negotiatedProtocol, b"h2")
        self.assertEqual((streams[get]["status"], streams[denied]["status"]), (200, 403))
        self.assertIn(b"impersonation request has been denied", streams[denied]["body"])
        self.assertEqual({streams[w]["status"] for w in watches}, {200})
        # The agent carries the 20 watches as streams of its HTTP/2 connection
        # to the API server (HTTP/1.1 would hold a connection per watch),
        # next to its keep-alive HTTP/1.1 connection for the GET.
        self.assertLessEqual(tcp_connections(d.agent.pid, d.plane.port), 3)

        await d.plane.kubectl("create", "configmap", "h2-watched", "-n", "default", "--from-literal=a=b")
        await wait_until(lambda: all(b"h2-watched" in streams[w]["body"] for w in watches), 60)

        async def watches_audited():
            events = await d.events("kube.request")
            return len([e for e in events if e.get("verb") == "watch" and e.get("resource_kind") == "configmaps"
                        and e.get("response_code") == 200]) == 20
        await wait_until(lambda: Deferred.fromCoroutine(watches_audited()), 60)

        await d.agent.kill9()
        await wait_until(lambda: client.lost or all(streams[w]["reset"] for w in watches), 60)
        self.assertFalse(any(streams[w]["ended"] for w in watches), "a watch ended as if complete")
