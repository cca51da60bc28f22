"""Tests for the AccessChecker: Teleport role semantics for Kubernetes."""
import json

import attrs

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube_status import KubeStatus
from teleport_py.rbac import AccessChecker, AccessDenied, as_v8, classify
from teleport_py.resources.role import KUBE_VERBS, KubernetesResource, Role, RoleConditions

EVERYWHERE = {"*": ("*",)}
DEV_CLUSTER = {"env": "dev", "region": "eu"}


def res(kind, namespace="*", name="*", verbs=("*",), api_group="") -> KubernetesResource:
    return KubernetesResource(kind=kind, namespace=namespace, name=name, verbs=tuple(verbs), api_group=api_group)


def role(name="r", version="v8", labels=EVERYWHERE, resources=(), users=(), groups=(),
         deny_labels=None, deny_resources=(), deny_users=(), deny_groups=()) -> Role:
    return Role(
        name=name, version=version,
        allow=RoleConditions(kubernetes_labels=dict(labels), kubernetes_resources=tuple(resources),
                             kubernetes_users=tuple(users), kubernetes_groups=tuple(groups)),
        deny=RoleConditions(kubernetes_labels=dict(deny_labels or {}), kubernetes_resources=tuple(deny_resources),
                            kubernetes_users=tuple(deny_users), kubernetes_groups=tuple(deny_groups)),
    )


def allowed(checker, method, path, query=None, labels=DEV_CLUSTER, **kwargs) -> bool:
    try:
        checker.check_request(classify(method, path, query or {}), labels, **kwargs)
    except AccessDenied:
        return False
    return True


class TableMixin:
    def assertTable(self, checker, table) -> None:
        for method, path, expected in table:
            self.assertEqual(allowed(checker, method, path), expected, (method, path))


class ClusterTests(SynchronousTestCase):
    def test_labels(self) -> None:
        table = [
            (EVERYWHERE, {}, True),
            ({"env": ("dev",)}, DEV_CLUSTER, True),
            ({"env": ("prod",)}, DEV_CLUSTER, False),
            ({"env": ("d*",)}, DEV_CLUSTER, True),
            ({"env": ("^(dev|qa)$",)}, DEV_CLUSTER, True),
            ({"env": ("^prod.*$",)}, DEV_CLUSTER, False),
            ({"env": ("dev",), "region": ("us",)}, DEV_CLUSTER, False),
            ({"team": ("*",)}, DEV_CLUSTER, False),
            ({}, DEV_CLUSTER, False),  # no kubernetes_labels grants nothing
        ]
        for labels, cluster, expected in table:
            checker = AccessChecker("alice", [role(labels=labels, groups=["g"])], {})
            if expected:
                checker.check_cluster("c1", cluster)
            else:
                error = self.assertRaises(AccessDenied, checker.check_cluster, "c1", cluster)
                self.assertIn('access to kubernetes cluster "c1" denied', error.message)

    def test_label_templates_use_traits(self) -> None:
        checker = AccessChecker("alice", [role(labels={"env": ("{{external.envs}}",)})], {"envs": ["qa", "dev"]})
        checker.check_cluster("c1", DEV_CLUSTER)
        self.assertRaises(AccessDenied, AccessChecker("bob", checker.roles, {}).check_cluster, "c1", DEV_CLUSTER)

    def test_deny_labels_win(self) -> None:
        checker = AccessChecker("alice", [role(), role("no-eu", labels={}, deny_labels={"region": ("eu",)})], {})
        error = self.assertRaises(AccessDenied, checker.check_cluster, "c1", DEV_CLUSTER)
        self.assertIn("no-eu", error.reason)
        checker.check_cluster("c2", {"region": "us"})
        self.assertFalse(allowed(checker, "GET", "/version"))

    def test_discovery_needs_only_cluster_access(self) -> None:
        only_pods = AccessChecker("alice", [role(resources=[res("pods", "dev")])], {})
        nothing = AccessChecker("alice", [role(labels={"env": ("prod",)})], {})
        for path in ["/api", "/apis", "/api/v1", "/apis/apps/v1", "/version", "/openapi/v2"]:
            self.assertTrue(allowed(only_pods, "GET", path), path)
            self.assertFalse(allowed(nothing, "GET", path), path)


