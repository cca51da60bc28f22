"""Request targets and denials end to end: raw clients, both kubectls and the
official Python client through the real chain (proxy, reverse tunnel,
agent) to a real kube-apiserver whose RBAC alone would allow everything
tried here, so only Teleport stops what is stopped.

A target in absolute-form (``GET https://x/api/v1/namespaces/default/secrets``)
was classified by the agent as a non-resource request and served by
kube-apiserver from the full URL: every ``kubernetes_resources`` rule was
bypassed (issue 10). Such requests now get a 400 and reach nothing; this is
proved with the API server's own request counters
(``apiserver_request_total``), which do move for an allowed request.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys

import h2.config
import h2.connection
import h2.events
import h11
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from teleport_py.pki import client_tls_options
from teleport_py.pki.keys import load_certificate_pem, load_certificates_pem, load_private_key_pem
from tests.e2e import Deployment, coroutine_test
from tests.support.kubeenv import kubectl_binaries
from tests.support.procs import run, wait_until

#: ``target-team`` may do anything with pods (exec included) and secrets,
#: cluster-wide: the API server alone would allow every request below.
TARGET_TEAM_RBAC = """
apiVersion: v1
kind: Namespace
metadata: {name: development}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: teleport-test-target-team}
rules:
- apiGroups: [""]
  resources: ["pods", "pods/exec", "secrets", "namespaces"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: teleport-test-target-team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: teleport-test-target-team}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: target-team}
"""

#: The development namespace only, and no exec.
NO_EXEC_ROLE = """\
kind: role
version: v8
metadata:
  name: development-no-exec
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_groups: [target-team]
    kubernetes_resources:
      - kind: '*'
        api_group: '*'
        namespace: development
        name: '*'
        verbs: [get, list, watch, create, update, patch, delete]
"""

#: Two possible kubernetes_users: the user has to pick one (``--as``).
TWO_USERS_ROLE = """\
kind: role
version: v8
metadata:
  name: two-kube-users
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_users: [kube-user-a, kube-user-b]
    kubernetes_groups: [target-team]
"""

KUBE_SNI = "kube-teleport-proxy-alpn.teleport.cluster.local"


class RawHTTP11(Protocol):
    """One request written as given, its response parsed by h11."""

    def __init__(self, request: bytes):
        self.request = request
        self.received = b""
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(None)

    def response(self, method: bytes) -> tuple[int, bytes, dict, bytes] | None:
        """(status, reason, headers, body) once complete, else None."""
        if not self.received:  # h11 reads no bytes as the end of the connection
            return None
        http = h11.Connection(h11.CLIENT)
        http.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        http.send(h11.EndOfMessage())
        http.receive_data(self.received)
        head, body = None, b""
        while True:
            event = http.next_event()
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return head.status_code, head.reason, dict(head.headers), body
            else:
                return None


class RawHTTP2(Protocol):
    """One h2 request with the pseudo-headers given, as sent."""

    def __init__(self, method: bytes, path: bytes):
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.method, self.path = method, path
        self.status, self.body, self.ended = None, b"", False

    def connectionMade(self):
        self.h2.initiate_connection()
        self.h2.send_headers(1, [(b":method", self.method), (b":scheme", b"https"), (b":path", self.path),
                                 (b":authority", b"kube")], end_stream=True)
        self.transport.write(self.h2.data_to_send())

    def dataReceived(self, data):
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
        self.transport.write(self.h2.data_to_send())


def apiserver_requests(metrics: str, pattern: str) -> float:
    """The API server's ``apiserver_request_total`` summed over the series matching ``pattern``."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("apiserver_request_total{") and re.search(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


