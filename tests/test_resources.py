"""Tests for teleport_py.resources: strict parsing, round trips, traits, durations."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.resources import (
    BUILTIN_ROLES,
    KUBE_VERBS,
    KubernetesResource,
    KubeServer,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
    Template,
    Token,
    User,
    ValidationError,
    expand,
    format_duration,
    parse_duration,
    parse_template,
    parse_yaml,
    resource_from_dict,
    resource_to_dict,
    to_yaml,
)
from teleport_py.resources.role import CORE_RESOURCES, DEFAULT_MAX_SESSION_TTL, RULE_VERBS, V7_CLUSTER_WIDE_KINDS, V7_KINDS
from teleport_py.resources.token import TOKEN_ROLES
from tests.support.seed import DEV_NAMESPACE_ACCESS_ROLE as SEED_V8, KUBE_ACCESS_ROLE as SEED_V7



EVERYTHING_V7 = KubernetesResource(kind="*", namespace="*", name="*", verbs=("*",))
EVERYTHING_V8 = KubernetesResource(kind="*", namespace="*", name="*", verbs=("*",), api_group="*")


def role_doc(version="v7", allow=None, deny=None, options=None, **metadata):
    spec = {}
    for key, value in (("allow", allow), ("deny", deny), ("options", options)):
        if value is not None:
            spec[key] = value
    return {"kind": "role", "version": version, "metadata": {"name": "r", **metadata}, "spec": spec}


def kube_rule(**fields):
    entry = {"kind": "pod", "namespace": "default", "name": "*", "verbs": ["get"]}
    entry.update(fields)
    return {key: value for key, value in entry.items() if value is not None}


def resources_doc(version="v7", **fields):
    return role_doc(version, allow={"kubernetes_labels": {"*": "*"}, "kubernetes_resources": [kube_rule(**fields)]})


def user_doc(**spec):
    return {"kind": "user", "version": "v2", "metadata": {"name": "alice"}, "spec": spec}


def token_doc(metadata=None, **spec):
    spec.setdefault("roles", ["Kube"])
    meta = {"name": "abc123", "expires": "2030-01-01T00:00:00Z"}
    meta.update(metadata or {})
    return {"kind": "token", "version": "v2", "metadata": meta, "spec": spec}


def kube_server_doc():
    return {
        "kind": "kube_server",
        "version": "v3",
        "metadata": {"name": "prod", "expires": "2030-01-01T00:10:00Z"},
        "spec": {
            "host_id": "5f3c0b3e-0d2c-4d7a-9a56-1c1e0c2d9b11",
            "hostname": "agent-1",
            "version": "0.1.0",
            "cluster": {
                "kind": "kube_cluster",
                "version": "v3",
                "metadata": {"name": "prod", "labels": {"env": "prod"}},
                "spec": {},
            },
        },
    }


def edit(document, path, value):
    """A deep copy of ``document`` with ``path`` (a tuple of keys/indexes) set to ``value``."""
    document = copy.deepcopy(document)
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


KR = ("spec", "allow", "kubernetes_resources", 0)

# (description, document, expected path, fragment of the message)
BAD_DOCUMENTS = [
    ("unknown top-level field", {**role_doc(), "specs": {}}, "specs", "did you mean spec?"),
    ("unknown metadata field", edit(role_doc(), ("metadata", "nmae"), "x"), "metadata.nmae", "unknown field"),
    ("misspelt condition", role_doc(allow={"kubernetes_group": ["x"]}), "spec.allow.kubernetes_group", "did you mean kubernetes_groups?"),
    ("unknown spec field", edit(role_doc(), ("spec", "allw"), {}), "spec.allw", "did you mean allow?"),
    ("unsupported Teleport condition", role_doc(deny={"logins": ["root"]}), "spec.deny.logins", "unknown field"),
    ("legacy role version", role_doc(version="v6"), "version", "v6 is not supported"),
    ("future role version", role_doc(version="v9"), "version", "unsupported version 'v9'"),
    ("numeric version", role_doc(version=7), "version", "must be a string"),
    ("unknown kind", {**role_doc(), "kind": "rol"}, "kind", "unknown kind 'rol'"),
    ("missing kind", {key: value for key, value in role_doc().items() if key != "kind"}, "kind", "required"),
    ("missing name", edit(role_doc(), ("metadata",), {}), "metadata.name", "required"),
    ("slash in name", edit(role_doc(), ("metadata", "name"), "a/b"), "metadata.name", "invalid name"),
    ("empty name", edit(role_doc(), ("metadata", "name"), ""), "metadata.name", "must not be empty"),
    ("other namespace", edit(role_doc(), ("metadata", "namespace"), "prod"), "metadata.namespace", "default"),
    ("numeric label value", role_doc(labels={"tier": 1}), "metadata.labels.tier", "a number"),
    ("boolean selector value", role_doc(allow={"kubernetes_labels": {"env": True}}), "spec.allow.kubernetes_labels.env", "boolean"),
    ("bad selector regex", role_doc(allow={"kubernetes_labels": {"env": "^prod-($"}}), "spec.allow.kubernetes_labels.env", "regular expression"),
    ("bad regex in selector list", role_doc(allow={"kubernetes_labels": {"env": ["dev", "^(x$"]}}), "spec.allow.kubernetes_labels.env[1]", "regular expression"),
    ("wildcard key with a value", role_doc(allow={"kubernetes_labels": {"*": "prod"}}), "spec.allow.kubernetes_labels['*']", "only accepts the value '*'"),
    ("dotted selector key is quoted in the path", role_doc(allow={"kubernetes_labels": {"k8s.io/env": 3}}), "spec.allow.kubernetes_labels['k8s.io/env']", "a number"),
    ("selector not a mapping", role_doc(allow={"kubernetes_labels": ["env"]}), "spec.allow.kubernetes_labels", "must be a mapping"),
    ("plural kind in v7", resources_doc(kind="pods"), "spec.allow.kubernetes_resources[0].kind", "did you mean 'pod'?"),
    ("unknown kind in v7", resources_doc(kind="widget"), "spec.allow.kubernetes_resources[0].kind", "unknown kind 'widget'"),
    ("api_group in v7", resources_doc(api_group="apps", kind="deployment"), "spec.allow.kubernetes_resources[0].api_group", "v8"),
    ("v7 namespaced kind without namespace", resources_doc(namespace=None), "spec.allow.kubernetes_resources[0].namespace", "required for kind 'pod'"),
    ("v7 wildcard kind without namespace", resources_doc(kind="*", namespace=None), "spec.allow.kubernetes_resources[0].namespace", "required"),
    ("singular kind in v8", resources_doc("v8", kind="pod"), "spec.allow.kubernetes_resources[0].kind", "kind: pods"),
    ("singular kind with wildcard group in v8", resources_doc("v8", kind="deployment", api_group="*"), "spec.allow.kubernetes_resources[0].kind", "kind: deployments, api_group: apps"),
    ("non-core kind without api_group in v8", resources_doc("v8", kind="deployments"), "spec.allow.kubernetes_resources[0].api_group", "api_group: apps"),
    ("uppercase kind in v8", resources_doc("v8", kind="Pods"), "spec.allow.kubernetes_resources[0].kind", "lowercase plural"),
    ("bad api_group in v8", resources_doc("v8", kind="widgets", api_group="Example.com"), "spec.allow.kubernetes_resources[0].api_group", "invalid API group"),
    ("v8 namespaced kind without namespace", resources_doc("v8", kind="pods", namespace=None), "spec.allow.kubernetes_resources[0].namespace", "required for 'pods'"),
    ("unknown verb", resources_doc(verbs=["get", "gett"]), "spec.allow.kubernetes_resources[0].verbs[1]", "unknown verb 'gett' (valid: get, list,"),
    ("wildcard verb with others", resources_doc(verbs=["*", "get"]), "spec.allow.kubernetes_resources[0].verbs[0]", "'*' must be the only verb"),
    ("no verbs", resources_doc(verbs=None), "spec.allow.kubernetes_resources[0].verbs", "required"),
    ("verbs not a list", resources_doc(verbs="get"), "spec.allow.kubernetes_resources[0].verbs", "must be a list"),
    ("no name", resources_doc(name=None), "spec.allow.kubernetes_resources[0].name", "required"),
    ("no kind", resources_doc(kind=None), "spec.allow.kubernetes_resources[0].kind", "required"),
    ("bad namespace regex", resources_doc(namespace="^team-[$"), "spec.allow.kubernetes_resources[0].namespace", "regular expression"),
    ("bad name regex", resources_doc(name="^(a$"), "spec.allow.kubernetes_resources[0].name", "regular expression"),
    ("misspelt resource field", edit(resources_doc(), KR + ("verb",), ["get"]), "spec.allow.kubernetes_resources[0].verb", "did you mean verbs?"),
    ("resources not a list", role_doc(allow={"kubernetes_resources": {"kind": "pod"}}), "spec.allow.kubernetes_resources", "must be a list"),
    ("resource entry not a mapping", role_doc(allow={"kubernetes_resources": ["pod"]}), "spec.allow.kubernetes_resources[0]", "must be a mapping"),
    ("groups not a list", role_doc(allow={"kubernetes_groups": "viewers"}), "spec.allow.kubernetes_groups", "must be a list"),
    ("empty group", role_doc(allow={"kubernetes_groups": ["a", ""]}), "spec.allow.kubernetes_groups[1]", "must not be empty"),
    ("unclosed template", role_doc(allow={"kubernetes_groups": ["{{internal.groups"]}), "spec.allow.kubernetes_groups[0]", "malformed template"),
    ("unknown template namespace", role_doc(deny={"kubernetes_users": ["{{foo.bar}}"]}), "spec.deny.kubernetes_users[0]", "unknown trait namespace"),
    ("bad duration", role_doc(options={"max_session_ttl": "8 hours"}), "spec.options.max_session_ttl", "invalid duration"),
    ("numeric duration", role_doc(options={"max_session_ttl": 3600}), "spec.options.max_session_ttl", "duration string"),
    ("negative duration", role_doc(options={"max_session_ttl": "-1h"}), "spec.options.max_session_ttl", "negative"),
    ("unsupported option", role_doc(options={"forward_agent": True}), "spec.options.forward_agent", "unknown field"),
    ("bad idle timeout", role_doc(options={"client_idle_timeout": "15 minutes"}), "spec.options.client_idle_timeout", "invalid duration"),
    ("numeric idle timeout", role_doc(options={"client_idle_timeout": 900}), "spec.options.client_idle_timeout", "duration string"),
    ("disconnect flag not a flag", role_doc(options={"disconnect_expired_cert": "sometimes"}), "spec.options.disconnect_expired_cert", "true or false"),
    ("rule without verbs", role_doc(allow={"rules": [{"resources": ["role"]}]}), "spec.allow.rules[0].verbs", "required"),
    ("rule with unknown verb", role_doc(allow={"rules": [{"resources": ["role"], "verbs": ["reed"]}]}), "spec.allow.rules[0].verbs[0]", "unknown verb 'reed'"),
    ("rule with bad resource", role_doc(allow={"rules": [{"resources": ["Role!"], "verbs": ["read"]}]}), "spec.allow.rules[0].resources[0]", "invalid resource kind"),
    ("trait values not a list", user_doc(traits={"logins": "root"}), "spec.traits.logins", "must be a list"),
    ("bad role name on user", user_doc(roles=["ok", "no spaces"]), "spec.roles[1]", "invalid name"),
    ("user field from Teleport we do not store", user_doc(created_by={}), "spec.created_by", "unknown field"),
    ("user version", {**user_doc(), "version": "v1"}, "version", "supported: v2"),
    ("token without expiry", edit(token_doc(), ("metadata", "expires"), None), "metadata.expires", "must expire"),
    ("token with bad expiry", token_doc({"expires": "tomorrow"}), "metadata.expires", "RFC 3339"),
    ("token expiry without zone", token_doc({"expires": "2030-01-01T00:00:00"}), "metadata.expires", "RFC 3339"),
    ("token expiry out of range", token_doc({"expires": "2030-13-01T00:00:00Z"}), "metadata.expires", "RFC 3339"),
    ("token without roles", token_doc(roles=[]), "spec.roles", "at least one"),
    ("token with unknown role", token_doc(roles=["Kubb"]), "spec.roles[0]", "unknown system role 'Kubb'"),
    ("token join method", token_doc(join_method="iam"), "spec.join_method", "unsupported join method"),
    ("kube_server without host_id", edit(kube_server_doc(), ("spec", "host_id"), None), "spec.host_id", "required"),
    ("kube_server cluster kind", edit(kube_server_doc(), ("spec", "cluster", "kind"), "kube"), "spec.cluster.kind", "kube_cluster"),
    ("kube_server cluster spec", edit(kube_server_doc(), ("spec", "cluster", "spec"), {"kubeconfig": "x"}), "spec.cluster.spec.kubeconfig", "unknown field"),
    ("kube_server cluster label", edit(kube_server_doc(), ("spec", "cluster", "metadata", "labels", "env"), ["prod"]), "spec.cluster.metadata.labels.env", "must be a string"),
    ("kube_server version", {**kube_server_doc(), "version": "v2"}, "version", "supported: v3"),
    ("document is a list", [role_doc()], "resource", "must be a mapping"),
    ("non-string field name", {**role_doc(), 1: "x"}, "resource", "field names must be strings"),
]

GOOD_DOCUMENTS = [
    ("seed v7", yaml.safe_load(SEED_V7)),
    ("seed v8", yaml.safe_load(SEED_V8)),
    ("v7 cluster-wide kind needs no namespace", resources_doc(kind="namespace", namespace=None)),
    ("v7 kube_node", resources_doc(kind="kube_node", namespace=None, verbs=["list", "watch"])),
    ("v8 core resource", resources_doc("v8", kind="pods", verbs=["exec"])),
    ("v8 custom resource", resources_doc("v8", kind="widgets", api_group="example.com", namespace=None)),
    ("v8 wildcard group", resources_doc("v8", kind="deployments", api_group="*")),
    ("regex and glob patterns", resources_doc(namespace="^team-[a-z]+$", name="web-*")),
    ("templated patterns", role_doc(allow={"kubernetes_labels": {"env": ["{{external.env}}", "^dev-.*$"]}, "kubernetes_groups": ["team-{{internal.team}}"], "kubernetes_users": ['{{external["user name"]}}']})),
    ("null sections", role_doc(allow=None, deny=None)),
    ("option", role_doc(options={"max_session_ttl": "8h30m"})),
    ("session options", role_doc(options={"client_idle_timeout": "never", "disconnect_expired_cert": "yes"})),
    ("rules", role_doc(allow={"rules": [{"resources": ["*"], "verbs": ["*"]}]})),
    ("default namespace", edit(role_doc(), ("metadata", "namespace"), "default")),
    ("user", user_doc(roles=["access"], traits={"kubernetes_groups": ["dev"], "logins": []})),
    ("token", token_doc(roles=["kube", "Node"])),
    ("kube_server", kube_server_doc()),
]


class ValidationTableTests(SynchronousTestCase):
    def test_bad_documents(self):
        for description, document, path, fragment in BAD_DOCUMENTS:
            with self.subTest(description):
                error = self.assertRaises(ValidationError, resource_from_dict, document)
                self.assertEqual((error.path, str(error)), (path, f"{path}: {error.message}"))
                self.assertIn(fragment, error.message)

    def test_bad_documents_through_yaml(self):
        """The same refusals come out of parse_yaml, for documents YAML can express."""
        for description, document, path, fragment in BAD_DOCUMENTS:
            if description == "non-string field name":
                continue
            with self.subTest(description):
                error = self.assertRaises(ValidationError, parse_yaml, yaml.safe_dump(document))
                self.assertEqual(error.path, path)

    def test_good_documents(self):
        for description, document in GOOD_DOCUMENTS:
            with self.subTest(description):
                resource = resource_from_dict(document)
                self.assertEqual(resource_from_dict(resource_to_dict(resource)), resource)

    def test_error_is_a_value_error(self):
        self.assertIsInstance(ValidationError("a.b", "why"), ValueError)
        self.assertEqual(str(ValidationError("a.b", "why")), "a.b: why")


class RoleTests(SynchronousTestCase):
    def test_seed_v7(self):
        [role] = parse_yaml(SEED_V7)
        self.assertEqual(
            role,
            Role(
                name="kube-access",
                version="v7",
                allow=RoleConditions(
                    kubernetes_labels={"*": ("*",)},
                    kubernetes_groups=("viewers",),
                    kubernetes_resources=(EVERYTHING_V7,),
                ),
            ),
        )

    def test_seed_v8(self):
        [role] = parse_yaml(SEED_V8)
        self.assertEqual(role.version, "v8")
        self.assertEqual(role.allow.kubernetes_labels, {"env": ("development",)})
        self.assertEqual(role.allow.kubernetes_groups, ("dev-team",))
        self.assertEqual(
            role.allow.kubernetes_resources,
            (KubernetesResource(kind="*", api_group="*", namespace="development", name="*", verbs=("*",)),),
        )
        self.assertEqual(role.deny, RoleConditions())
        self.assertEqual(role.options, RoleOptions(max_session_ttl=DEFAULT_MAX_SESSION_TTL))

    def test_labels_without_resources_grant_everything(self):
        """Teleport's default: kubernetes_labels alone means every resource."""
        v7 = resource_from_dict(role_doc(allow={"kubernetes_labels": {"env": "dev"}}))
        v8 = resource_from_dict(role_doc("v8", allow={"kubernetes_labels": {"env": "dev"}}))
        self.assertEqual(v7.allow.kubernetes_resources, (EVERYTHING_V7,))
        self.assertEqual(v8.allow.kubernetes_resources, (EVERYTHING_V8,))

    def test_no_default_resources_without_labels_or_on_deny(self):
        role = resource_from_dict(role_doc(allow={"kubernetes_groups": ["g"]}, deny={"kubernetes_labels": {"env": "prod"}}))
        self.assertEqual(role.allow.kubernetes_resources, ())
        self.assertEqual(role.deny.kubernetes_resources, ())

    def test_explicit_resources_are_kept(self):
        role = resource_from_dict(resources_doc(kind="secret", verbs=["get", "list"]))
        self.assertEqual(
            role.allow.kubernetes_resources,
            (KubernetesResource(kind="secret", namespace="default", name="*", verbs=("get", "list")),),
        )

    def test_selector_values(self):
        role = resource_from_dict(role_doc(allow={"kubernetes_labels": {"env": ["dev", "^stage-[0-9]+$"], "team": "a"}}))
        self.assertEqual(role.allow.kubernetes_labels, {"env": ("dev", "^stage-[0-9]+$"), "team": ("a",)})

    def test_max_session_ttl(self):
        role = resource_from_dict(role_doc(options={"max_session_ttl": "1h30m"}))
        self.assertEqual(role.options.max_session_ttl, 5400.0)
        self.assertEqual(resource_to_dict(role)["spec"]["options"], {"max_session_ttl": "1h30m0s"})

    def test_client_idle_timeout_and_disconnect_expired_cert(self):
        role = resource_from_dict(role_doc(options={"client_idle_timeout": "15m", "disconnect_expired_cert": True}))
        self.assertEqual((role.options.client_idle_timeout, role.options.disconnect_expired_cert), (900.0, True))
        self.assertEqual(resource_to_dict(role)["spec"]["options"],
                         {"max_session_ttl": "30h0m0s", "client_idle_timeout": "15m0s", "disconnect_expired_cert": True})
        unset = resource_from_dict(role_doc(options={"client_idle_timeout": "never"}))
        self.assertEqual((unset.options.client_idle_timeout, unset.options.disconnect_expired_cert), (0.0, False))

    def test_zero_ttl_means_default(self):
        role = resource_from_dict(role_doc(options={"max_session_ttl": "0s"}))
        self.assertEqual(role.options.max_session_ttl, DEFAULT_MAX_SESSION_TTL)

    def test_metadata(self):
        role = resource_from_dict(role_doc(description="for devs", labels={"team": "dev"}))
        self.assertEqual((role.description, role.labels), ("for devs", {"team": "dev"}))

    def test_v7_kind_table_matches_teleport(self):
        self.assertEqual(
            sorted(V7_KINDS),
            sorted(
                "pod secret configmap namespace service serviceaccount kube_node persistentvolume "
                "persistentvolumeclaim deployment replicaset statefulset daemonset clusterrole kube_role "
                "clusterrolebinding rolebinding cronjob job certificatesigningrequest ingress".split()
            ),
        )
        self.assertLessEqual(V7_CLUSTER_WIDE_KINDS, set(V7_KINDS))

    def test_every_v7_kind_is_accepted_in_v7_and_refused_in_v8(self):
        for kind, (group, plural) in V7_KINDS.items():
            with self.subTest(kind):
                resource_from_dict(resources_doc(kind=kind))
                error = self.assertRaises(ValidationError, resource_from_dict, resources_doc("v8", kind=kind, api_group=group))
                self.assertIn(f"kind: {plural}", error.message)
                resource_from_dict(resources_doc("v8", kind=plural, api_group=group))

    def test_role_dict_shape(self):
        [role] = parse_yaml(SEED_V8)
        self.assertEqual(
            resource_to_dict(role),
            {
                "kind": "role",
                "version": "v8",
                "metadata": {"name": "dev-namespace-access"},
                "spec": {
                    "allow": {
                        "kubernetes_labels": {"env": "development"},
                        "kubernetes_groups": ["dev-team"],
                        "kubernetes_resources": [
                            {"kind": "*", "api_group": "*", "namespace": "development", "name": "*", "verbs": ["*"]}
                        ],
                    },
                    "deny": {},
                    "options": {"max_session_ttl": "30h0m0s"},
                },
            },
        )


