"""Fine-grained Kubernetes RBAC end to end: the seed's ``dev-namespace-access``
role, real kubectl, the real chain (proxy, reverse tunnel, agent) and a real
kube-apiserver on which the impersonated group may do nearly anything, so that
only Teleport's roles stop what is stopped."""
from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.e2e import Deployment, coroutine_test
from tests.support.kubeenv import group_cluster_role, kubectl_binaries
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


#: The API server lets ``creators`` create and read what the four kubectl
#: create commands make: only the Teleport role below narrows it.
CREATORS_RBAC = group_cluster_role("teleport-test-creators", "creators", [
    {"apiGroups": ["", "apps"], "resources": ["configmaps", "secrets", "namespaces", "deployments"],
     "verbs": ["create", "get", "list"]},
])

CREATORS_ROLE = """\
kind: role
version: v8
metadata:
  name: creators
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_groups: [creators]
    kubernetes_resources:
      - {kind: configmaps, api_group: '', namespace: development, name: '*', verbs: [create]}
      - {kind: secrets, api_group: '', namespace: development, name: 'app-*', verbs: [create]}
      - {kind: namespaces, api_group: '', namespace: '*', name: 'team-*', verbs: [create]}
      - {kind: deployments, api_group: apps, namespace: development, name: '*', verbs: [create]}
  deny:
    kubernetes_resources:
      - {kind: configmaps, api_group: '', namespace: development, name: 'locked-*', verbs: ['*']}
"""


class ProtobufCreateTests(TestCase):
    """``kubectl create configmap|secret generic|namespace|deployment`` send
    protobuf bodies (application/vnd.kubernetes.protobuf): the agent reads
    the object's name from them and allows or refuses by role, with both
    kubectl builds."""

    timeout = 900

    @coroutine_test
    async def test_creates_allowed_and_refused_by_role(self):
        d = await Deployment(self, self.mktemp()).start(labels={"env": "development"})
        await d.plane.apply(DEV_TEAM_RBAC + "---\n" + CREATORS_RBAC)
        await d.tctl("create", "-f", d.write("creators.yaml", CREATORS_ROLE))
        await d.add_user("maker", "creators")
        await d.login("maker")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        suffix = str(abs(hash(d.dir)) % 100000)
        for index, binary in enumerate(kubectl_binaries()):
            tag = f"{suffix}-{index}"
            allowed = [
                (("configmap", f"cm-{tag}", "-n", "development", "--from-literal=k=v"), ("configmap", "development")),
                (("secret", "generic", f"app-{tag}", "-n", "development", "--from-literal=k=v"),
                 ("secret", "development")),
                (("namespace", f"team-{tag}"), ("namespace", None)),
                (("deployment", f"web-{tag}", "-n", "development", "--image=stand-in"), ("deployment", "development")),
            ]
            refused = [
                (("configmap", f"cm-{tag}", "-n", "default", "--from-literal=k=v"), ("configmap", "default"),
                 'configmaps "cm-'),
                # Only the name, read from the protobuf body, makes these differ from the allowed ones.
                (("configmap", f"locked-{tag}", "-n", "development", "--from-literal=k=v"),
                 ("configmap", "development"), f'configmaps "locked-{tag}" is forbidden'),
                (("secret", "generic", f"db-{tag}", "-n", "development", "--from-literal=k=v"),
                 ("secret", "development"), f'secrets "db-{tag}" is forbidden'),
                (("namespace", f"prod-{tag}"), ("namespace", None), f'namespaces "prod-{tag}" is forbidden'),
                (("deployment", f"web-{tag}", "-n", "default", "--image=stand-in"), ("deployment", "default"),
                 "deployments"),
            ]
            for args, (kind, namespace) in allowed:
                await d.kubectl("create", *args, binary=binary)
                self.assertTrue(await self.exists(d, kind, args, namespace), args)
            for args, (kind, namespace), message in refused:
                result = await d.kubectl("create", *args, binary=binary, expect=1)
                self.assertIn(message, result.err)
                self.assertIn("teleport role", result.err)
                self.assertFalse(await self.exists(d, kind, args, namespace), args)

        events = [e for e in await d.events("kube.request") if e.get("user") == "maker" and e.get("verb") == "create"]
        locked = [e for e in events if (e.get("resource_name") or "").startswith("locked-")]
        self.assertEqual({e.get("response_code") for e in locked}, {403})
        self.assertTrue(any(e.get("resource_name", "").startswith("team-") and e.get("response_code") == 201
                            for e in events), events)

    async def exists(self, d: Deployment, kind: str, args: tuple, namespace: str | None) -> bool:
        name = args[2] if args[0] == "secret" else args[1]
        where = ("-n", namespace) if namespace else ()
        result = await d.plane.kubectl("get", kind, name, *where, "-o", "name")
        return result.code == 0