class PerLabelsTests(SynchronousTestCase):
    """A checker answers for each cluster's labels on their own, however
    often and in whatever order it is asked (it keeps answers per labels)."""

    def test_answers_follow_the_labels_asked_about(self) -> None:
        checker = AccessChecker("alice", [
            role("dev", labels={"env": ("dev",)}, users=["dev-user"], resources=[res("pods", "dev")]),
            role("prod", labels={"env": ("prod",)}, users=["prod-user"], resources=[res("pods", "prod")]),
        ], {})
        dev, prod, qa = {"env": "dev"}, {"env": "prod"}, {"env": "qa"}
        for _ in range(2):
            self.assertEqual(checker.kube_principals(dev)[0], {"dev-user"})
            self.assertEqual(checker.kube_principals(prod)[0], {"prod-user"})
            self.assertTrue(allowed(checker, "GET", "/api/v1/namespaces/dev/pods/p", labels=dev))
            self.assertFalse(allowed(checker, "GET", "/api/v1/namespaces/dev/pods/p", labels=prod))
            self.assertTrue(allowed(checker, "GET", "/api/v1/namespaces/prod/pods/p", labels=prod))
            self.assertRaises(AccessDenied, checker.check_cluster, "qa", qa)
            checker.check_cluster("dev", dev)

    def test_a_refusal_is_asked_again_not_remembered_as_an_answer(self) -> None:
        checker = AccessChecker("alice", [role(users=["{{external.user"])], {})
        for _ in range(2):
            self.assertRaises(AccessDenied, checker.kube_principals, DEV_CLUSTER)


class PrincipalTests(SynchronousTestCase):
    def test_union_minus_deny(self) -> None:
        roles = [
            role("a", users=["u1"], groups=["g1", "g2"]),
            role("b", labels={"env": ("dev",)}, users=["u2"], groups=["g3"]),
            role("c", labels={"env": ("prod",)}, users=["u3"], groups=["g4"]),
            role("d", labels={}, deny_users=["u2"], deny_groups=["g2"]),
        ]
        users, groups = AccessChecker("alice", roles, {}).kube_principals(DEV_CLUSTER)
        self.assertEqual(users, {"u1"})
        self.assertEqual(groups, {"g1", "g3", "system:authenticated"})

    def test_default_user_is_username(self) -> None:
        users, groups = AccessChecker("alice", [role(groups=["viewers"])], {}).kube_principals(DEV_CLUSTER)
        self.assertEqual((users, groups), ({"alice"}, {"viewers", "system:authenticated"}))

    def test_templates(self) -> None:
        traits = {"kubernetes_groups": ["ops", "dev"], "kubernetes_users": ["alice@corp"]}
        checker = AccessChecker("alice", [role(users=["{{internal.kubernetes_users}}"],
                                               groups=["{{internal.kubernetes_groups}}", "{{external.none}}", "lit"])],
                                traits)
        self.assertEqual(checker.kube_principals(DEV_CLUSTER),
                         ({"alice@corp"}, {"ops", "dev", "lit", "system:authenticated"}))

    def test_impersonation(self) -> None:
        single = AccessChecker("alice", [role(users=["u1"], groups=["g1", "g2"])], {})
        several = AccessChecker("alice", [role(users=["u1", "u2"], groups=["g1"])], {})
        self.assertEqual(single.impersonation(DEV_CLUSTER, None, []), ("u1", ("g1", "g2", "system:authenticated")))
        self.assertEqual(single.impersonation(DEV_CLUSTER, "u1", ["g2"]), ("u1", ("g2", "system:authenticated")))
        self.assertEqual(several.impersonation(DEV_CLUSTER, "u2", []), ("u2", ("g1", "system:authenticated")))
        error = self.assertRaises(AccessDenied, several.impersonation, DEV_CLUSTER, None, [])
        self.assertEqual(error.message, "please select a user to impersonate, refusing to select a user "
                                        "due to several kubernetes_users set up for this user")
        self.assertRaises(AccessDenied, single.impersonation, DEV_CLUSTER, "system:admin", [])
        self.assertRaises(AccessDenied, single.impersonation, DEV_CLUSTER, None, ["system:masters"])
        self.assertRaises(AccessDenied, single.impersonation, DEV_CLUSTER, None, ["g1", "g3"])

    def test_every_user_denied(self) -> None:
        checker = AccessChecker("alice", [role(groups=["g"], deny_users=["alice"])], {})
        self.assertRaises(AccessDenied, checker.impersonation, DEV_CLUSTER, None, [])