class OtherKindsTests(SynchronousTestCase):
    def test_user(self):
        user = resource_from_dict(user_doc(roles=["access"], traits={"kubernetes_groups": ["dev", "ops"]}))
        self.assertEqual(user, User(name="alice", roles=("access",), traits={"kubernetes_groups": ("dev", "ops")}))

    def test_token_roles_are_canonical_and_expiry_is_utc(self):
        token = resource_from_dict(token_doc({"expires": "2030-01-01T02:00:00.123456789+02:00"}, roles=["kube"]))
        self.assertEqual(token.roles, ("Kube",))
        self.assertEqual(token.expires, datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc))
        self.assertEqual(token.expires.utcoffset(), timedelta(0))
        self.assertEqual(resource_to_dict(token)["metadata"]["expires"], "2030-01-01T00:00:00.123456Z")

    def test_token_accepts_aware_datetime(self):
        moment = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=1)))
        token = resource_from_dict(token_doc({"expires": moment}))
        self.assertEqual(token.expires, moment)

    def test_token_secret_is_not_in_repr_or_errors(self):
        secret = "s3cr3t-token-value"
        token = Token(name=secret, roles=("Kube",), expires=datetime(2030, 1, 1, tzinfo=timezone.utc))
        self.assertNotIn(secret, repr(token))
        error = self.assertRaises(ValidationError, resource_from_dict, token_doc({"name": secret + "/x"}))
        self.assertNotIn(secret, str(error))

    def test_kube_server(self):
        server = resource_from_dict(kube_server_doc())
        self.assertEqual(
            server,
            KubeServer(
                name="prod",
                host_id="5f3c0b3e-0d2c-4d7a-9a56-1c1e0c2d9b11",
                hostname="agent-1",
                cluster_name="prod",
                cluster_labels={"env": "prod"},
                version="0.1.0",
                expires=datetime(2030, 1, 1, 0, 10, tzinfo=timezone.utc),
            ),
        )
        self.assertEqual(resource_to_dict(server), kube_server_doc())

    def test_resource_to_dict_refuses_other_objects(self):
        self.assertRaises(TypeError, resource_to_dict, object())


