"""Resource access requests end to end: real tsh, tctl and kubectl (both
builds) through the real chain to a real kube-apiserver, exec through the
kubelet stand-in.

alice holds no kube access; her role lets her search as ``pod-access``. She
finds the pods she could ask for (``tsh request search``, listed by the
agent from the API server), requests one, bob approves, and her
certificate reaches exactly that pod: ``get``, ``exec`` and ``logs`` yes;
another pod, another namespace, secrets: a Kubernetes Status refusing it;
listing pods shows that pod alone (Teleport filters lists). When the request
ends, everything is refused again."""
from __future__ import annotations

import itertools
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import PASSWORD, Deployment, coroutine_test
from tests.support.kubeenv import create_running_pod, group_cluster_role, kubectl_binaries, register_node
from tests.support.kubelet import KubeletStandin
from tests.support.session_roles import SESSIONS_RBAC

#: How long approved access lasts: enough for the kubectl calls below on a
#: busy machine, short enough to watch it end.
ACCESS_SECONDS = 120

POD_ACCESS_ROLE = """\
kind: role
version: v7
metadata: {name: pod-access}
spec:
  allow:
    kubernetes_labels: {'*': '*'}
    kubernetes_groups: [session-users]
    kubernetes_resources:
      - {kind: '*', namespace: '*', name: '*', verbs: ['*']}
"""
POD_REQUESTER_ROLE = f"""\
kind: role
version: v7
metadata: {{name: pod-requester}}
spec:
  allow:
    request:
      search_as_roles: [pod-access]
      max_duration: {ACCESS_SECONDS}s
"""
POD_REVIEWER_ROLE = """\
kind: role
version: v7
metadata: {name: pod-reviewer}
spec:
  allow:
    review_requests:
      roles: [pod-access]
"""

LOCK = """\
kind: lock
version: v2
metadata: {name: lock-alice}
spec:
  target: {user: alice}
  message: resource request test over
"""

_names = itertools.count()


