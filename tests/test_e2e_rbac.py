"""Fine-grained Kubernetes RBAC end to end: the seed's ``dev-namespace-access``
role, real kubectl, the real chain (proxy, reverse tunnel, agent) and a real
kube-apiserver on which the impersonated group may do nearly anything, so that
only Teleport's roles stop what is stopped."""
from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.e2e import Deployment, coroutine_test
from tests.support.kubeenv import kubectl_binaries
from tests.support.seed import DEV_NAMESPACE_ACCESS_ROLE

#: ``dev-team`` may do everything with pods, secrets and the test CRDs,
#: cluster-wide: the API server alone would allow every request below.
DEV_TEAM_RBAC = """
apiVersion: v1
kind: Namespace
metadata: {name: development}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: teleport-test-dev-team}
rules:
- apiGroups: [""]
  resources: ["pods", "secrets", "namespaces"]
  verbs: ["*"]
- apiGroups: ["example.com"]
  resources: ["widgets", "gadgets"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: teleport-test-dev-team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: teleport-test-dev-team}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: dev-team}
"""


def crd(plural: str, kind: str) -> str:
    return f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.example.com}}
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: {plural}, singular: {kind.lower()}, kind: {kind}}}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"""


WIDGETS_ONLY_ROLE = """\
kind: role
version: v8
metadata:
  name: widgets-only
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_groups: [dev-team]
    kubernetes_resources:
      - kind: widgets
        api_group: example.com
        namespace: development
        name: '*'
        verbs: ['*']
"""

#: Groups come from the user's traits (``tctl users update --set-kubernetes-groups``).
TRAIT_GROUPS_ROLE = """\
kind: role
version: v8
metadata:
  name: trait-groups
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_groups: ['{{internal.kubernetes_groups}}']
    kubernetes_users: ['{{internal.kubernetes_users}}']
"""


class RBACEndToEndTests(TestCase):
    timeout = 900

    async def deployment(self) -> Deployment:
        d = await Deployment(self, self.mktemp()).start(labels={"env": "development"})
        await d.plane.apply(DEV_TEAM_RBAC)
        await d.plane.apply(crd("widgets", "Widget") + "---" + crd("gadgets", "Gadget"))
        for name, text in (("dev-namespace-access", DEV_NAMESPACE_ACCESS_ROLE), ("widgets-only", WIDGETS_ONLY_ROLE),
                           ("trait-groups", TRAIT_GROUPS_ROLE)):
            await d.tctl("create", "-f", d.write(f"{name}.yaml", text))
        return d

    async def as_user(self, d: Deployment, user: str, roles: str) -> None:
        await d.add_user(user, roles)
        await d.login(user)
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")

    @coroutine_test
    async def test_dev_namespace_access_role(self):
        d = await self.deployment()
        plane = d.plane
        suffix = str(abs(hash(d.dir)) % 100000)
        hidden, visible = f"hidden-{suffix}", f"visible-{suffix}"
        await plane.kubectl("run", hidden, "--image=busybox", "--restart=Never", "-n", "default")
        await plane.kubectl("create", "secret", "generic", f"s-{suffix}", "-n", "default", "--from-literal=k=v")
        # The API server alone would let dev-team do all of it.
        can = await plane.kubectl("auth", "can-i", "delete", "secrets", "-n", "default",
                                  "--as=alice", "--as-group=dev-team")
        self.assertEqual(can.out.strip(), "yes")

        await self.as_user(d, "alice", "dev-namespace-access")
        await d.kubectl("run", visible, "--image=busybox", "--restart=Never", "-n", "development")
        for binary in kubectl_binaries():
            pods = (await d.kubectl("get", "pods", "-A", binary=binary)).out
            self.assertIn(visible, pods)
            self.assertNotIn(hidden, pods)
            self.assertNotRegex(pods, r"(?m)^(default|kube-system)\s")

        refused = await d.kubectl("get", "secrets", "-n", "default", expect=1)
        self.assertIn('secrets is forbidden: User "alice"', refused.err)
        self.assertIn("teleport role", refused.err)
        refused = await d.kubectl("delete", "secret", f"s-{suffix}", "-n", "default", expect=1)
        self.assertIn("teleport role", refused.err)
        # The API server's own view: the secret is still there.
        self.assertIn(f"s-{suffix}", (await plane.kubectl("get", "secrets", "-n", "default")).out)

        # A watch across namespaces shows only development's events.
        watch = d.spawn("watch", [kubectl_binaries()[0], "get", "pods", "-A", "-w"], env=d.env())
        await watch.wait_for_output(visible, timeout=60)
        await plane.kubectl("run", f"late-hidden-{suffix}", "--image=busybox", "--restart=Never", "-n", "default")
        await plane.kubectl("run", f"late-visible-{suffix}", "--image=busybox", "--restart=Never",
                            "-n", "development")
        await watch.wait_for_output(f"late-visible-{suffix}", timeout=60)
        self.assertNotIn(f"late-hidden-{suffix}".encode(), watch.output())

        await d.kubectl("delete", "pod", visible, "-n", "development", "--wait=false")
        self.assertNotRegex((await plane.kubectl("get", "pods", "-n", "development")).out, rf"(?m)^{visible}\s")

        def secrets_denied(events):
            return any(e.get("user") == "alice" and e.get("response_code") == 403
                       and e.get("resource_kind") == "secrets" and e.get("resource_namespace") == "default"
                       and e.get("reason") for e in events)

        events = [e for e in await d.wait_for_events("kube.request", until=secrets_denied)
                  if e.get("user") == "alice"]
        denied = [e for e in events if e.get("response_code") == 403]
        self.assertTrue(any(e.get("resource_kind") == "secrets" and e.get("resource_namespace") == "default"
                            and e.get("reason") for e in denied), denied)

    @coroutine_test
    async def test_custom_resources_and_trait_groups(self):
        d = await self.deployment()
        await d.plane.apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: development}\n")
        await self.as_user(d, "bob", "widgets-only")
        self.assertIn("w1", (await d.kubectl("get", "widgets", "-n", "development")).out)
        refused = await d.kubectl("get", "gadgets", "-n", "development", expect=1)
        self.assertIn("gadgets is forbidden", refused.err)
        refused = await d.kubectl("get", "pods", "-n", "development", expect=1)
        self.assertIn("teleport role", refused.err)

        # Without the trait the API server refuses (no group); with it, the
        # group reaches the Impersonate-Group header.
        await self.as_user(d, "carol", "trait-groups")
        refused = await d.kubectl("get", "pods", "-n", "development", expect=1)
        self.assertNotIn("teleport role", refused.err)
        self.assertIn('"carol"', refused.err)
        await d.tctl("users", "update", "carol", "--set-kubernetes-groups=dev-team",
                     "--set-kubernetes-users=carol-k8s")
        await d.login("carol")
        await d.tsh("kube", "login", "my-cluster")
        # Exit 0: the API server now sees dev-team, the trait reached Impersonate-Group.
        await d.kubectl("get", "pods", "-n", "development")