class YAMLTests(SynchronousTestCase):
    def test_multiple_documents_and_empty_ones(self):
        resources = parse_yaml("---\n" + SEED_V7 + "---\n---\n" + SEED_V8 + "...\n")
        self.assertEqual([r.name for r in resources], ["kube-access", "dev-namespace-access"])

    def test_empty_text(self):
        self.assertEqual(parse_yaml(""), [])
        self.assertEqual(parse_yaml("# nothing\n---\n"), [])

    def test_broken_yaml_names_line_and_column(self):
        error = self.assertRaises(ValidationError, parse_yaml, "kind: role\nmetadata:\n  name: [x\n")
        self.assertEqual(error.path, "yaml")
        self.assertRegex(error.message, r"^line \d+, column \d+: ")

    def test_bad_indentation(self):
        error = self.assertRaises(ValidationError, parse_yaml, "kind: role\n version: v7\n")
        self.assertEqual(error.path, "yaml")
        self.assertIn("line 2", error.message)

    def test_duplicate_keys_are_refused(self):
        text = SEED_V7 + "  deny:\n    kubernetes_groups: [x]\n"
        error = self.assertRaises(ValidationError, parse_yaml, text)
        self.assertEqual(error.path, "yaml")
        self.assertIn("duplicate key 'deny'", error.message)

    def test_aliases_are_refused(self):
        text = "a: &x [1, 2]\nb: *x\n"
        error = self.assertRaises(ValidationError, parse_yaml, text)
        self.assertIn("aliases", error.message)

    def test_python_tags_are_refused(self):
        error = self.assertRaises(ValidationError, parse_yaml, "!!python/object/apply:os.system ['true']\n")
        self.assertEqual(error.path, "yaml")

    def test_deep_nesting(self):
        error = self.assertRaises(ValidationError, parse_yaml, "[" * 5000 + "]" * 5000)
        self.assertEqual(error.path, "yaml")

    def test_error_in_later_document_names_it(self):
        text = SEED_V7 + "---\n" + SEED_V8.replace("verbs: ['*']", "verbs: ['gett']")
        error = self.assertRaises(ValidationError, parse_yaml, text)
        self.assertEqual(error.path, "spec.allow.kubernetes_resources[0].verbs[0]")
        self.assertIn("(document 2, line 18)", error.message)

    def test_unquoted_yes_is_refused_clearly(self):
        text = SEED_V8.replace("env: development", "env: yes")
        error = self.assertRaises(ValidationError, parse_yaml, text)
        self.assertEqual(error.path, "spec.allow.kubernetes_labels.env")
        self.assertIn("quote it", error.message)

    def test_timestamps_stay_text_until_validated(self):
        text = yaml.safe_dump(token_doc()).replace("'2030-01-01T00:00:00Z'", "2030-01-01T00:00:00Z")
        self.assertIn("expires: 2030-01-01T00:00:00Z", text)
        [token] = parse_yaml(text)
        self.assertEqual(token.expires, datetime(2030, 1, 1, tzinfo=timezone.utc))

    def test_to_yaml_is_multi_document(self):
        text = to_yaml(BUILTIN_ROLES.values())
        self.assertEqual(text.count("---\n"), 2)
        self.assertEqual(parse_yaml(text), list(BUILTIN_ROLES.values()))


