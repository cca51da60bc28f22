"""The seed's steps 3 and 4, end to end through the real chain:
kubectl -> proxy -> reverse tunnel -> agent -> kube-apiserver."""
from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.e2e import Deployment, coroutine_test, tool
from tests.support.kubeenv import kubectl_binaries
from tests.support.procs import free_port

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

        events = await d.events("kube.request")
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