class ResourceTests(TableMixin, SynchronousTestCase):
    def test_default_is_everything(self) -> None:
        for version in ("v7", "v8"):
            checker = AccessChecker("alice", [role(version=version)], {})
            self.assertTable(checker, [
                ("GET", "/api/v1/namespaces/any/secrets/s", True),
                ("DELETE", "/api/v1/nodes/n1", True),
                ("POST", "/apis/stable.example.com/v1/namespaces/x/crontabs", True),
            ])

    def test_v8_resources_and_groups(self) -> None:
        checker = AccessChecker("alice", [role(resources=[
            res("pods", "dev", verbs=["get", "list"]),
            res("deployments", "dev", api_group="apps"),
            res("crontabs", "*", api_group="stable.example.com", verbs=["get"]),
            res("configmaps", "*", api_group="*"),
        ])], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/namespaces/dev/pods/web", True),
            ("DELETE", "/api/v1/namespaces/dev/pods/web", False),
            ("GET", "/api/v1/namespaces/dev/secrets/web", False),
            ("PATCH", "/apis/apps/v1/namespaces/dev/deployments/api", True),
            ("PATCH", "/apis/extensions/v1beta1/namespaces/dev/deployments/api", False),
            ("GET", "/apis/stable.example.com/v1/namespaces/x/crontabs/c", True),
            ("GET", "/apis/other.example.com/v1/namespaces/x/crontabs/c", False),
            ("GET", "/api/v1/namespaces/any/configmaps/c", True),
        ])

    def test_v7_kinds_map_to_v8(self) -> None:
        table = [
            (res("pod", "dev"), "GET", "/api/v1/namespaces/dev/pods/p", True),
            (res("pod", "dev"), "GET", "/apis/other/v1/namespaces/dev/pods/p", False),
            (res("deployment", "dev"), "GET", "/apis/apps/v1/namespaces/dev/deployments/d", True),
            (res("deployment", "dev"), "GET", "/api/v1/namespaces/dev/deployments/d", False),
            (res("kube_role", "dev"), "GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/roles/r", True),
            (res("kube_node", "dev"), "GET", "/api/v1/nodes/n", True),  # v7 ignored namespace on global kinds
            (res("namespace", name="dev"), "GET", "/api/v1/namespaces/dev/secrets/s", True),
            (res("namespace", name="dev"), "POST", "/apis/example.com/v1/namespaces/dev/widgets", True),
            (res("namespace", name="dev"), "DELETE", "/api/v1/namespaces/dev", True),
            (res("namespace", name="dev"), "GET", "/api/v1/namespaces/prod/secrets/s", False),
            (res("namespace", name="dev"), "GET", "/api/v1/nodes/n", False),
            (res("*", "dev"), "GET", "/apis/example.com/v1/namespaces/dev/widgets/w", True),
            (res("*", "dev"), "GET", "/api/v1/nodes/n", True),  # v7 wildcard reaches cluster-wide kinds
            (res("*", "dev"), "GET", "/api/v1/namespaces/prod/pods/p", False),
        ]
        for rule, method, path, expected in table:
            checker = AccessChecker("alice", [role(version="v7", resources=[rule])], {})
            self.assertEqual(allowed(checker, method, path), expected, (rule, method, path))

    def test_v7_conversion(self) -> None:
        converted = as_v8(role(version="v7", resources=[res("deployment", "dev", "web", ["get"])]))
        self.assertEqual(converted.version, "v8")
        self.assertEqual(converted.allow.kubernetes_resources,
                         (res("deployments", "dev", "web", ["get"], api_group="apps"),))

    def test_namespace_and_name_patterns(self) -> None:
        checker = AccessChecker("alice", [role(resources=[
            res("pods", "team-*", "web-*"), res("secrets", "^(qa|stage)$", "^db-[0-9]+$"),
        ])], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/namespaces/team-a/pods/web-1", True),
            ("GET", "/api/v1/namespaces/team-a/pods/db-1", False),
            ("GET", "/api/v1/namespaces/other/pods/web-1", False),
            ("GET", "/api/v1/namespaces/qa/secrets/db-12", True),
            ("GET", "/api/v1/namespaces/qa/secrets/db-x", False),
            ("GET", "/api/v1/namespaces/prod/secrets/db-1", False),
        ])

    def test_verbs(self) -> None:
        checker = AccessChecker("alice", [role(resources=[
            res("pods", "dev", verbs=["get", "exec"]), res("pods", "ops", verbs=["*"]),
        ])], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/namespaces/dev/pods/p", True),
            ("POST", "/api/v1/namespaces/dev/pods/p/exec", True),
            ("POST", "/api/v1/namespaces/dev/pods/p/portforward", False),
            ("DELETE", "/api/v1/namespaces/dev/pods/p", False),
            ("GET", "/api/v1/namespaces/dev/pods", False),  # list is not get
            ("POST", "/api/v1/namespaces/ops/pods/p/portforward", True),
            ("DELETE", "/api/v1/namespaces/ops/pods", True),
            ("OPTIONS", "/api/v1/namespaces/ops/pods/p", False),  # unknown verb
            ("GET", "/api/v1/namespaces/ops/../dev/pods/p", False),  # unclassifiable
        ])

    def test_cluster_scoped_resources(self) -> None:
        checker = AccessChecker("alice", [role(resources=[
            res("*", "dev", api_group="*"), res("clusterroles", "", "view", api_group="rbac.authorization.k8s.io"),
        ])], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/namespaces/dev/pods/p", True),
            ("GET", "/api/v1/nodes/n1", False),  # a namespaced rule never reaches cluster-scoped objects
            ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/view", True),
            ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", False),
        ])
        everywhere = AccessChecker("alice", [role(resources=[res("nodes", "*")])], {})
        self.assertTrue(allowed(everywhere, "GET", "/api/v1/nodes/n1"))
        widgets = AccessChecker("alice", [role(resources=[res("widgets", "dev", api_group="example.com")])], {})
        self.assertTrue(allowed(widgets, "GET", "/apis/example.com/v1/widgets", namespace_scoped=True))
        self.assertFalse(allowed(widgets, "GET", "/apis/example.com/v1/widgets", namespace_scoped=False))
        self.assertFalse(allowed(checker, "GET", "/api/v1/nodes"))  # no rule could show any node
        one_node = role(resources=[res("nodes", "", "n1", ["list"])])
        self.assertTrue(allowed(AccessChecker("alice", [one_node], {}), "GET", "/api/v1/nodes"))
        some_denied = role("d", labels={}, deny_resources=[res("nodes", "", "n2")])
        self.assertTrue(allowed(AccessChecker("alice", [one_node, some_denied], {}), "GET", "/api/v1/nodes"))
        all_denied = role("d", labels={}, deny_resources=[res("nodes", "", "*")])
        self.assertFalse(allowed(AccessChecker("alice", [one_node, all_denied], {}), "GET", "/api/v1/nodes"))

    def test_read_only_namespace_access(self) -> None:
        checker = AccessChecker("alice", [role(resources=[res("pods", "dev", verbs=["get", "list"])])], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/namespaces/dev", True),
            ("GET", "/api/v1/namespaces", True),
            ("DELETE", "/api/v1/namespaces/dev", False),
            ("PUT", "/api/v1/namespaces/dev", False),
            ("GET", "/api/v1/namespaces/prod", False),
        ])
        info = classify("GET", "/api/v1/namespaces", {})
        self.assertTrue(checker.allows_item(info, "", "dev", DEV_CLUSTER))
        self.assertFalse(checker.allows_item(info, "", "prod", DEV_CLUSTER))

    def test_list_across_namespaces_is_filtered(self) -> None:
        checker = AccessChecker("alice", [role(resources=[res("pods", "dev", verbs=["list", "watch"])])], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/pods", True),
            ("GET", "/api/v1/namespaces/dev/pods", True),
            ("GET", "/api/v1/namespaces/prod/pods", False),  # 403, not an empty list
            ("GET", "/api/v1/secrets", False),
        ])
        info = classify("GET", "/api/v1/pods", {"watch": ["1"]})
        self.assertTrue(checker.allows_item(info, "dev", "p1", DEV_CLUSTER))
        self.assertFalse(checker.allows_item(info, "prod", "p1", DEV_CLUSTER))

    def test_deletecollection_needs_the_whole_collection(self) -> None:
        checker = AccessChecker("alice", [role(resources=[
            res("pods", "dev", "web-*"), res("pods", "ops"), res("configmaps", "*"),
        ], deny_resources=[res("configmaps", "kube-system", "cm")])], {})
        self.assertTable(checker, [
            ("DELETE", "/api/v1/namespaces/dev/pods", False),
            ("DELETE", "/api/v1/namespaces/ops/pods", True),
            ("DELETE", "/api/v1/pods", False),
            ("DELETE", "/api/v1/namespaces/qa/configmaps", True),
            ("DELETE", "/api/v1/configmaps", False),  # a deny could hit an item
        ])

    def test_deny_wins(self) -> None:
        checker = AccessChecker("alice", [
            role("all"),
            role("no-secrets", labels={}, deny_resources=[res("secrets", "*", api_group="*")]),
            role("no-prod-pods", labels={}, deny_resources=[res("pods", "prod")]),
            role("no-web", labels={}, deny_resources=[res("pods", "dev", "web")]),
        ], {})
        self.assertTable(checker, [
            ("GET", "/api/v1/namespaces/dev/secrets/s", False),
            ("GET", "/api/v1/secrets", False),
            ("GET", "/api/v1/namespaces/prod/pods/p", False),
            ("GET", "/api/v1/namespaces/prod/pods", False),
            ("GET", "/api/v1/namespaces/dev/pods/web", False),
            ("GET", "/api/v1/namespaces/dev/pods/api", True),
            ("GET", "/api/v1/namespaces/dev/pods", True),  # items filtered
            ("GET", "/api/v1/pods", True),
        ])
        info = classify("GET", "/api/v1/pods", {})
        self.assertFalse(checker.allows_item(info, "prod", "p", DEV_CLUSTER))
        self.assertFalse(checker.allows_item(info, "dev", "web", DEV_CLUSTER))
        self.assertTrue(checker.allows_item(info, "dev", "api", DEV_CLUSTER))

    def test_roles_for_other_clusters_grant_nothing(self) -> None:
        checker = AccessChecker("alice", [role(labels={"env": ("prod",)}), role(resources=[res("pods", "dev")])], {})
        self.assertFalse(allowed(checker, "GET", "/api/v1/namespaces/dev/secrets/s"))
        self.assertTrue(allowed(checker, "GET", "/api/v1/namespaces/dev/secrets/s", labels={"env": "prod"}))

    def test_resource_templates(self) -> None:
        checker = AccessChecker("alice", [role(resources=[res("pods", "{{external.team}}-*")])], {"team": ["red"]})
        self.assertTrue(allowed(checker, "GET", "/api/v1/namespaces/red-1/pods/p"))
        self.assertFalse(allowed(checker, "GET", "/api/v1/namespaces/blue-1/pods/p"))

    def test_invalid_pattern_fails_closed(self) -> None:
        checker = AccessChecker("alice", [role(), role("bad", labels={}, deny_resources=[res("pods", "^(x$")])], {})
        self.assertFalse(allowed(checker, "GET", "/api/v1/namespaces/dev/pods/p"))
        self.assertFalse(checker.allows_item(classify("GET", "/api/v1/pods", {}), "dev", "p", DEV_CLUSTER))

    def test_forbidden_message_and_status(self) -> None:
        checker = AccessChecker("alice", [role(resources=[res("pods", "dev")])], {})
        error = self.assertRaises(AccessDenied, checker.check_request,
                                  classify("GET", "/api/v1/namespaces/default/pods/x", {}), DEV_CLUSTER)
        self.assertTrue(error.message.startswith(
            'pods "x" is forbidden: User "alice" cannot get resource "pods" in API group "" '
            'in the namespace "default": '), error.message)
        body = json.loads(KubeStatus(403, error.message).body())
        self.assertEqual(body, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": error.message, "reason": "Forbidden", "code": 403})


# -- properties ---------------------------------------------------------------

V8_KINDS = ["pods", "secrets", "deployments", "namespaces", "nodes", "widgets", "*"]
PATTERNS = ["*", "dev", "prod", "d*", "^p.*$", "web", "w*", "^db-[0-9]$"]
verbs = st.one_of(st.just(("*",)), st.lists(st.sampled_from(KUBE_VERBS), min_size=1, max_size=3).map(tuple))
v8_rules = st.builds(res, st.sampled_from(V8_KINDS), st.sampled_from(PATTERNS + [""]),
                     st.sampled_from(PATTERNS), verbs, st.sampled_from(["", "apps", "example.com", "*"]))
v7_rules = st.builds(res, st.sampled_from(["pod", "secret", "deployment", "namespace", "kube_node", "*"]),
                     st.sampled_from(PATTERNS + [""]), st.sampled_from(PATTERNS), verbs)
label_selectors = st.sampled_from([EVERYWHERE, {"env": ("dev",)}, {"env": ("prod",)}, {}])


def roles_of(rules_strategy):
    return st.lists(st.builds(
        lambda labels, allow, deny: role(labels=labels, resources=allow, deny_resources=deny),
        label_selectors, st.lists(rules_strategy, max_size=3), st.lists(rules_strategy, max_size=2),
    ), max_size=3)


requests = st.builds(
    lambda method, base, namespace, resource, name, sub: (
        method, base + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}"
        + (f"/{name}" if name else "") + (f"/{sub}" if name and sub else "")),
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    st.sampled_from(["/api/v1", "/apis/apps/v1", "/apis/example.com/v1"]),
    st.sampled_from(["", "dev", "prod", "db"]),
    st.sampled_from(["pods", "secrets", "deployments", "namespaces", "nodes", "widgets"]),
    st.sampled_from(["", "web", "db-1", "dev", "prod"]),
    st.sampled_from(["", "exec", "portforward", "log"]),
)
items = st.tuples(st.sampled_from(["", "dev", "prod"]), st.sampled_from(["web", "db-1", "dev"]))