class BuiltinRoleTests(SynchronousTestCase):
    def test_access(self):
        access = BUILTIN_ROLES["access"]
        self.assertEqual(access.allow.kubernetes_labels, {"*": ("*",)})
        self.assertEqual(access.allow.kubernetes_groups, ("{{internal.kubernetes_groups}}",))
        self.assertEqual(access.allow.kubernetes_users, ("{{internal.kubernetes_users}}",))
        [everything] = access.allow.kubernetes_resources
        self.assertEqual((everything.kind, everything.namespace, everything.name, everything.verbs), ("*", "*", "*", ("*",)))
        self.assertEqual(access.deny, RoleConditions())

    def test_editor(self):
        editor = BUILTIN_ROLES["editor"]
        self.assertEqual(
            editor.allow.rules,
            (Rule(resources=("role", "user", "token", "kube_server", "proxy", "event", "session", "lock", "access_request"), verbs=("create", "read", "list", "update", "delete")),),
        )
        self.assertEqual(editor.allow.kubernetes_labels, {})
        self.assertEqual(editor.allow.kubernetes_resources, ())


class TraitTests(SynchronousTestCase):
    def test_parse_template(self):
        cases = {
            "{{internal.kubernetes_groups}}": Template("internal", "kubernetes_groups"),
            "{{ external.groups }}": Template("external", "groups"),
            'dev-{{external["team name"]}}-ro': Template("external", "team name", "dev-", "-ro"),
            "literal": None,
            "": None,
        }
        for text, expected in cases.items():
            with self.subTest(text):
                self.assertEqual(parse_template(text), expected)

    def test_malformed_templates(self):
        for text in ["{{internal.groups", "internal.groups}}", "{{}}", "{{internal}}", "{{other.x}}", "{{internal.a}}{{internal.b}}", "{{internal.a.b}}", "{{email.local(external.email)}}"]:
            with self.subTest(text):
                self.assertRaises(ValueError, parse_template, text)

    def test_expand(self):
        traits = {"kubernetes_groups": ["dev", "ops"], "team": ["a"], "empty": []}
        self.assertEqual(
            expand(["viewers", "{{internal.kubernetes_groups}}", "t-{{external.team}}", "{{internal.empty}}", "{{internal.missing}}"], traits),
            ["viewers", "dev", "ops", "t-a"],
        )

    def test_expand_refuses_malformed(self):
        self.assertRaises(ValueError, expand, ["{{internal.x"], {})