class RequestTargetEndToEndTests(TestCase):
    timeout = 900

    async def deployment(self) -> Deployment:
        d = await Deployment(self, self.mktemp()).start(labels={"env": "development"})
        await d.plane.apply(TARGET_TEAM_RBAC)
        for name, text in (("no-exec", NO_EXEC_ROLE), ("two-users", TWO_USERS_ROLE)):
            await d.tctl("create", "-f", d.write(f"{name}.yaml", text))
        return d

    async def as_user(self, d: Deployment, user: str, roles: str) -> None:
        await d.add_user(user, roles)
        await d.login(user)
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")

    def tls(self, d: Deployment, user: str, alpn: bytes):
        """The user's kube certificate from tsh's store, as kubectl presents it."""
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", user))[0]
        read = lambda *parts: open(os.path.join(keys, *parts), "rb").read()
        return client_tls_options(
            KUBE_SNI, trusted_cas=load_certificates_pem(read("host_ca.pem")),
            certificate=load_certificate_pem(read("kube", "my-cluster", "cert.pem")),
            private_key=load_private_key_pem(read("key.pem")), alpn=[alpn])

    async def http11(self, d: Deployment, user: str, method: bytes, target: bytes, *headers: bytes):
        request = b"%s %s HTTP/1.1\r\nHost: kube\r\n%s\r\n" % (method, target, b"".join(h + b"\r\n" for h in headers))
        client = RawHTTP11(request)
        await connectProtocol(wrapClientTLS(self.tls(d, user, b"http/1.1"),
                                            TCP4ClientEndpoint(reactor, "127.0.0.1", d.proxy_port)), client)
        await wait_until(lambda: client.response(method) is not None or client.closed.called, 60)
        client.transport.loseConnection()
        response = client.response(method)
        self.assertIsNotNone(response, client.received)
        return response

    async def http2(self, d: Deployment, user: str, method: bytes, path: bytes):
        client = RawHTTP2(method, path)
        await connectProtocol(wrapClientTLS(self.tls(d, user, b"h2"),
                                            TCP4ClientEndpoint(reactor, "127.0.0.1", d.proxy_port)), client)
        await wait_until(lambda: client.ended, 60)
        client.transport.loseConnection()
        return client.status, client.body

    @coroutine_test
    async def test_absolute_form_targets_get_400_and_reach_nothing(self):
        d = await self.deployment()
        plane = d.plane
        suffix = str(abs(hash(d.dir)) % 100000)
        secret = f"target-{suffix}"
        await plane.kubectl("create", "secret", "generic", secret, "-n", "default", "--from-literal=k=v")
        await self.as_user(d, "carol", "development-no-exec")

        touched = r'resource="secrets"|subresource="exec"'
        before = apiserver_requests((await plane.kubectl("get", "--raw", "/metrics")).out, touched)
        upgrade = (b"Connection: Upgrade", b"Upgrade: SPDY/3.1", b"X-Stream-Protocol-Version: v4.channel.k8s.io",
                   b"Content-Length: 0")
        refused = [
            await self.http11(d, "carol", b"GET", b"https://x/api/v1/namespaces/default/secrets"),
            await self.http11(d, "carol", b"DELETE", b"https://x/api/v1/namespaces/default/secrets/" + secret.encode()),
            await self.http11(d, "carol", b"POST", b"https://x/api/v1/namespaces/development/pods/p/exec"
                              b"?command=id&stdout=true", *upgrade),
        ]
        for status, reason, headers, body in refused:
            self.assertEqual((status, reason), (400, b"Bad Request"), body)
            self.assertIn("absolute-form", json.loads(body)["message"])
            self.assertNotIn(secret.encode(), body)
        status, body = await self.http2(d, "carol", b"GET", b"https://x/api/v1/namespaces/default/secrets")
        self.assertEqual(status, 400, body)
        self.assertIn("absolute-form", json.loads(body)["message"])
        # Not HTTP at all (a space inside the target): the agent's HTTP parser's 400, audited the same way.
        status, reason, headers, body = await self.http11(d, "carol", b"GET", b"/api/v1/namespaces/default/sec rets")
        self.assertEqual(status, 400, body)

        # Nothing reached the API server: its counters for secrets and exec did not move...
        after = apiserver_requests((await plane.kubectl("get", "--raw", "/metrics")).out, touched)
        self.assertEqual(after, before)
        self.assertIn(secret, (await plane.kubectl("get", "secrets", "-n", "default")).out)
        # ...while the same counters see an allowed request of carol's.
        await d.kubectl("get", "secrets", "-n", "development")
        moved = apiserver_requests((await plane.kubectl("get", "--raw", "/metrics")).out, touched)
        self.assertGreater(moved, after)

        unparsed = lambda e: e.get("user") == "carol" and e.get("response_code") == 400 and not e.get("http_method")
        events = await d.wait_for_events("kube.request", until=lambda events: any(map(unparsed, events)))
        (malformed,) = [e for e in events if unparsed(e)]
        self.assertFalse(malformed["success"])
        self.assertIn("illegal request line", malformed["reason"])
        self.assertLessEqual(len(malformed["reason"]), 160)
        events = [e for e in events if e.get("user") == "carol" and not unparsed(e)]
        bad = [e for e in events if e.get("response_code") == 400]
        self.assertEqual(sorted(e["http_method"] for e in bad), ["DELETE", "GET", "GET", "POST"])
        for event in bad:
            self.assertFalse(event["success"])
            self.assertTrue(event["request_path"].startswith("https://x/api/v1/namespaces/"), event)
            self.assertIn("absolute-form", event["reason"])

    @coroutine_test
    async def test_denials_read_in_both_kubectls_and_the_python_client(self):
        d = await self.deployment()
        await self.as_user(d, "dave", "two-kube-users")
        for binary in kubectl_binaries():
            refused = await d.kubectl("get", "pods", "-A", binary=binary, expect=1)
            self.assertIn("please select a user to impersonate", refused.err)
            self.assertNotIn("Forbidden): unknown", refused.err)
            # Picking one of the two works.
            await d.kubectl("get", "pods", "-n", "development", "--as=kube-user-a", "--as-group=target-team",
                            binary=binary)

        script = (
            "import sys\n"
            "from kubernetes import client, config\n"
            "from kubernetes.client.rest import ApiException\n"
            "config.load_kube_config()\n"
            "try:\n"
            "    client.CoreV1Api().list_namespaced_secret('default')\n"
            "except ApiException as e:\n"
            "    print(e.status, repr(e.reason), e.body.decode() if isinstance(e.body, bytes) else e.body)\n"
            "else:\n"
            "    sys.exit('listed secrets it may not')\n"
        )
        result = await run([sys.executable, "-c", script], env=d.env(), timeout=120)
        self.assertEqual(result.code, 0, result.err)
        status, reason, body = result.out.strip().split(" ", 2)
        self.assertEqual((status, reason), ("403", "'Forbidden'"))
        self.assertIn("please select a user to impersonate", json.loads(body)["message"])