class ResourceRequestFlowTests(TestCase):
    timeout = 600

    async def pending_id(self, d: Deployment, env) -> str:
        for _ in range(120):
            out = (await d.tsh("request", "ls", env=env)).out
            found = re.findall(r"^(\S+)\s+alice\s+pod-access\s+/example/pod/\S+\s+\S+\s+PENDING", out,
                               re.MULTILINE)
            if found:
                return found[-1]
            await deferLater(reactor, 0.5, lambda: None)
        raise AssertionError(f"no pending resource request from alice:\n{out}")

    async def pods(self, d: Deployment) -> tuple[str, str, str]:
        """THAT and OTHER in ``default``, ELSEWHERE in another namespace, on a stand-in kubelet."""
        n = f"{os.getpid()}-{next(_names)}"
        root = d.path("pod-root")
        os.makedirs(root)
        standin = KubeletStandin(reactor, root, websocket=True)
        port = await standin.start()
        self.addCleanup(standin.stop)
        node = f"resreq-node-{n}"
        await register_node(d.plane, node, port)
        namespace = f"resreq-{n}"
        await d.plane.apply(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n")
        that, other, elsewhere = f"that-{n}", f"other-{n}", f"elsewhere-{n}"
        await create_running_pod(d.plane, that, "default", node)
        await create_running_pod(d.plane, other, "default", node)
        await create_running_pod(d.plane, elsewhere, namespace, node)
        self.namespace = namespace
        return that, other, elsewhere

    @coroutine_test
    async def test_request_one_pod_use_it_and_nothing_else(self):
        d = await Deployment(self, self.mktemp()).start()
        await d.plane.apply(SESSIONS_RBAC)
        # Searching namespaces lists them as pod-access's group: Kubernetes must let it.
        await d.plane.apply(group_cluster_role("resreq-namespaces", "session-users",
                                               [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]}]))
        for name, text in (("pod-access", POD_ACCESS_ROLE), ("pod-requester", POD_REQUESTER_ROLE),
                           ("pod-reviewer", POD_REVIEWER_ROLE)):
            await d.tctl("create", "-f", d.write(f"{name}.yaml", text))
        await d.add_user("alice", "pod-requester")
        await d.add_user("bob", "pod-reviewer")
        bob = d.user_env("bob")
        await d.login("bob", bob)
        await d.login("alice")
        that, other, elsewhere = await self.pods(d)
        # No kube access: alice sees no cluster and gets no kube certificate.
        self.assertNotIn("my-cluster", (await d.tsh("kube", "ls")).out)
        await d.tsh("kube", "login", "my-cluster", expect=1)

        # Requests must go through search_as_roles.
        refused = await d.tsh("request", "create", "--resource=/example/pod/my-cluster/kube-system/x",
                              "--resource=/example/secret/my-cluster/default/s", expect=1)
        self.assertIn("cannot be requested", refused.err)
        refused = await d.tsh("request", "create", "--resource=/example/pod/no-such-cluster/default/x", expect=1)
        self.assertIn("do not allow requesting resource", refused.err)

        # Search: what alice could request, listed by the agent from the API
        # server as her search_as_roles see it; she never held a cluster credential.
        found = (await d.tsh("request", "search", "--kind=pod", "--kube-cluster=my-cluster")).out
        self.assertRegex(found, r"Name\s+Namespace\s+Labels\s+Resource ID")
        for pod in (that, other):
            self.assertRegex(found, rf"{pod}\s+default\s+/example/pod/my-cluster/default/{pod}")
        self.assertNotIn(elsewhere, found)
        self.assertIn("To request access to these resources, run\n> tsh request create --resource /example/pod/", found)
        everywhere = (await d.tsh("request", "search", "--kind=pod", "--kube-cluster=my-cluster",
                                  "--all-kube-namespaces", f"--search={self.namespace}")).out
        self.assertIn(f"/example/pod/my-cluster/{self.namespace}/{elsewhere}", everywhere)
        self.assertNotIn(that, everywhere)
        namespaces = (await d.tsh("request", "search", "--kind=namespace", "--kube-cluster=my-cluster")).out
        self.assertIn(f"/example/namespace/my-cluster/{self.namespace}", namespaces)
        clusters = (await d.tsh("request", "search", "--kind=kube_cluster")).out
        self.assertIn("/example/kube_cluster/my-cluster", clusters)
        # bob may search as nothing: the cluster is out of his reach.
        refused = await d.tsh("request", "search", "--kind=pod", "--kube-cluster=my-cluster", env=bob, expect=1)
        self.assertIn('access to kubernetes cluster "my-cluster" denied', refused.err)
        searches = await d.wait_for_events(
            "access_request.search", until=lambda evs: any(e.get("user") == "alice" for e in evs))
        self.assertEqual({e["search_as_roles"][0] for e in searches if e.get("user") == "alice"}, {"pod-access"})

        resource = re.search(rf"/example/pod/my-cluster/default/{that}\b", found).group(0)
        waiting = Deferred.fromCoroutine(d.tsh("request", "create", f"--resource={resource}",
                                               "--reason=debug the web pod"))
        request_id = await self.pending_id(d, bob)
        shown = (await d.tsh("request", "show", request_id, env=bob)).out
        self.assertIn(resource, shown)
        self.assertIn("pod-access", shown)
        await d.tsh("request", "review", "--approve", request_id, "--reason=go", env=bob)
        created = await waiting
        self.assertIn("Approved: go", created.out)
        listed = (await d.tctl("requests", "ls")).out
        self.assertRegex(listed, rf"{request_id}\s+alice\s+pod-access\s+{re.escape(resource)}\s+\S+\s+APPROVED")
        status = (await d.tsh("status")).out
        self.assertIn(request_id, status)
        self.assertIn(f"Allowed resources: {resource}", status)

        # Only the pod's cluster, and in it only that pod.
        self.assertIn("my-cluster", (await d.tsh("kube", "ls")).out)
        await d.tsh("kube", "login", "my-cluster")
        for binary in kubectl_binaries():
            got = await d.kubectl("get", "pod", that, "-o", "name", binary=binary)
            self.assertEqual(got.out.strip(), f"pod/{that}")
            ran = await d.kubectl("exec", that, "--", "echo", "inside", that, binary=binary)
            self.assertEqual(ran.out, f"inside {that}\n")
            # Teleport lets logs of that pod through (the kubelet stand-in serves
            # none, so the API server's own error comes back, never a refusal of ours).
            logs = await d.kubectl("logs", that, binary=binary, expect=None)
            self.assertNotIn("forbidden", logs.err)
            listed = await d.kubectl("get", "pods", "-n", "default", "-o", "name", binary=binary)
            self.assertEqual(listed.out.split(), [f"pod/{that}"])
            everywhere = await d.kubectl("get", "pods", "-A", "-o", "name", binary=binary)
            self.assertEqual(everywhere.out.split(), [f"pod/{that}"])
            for args in (("get", "pod", other), ("exec", other, "--", "true"), ("logs", other),
                         ("get", "pods", "-n", self.namespace), ("get", "pod", elsewhere, "-n", self.namespace),
                         ("get", "secrets"), ("delete", "pod", that, "--wait=false"),
                         ("get", "configmaps", "-n", "default")):
                refused = await d.kubectl(*args, binary=binary, expect=1)
                self.assertIn("forbidden", refused.err, (binary, args, refused.err))
                self.assertIn('User "alice"', refused.err, (binary, args))
        events = await d.wait_for_events(
            "kube.request", until=lambda evs: any(e.get("user") == "alice" for e in evs))
        mine = [e for e in events if e.get("user") == "alice"]
        self.assertTrue(mine)
        for event in mine:
            self.assertEqual((event.get("access_requests"), event.get("allowed_resources")),
                             ([request_id], [resource]), event)
        refusals = [e for e in mine if e.get("resource_name") == other]
        self.assertTrue(refusals and not any(e["success"] for e in refusals))

        # The access ends with the request: everything is refused after.
        deadline = reactor.seconds() + ACCESS_SECONDS + 60
        while True:
            after = await d.kubectl("get", "pod", that, expect=None)
            if after.code != 0:
                break
            self.assertLess(reactor.seconds(), deadline, "kubectl still works long after the request expired")
            await deferLater(reactor, 2, lambda: None)
        self.assertIn("expired", after.err)
        await d.kubectl("exec", that, "--", "true", expect=1)
        await d.login("alice")
        self.assertNotIn("my-cluster", (await d.tsh("kube", "ls")).out)
        await d.tsh("kube", "login", "my-cluster", expect=1)

        # A lock written as a file (tctl create -f, Teleport's lock v2) stops her at once.
        await d.tctl("create", "-f", d.write("lock.yaml", LOCK))
        refused = await d.tsh("login", f"--proxy={d.proxy}", "--user=alice", "--insecure",
                              stdin=PASSWORD.encode() + b"\n", expect=1)
        self.assertIn('lock targeting user "alice" is in force: resource request test over', refused.err)
        self.assertIn("lock-alice", (await d.tctl("get", "locks")).out)