TRAIT_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
LITERALS = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=8)
TRAITS = st.dictionaries(TRAIT_NAMES, st.lists(st.text(min_size=1, max_size=8), max_size=4), max_size=4)


class TraitPropertyTests(SynchronousTestCase):
    @given(st.lists(LITERALS, max_size=5), TRAITS)
    def test_literals_pass_through(self, literals, traits):
        self.assertEqual(expand(literals, traits), list(dict.fromkeys(literals)))

    @given(LITERALS, st.sampled_from(["internal", "external"]), TRAIT_NAMES, LITERALS, TRAITS)
    def test_template_yields_each_trait_value_wrapped(self, prefix, namespace, name, suffix, traits):
        values = traits.get(name, [])
        self.assertEqual(
            expand([f"{prefix}{{{{{namespace}.{name}}}}}{suffix}"], traits),
            list(dict.fromkeys(f"{prefix}{value}{suffix}" for value in values)),
        )

    @given(TRAIT_NAMES, TRAITS)
    def test_missing_trait_expands_to_nothing(self, name, traits):
        traits.pop(name, None)
        self.assertEqual(expand([f"{{{{internal.{name}}}}}"], traits), [])

    @given(st.text(max_size=30))
    def test_parse_template_only_raises_value_error(self, text):
        try:
            parse_template(text)
        except ValueError:
            pass