def decisions(checker, request, item):
    """Everything a checker decides about one request and one listed item."""
    info = classify(request[0], request[1], {})
    return allowed(checker, *request), checker.allows_item(info, *item, DEV_CLUSTER)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])  # CI shares its cores
    @given(roles_of(v8_rules), v8_rules, requests)
    def test_deny_always_wins(self, roles, rule, request) -> None:
        info = classify(*request, {})
        if info.resource == "namespaces" or info.verb in ("list", "watch", "deletecollection"):
            return  # reading namespaces and filtered lists have their own rules above
        granted = allowed(AccessChecker("alice", [role(resources=[rule])], {}), *request)
        denied = allowed(AccessChecker("alice", roles + [role("deny", labels={}, deny_resources=[rule]),
                                                         role(resources=[rule])], {}), *request)
        self.assertFalse(granted and denied)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])  # CI shares its cores
    @given(roles_of(v8_rules), roles_of(v8_rules), requests, items)
    def test_allow_never_removes_access(self, roles, extra, request, item) -> None:
        extra = [role(r.name, labels=r.allow.kubernetes_labels, resources=r.allow.kubernetes_resources)
                 for r in extra]
        before = decisions(AccessChecker("alice", roles, {}), request, item)
        after = decisions(AccessChecker("alice", roles + extra, {}), request, item)
        self.assertTrue(all(a or not b for a, b in zip(after, before)), (before, after))

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])  # CI shares its cores
    @given(roles_of(v8_rules), st.lists(v8_rules, min_size=1, max_size=3), requests, items)
    def test_deny_never_adds_access(self, roles, deny, request, item) -> None:
        before = decisions(AccessChecker("alice", roles, {}), request, item)
        after = decisions(AccessChecker("alice", roles + [role("deny", labels={}, deny_resources=deny)], {}),
                          request, item)
        self.assertTrue(all(b or not a for a, b in zip(after, before)), (before, after))

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])  # CI shares its cores
    @given(roles_of(v7_rules), requests, items)
    def test_v7_decides_like_its_v8_conversion(self, roles, request, item) -> None:
        v7 = [attrs.evolve(r, version="v7") for r in roles]
        self.assertEqual(decisions(AccessChecker("alice", v7, {}), request, item),
                         decisions(AccessChecker("alice", [as_v8(r) for r in v7], {}), request, item))