class DurationTests(SynchronousTestCase):
    def test_parse(self):
        cases = {
            "0": 0.0,
            "30s": 30.0,
            "1h30m": 5400.0,
            "1.5h": 5400.0,
            ".5s": 0.5,
            "300ms": 0.3,
            "2us": 2e-6,
            "2\u00b5s": 2e-6,
            "7ns": 7e-9,
            "-1m": -60.0,
            "30h0m0s": 108000.0,
        }
        for text, seconds in cases.items():
            with self.subTest(text):
                self.assertEqual(parse_duration(text), seconds)

    def test_parse_refuses(self):
        for text in ["", "1", "h", "1d", "1 h", "1h 30m", "--1h", "1.h.5", "9" * 30 + "h", "+", "1H"]:
            with self.subTest(text):
                self.assertRaises(ValueError, parse_duration, text)

    def test_format(self):
        cases = {0: "0s", 108000: "30h0m0s", 90: "1m30s", 1.5: "1.5s", 0.3: "300ms", 2e-6: "2\u00b5s", 7e-9: "7ns", -60: "-1m0s", 3600.25: "1h0m0.25s"}
        for seconds, text in cases.items():
            with self.subTest(seconds):
                self.assertEqual(format_duration(seconds), text)

    @given(st.integers(min_value=-(10**15), max_value=10**15))
    def test_round_trip(self, nanoseconds):
        seconds = nanoseconds / 1_000_000_000
        self.assertEqual(parse_duration(format_duration(seconds)), seconds)


# -- round trips ------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,15}", fullmatch=True)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
LABELS = st.dictionaries(st.from_regex(r"[a-z0-9/._:-]{1,12}", fullmatch=True), TEXT, max_size=3)
PATTERNS = st.one_of(
    st.sampled_from(["*", "prod", "dev-*", "^prod-[0-9]+$", "{{internal.env}}", "team-{{external.team}}"]),
    st.from_regex(r"[a-z0-9*-]{1,10}", fullmatch=True),
)
KUBE_SUBJECTS = st.lists(
    st.one_of(st.sampled_from(["{{internal.kubernetes_groups}}", "system:masters", "viewers"]), NAMES), max_size=3
).map(tuple)
KUBE_VERB_LISTS = st.one_of(
    st.just(("*",)), st.lists(st.sampled_from(KUBE_VERBS), min_size=1, max_size=4, unique=True).map(tuple)
)
V8_KINDS = st.one_of(
    st.tuples(st.sampled_from(sorted(CORE_RESOURCES)), st.sampled_from(["", "*"])),
    st.tuples(st.sampled_from(["deployments", "jobs"]), st.sampled_from(["apps", "batch", "*"])),
    st.tuples(st.just("widgets"), st.just("example.com")),
    st.tuples(st.just("*"), st.sampled_from(["", "*", "apps"])),
)


@st.composite
def kube_resources(draw, version):
    if version == "v7":
        kind = draw(st.sampled_from(["*", *V7_KINDS]))
        api_group = ""
        namespace = draw(st.just("") | PATTERNS) if kind in V7_CLUSTER_WIDE_KINDS else draw(PATTERNS)
    else:
        kind, api_group = draw(V8_KINDS)
        namespace = draw(PATTERNS)
    return KubernetesResource(kind=kind, namespace=namespace, name=draw(PATTERNS), verbs=draw(KUBE_VERB_LISTS), api_group=api_group)


RULES = st.builds(
    Rule,
    resources=st.lists(st.sampled_from(["role", "user", "token", "kube_server", "*"]), min_size=1, max_size=3).map(tuple),
    verbs=st.lists(st.sampled_from([*RULE_VERBS, "*"]), min_size=1, max_size=3).map(tuple),
)


@st.composite
def conditions(draw, version, allow):
    labels = draw(st.dictionaries(st.from_regex(r"[a-z.]{1,8}", fullmatch=True), st.lists(PATTERNS, min_size=1, max_size=3).map(tuple), max_size=2))
    if draw(st.booleans()):
        labels["*"] = ("*",)
    minimum = 1 if allow and labels else 0
    return RoleConditions(
        kubernetes_labels=labels,
        kubernetes_groups=draw(KUBE_SUBJECTS),
        kubernetes_users=draw(KUBE_SUBJECTS),
        kubernetes_resources=tuple(draw(st.lists(kube_resources(version), min_size=minimum, max_size=3))),
        rules=tuple(draw(st.lists(RULES, max_size=2))),
    )


@st.composite
def roles(draw):
    version = draw(st.sampled_from(["v7", "v8"]))
    return Role(
        name=draw(NAMES),
        version=version,
        allow=draw(conditions(version, allow=True)),
        deny=draw(conditions(version, allow=False)),
        options=RoleOptions(max_session_ttl=draw(st.integers(1, 10**15)) / 1_000_000_000),
        description=draw(TEXT),
        labels=draw(LABELS),
    )


UTC_TIMES = st.datetimes(timezones=st.just(timezone.utc))
USERS = st.builds(
    User,
    name=NAMES,
    roles=st.lists(NAMES, max_size=3).map(tuple),
    traits=st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10), st.lists(TEXT, max_size=3).map(tuple), max_size=3),
    labels=LABELS,
)
TOKENS = st.builds(
    Token,
    name=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    roles=st.lists(st.sampled_from(TOKEN_ROLES), min_size=1, max_size=3).map(tuple),
    expires=UTC_TIMES,
    labels=LABELS,
)
KUBE_SERVERS = st.builds(
    KubeServer,
    name=NAMES,
    host_id=st.uuids().map(str),
    hostname=TEXT,
    cluster_name=NAMES,
    cluster_labels=LABELS,
    version=TEXT,
    expires=st.none() | UTC_TIMES,
)
RESOURCES = st.one_of(roles(), USERS, TOKENS, KUBE_SERVERS)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(RESOURCES)
    def test_dict_round_trip(self, resource):
        self.assertEqual(resource_from_dict(resource_to_dict(resource)), resource)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(RESOURCES, max_size=3))
    def test_yaml_round_trip(self, resources):
        self.assertEqual(parse_yaml(to_yaml(resources)), resources)


# -- fuzzing ------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), st.sampled_from(["*", "^($", "{{x", "v7", "pod", "get"]))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=10)


def near(strategy):
    """Mostly ``strategy``, sometimes junk: keeps fuzzed documents close to valid ones."""
    return st.one_of(strategy, strategy, JUNK)


def shaped(fields):
    return near(st.fixed_dictionaries({}, optional={name: near(value) for name, value in fields.items()}))


FUZZ_KUBE_RESOURCE = shaped(
    {
        "kind": st.sampled_from(["*", "pod", "pods", "deployments", "namespace", "widgets"]),
        "api_group": st.sampled_from(["", "*", "apps", "example.com"]),
        "namespace": st.sampled_from(["", "*", "default", "^a$", "^($"]),
        "name": st.sampled_from(["", "*", "web"]),
        "verbs": st.lists(st.sampled_from(["*", "get", "gett", ""]), max_size=3),
    }
)
FUZZ_CONDITIONS = shaped(
    {
        "kubernetes_labels": st.dictionaries(st.sampled_from(["*", "env", ""]), st.sampled_from(["*", "dev", "^($"]) | st.lists(st.text(max_size=4))),
        "kubernetes_groups": st.lists(st.sampled_from(["g", "{{internal.x}}", "{{bad"])),
        "kubernetes_resources": st.lists(FUZZ_KUBE_RESOURCE, max_size=2),
        "rules": st.lists(shaped({"resources": st.lists(st.text(max_size=5)), "verbs": st.lists(st.sampled_from(["read", "x"]))})),
    }
)
FUZZ_DOCUMENTS = st.fixed_dictionaries(
    {
        "kind": near(st.sampled_from(["role", "user", "token", "kube_server"])),
        "version": near(st.sampled_from(["v2", "v3", "v7", "v8"])),
        "metadata": shaped({"name": NAMES, "expires": st.sampled_from(["2030-01-01T00:00:00Z", "soon"]), "labels": JUNK}),
        "spec": shaped(
            {
                "allow": FUZZ_CONDITIONS,
                "deny": FUZZ_CONDITIONS,
                "options": shaped({"max_session_ttl": st.sampled_from(["1h", "0", "-1s", "1x"])}),
                "roles": st.lists(st.sampled_from(["Kube", "kube", "nope"])),
                "traits": JUNK,
                "host_id": NAMES,
                "cluster": JUNK,
            }
        ),
    }
)


class FuzzTests(SynchronousTestCase):
    def check(self, call, *args):
        try:
            call(*args)
        except ValidationError:
            pass

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(FUZZ_DOCUMENTS | JUNK)
    def test_resource_from_dict_only_raises_validation_error(self, document):
        self.check(resource_from_dict, document)

    @settings(max_examples=300)
    @given(st.text(max_size=200))
    def test_parse_yaml_only_raises_validation_error(self, text):
        self.check(parse_yaml, text)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(FUZZ_DOCUMENTS, max_size=3))
    def test_parse_yaml_of_fuzzed_documents(self, documents):
        self.check(parse_yaml, yaml.safe_dump_all(documents))
