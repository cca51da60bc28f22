"""Access requests in Auth: role fields, requesting, reviewing, thresholds,
self-review, expiry, elevated certificates, and their audit events.

In-memory backend and the real reactor; expiry moves a shifted clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from teleport_py import events
from teleport_py.auth.errors import AccessDenied, BadParameter, NotFound
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from cryptography import x509

from teleport_py.pki import HostIdentity, UserIdentity, identity_from_certificate, load_certificate_pem
from teleport_py.resources import ValidationError, parse_yaml, resource_from_dict, resource_to_dict
from teleport_py.resource_ids import parse_resource_id
from tests.support.auth_callers import ADMIN, public_pem
from tests.support.clocks import ShiftedClock
from tests.support.seed import KUBE_ACCESS_ROLE

REQUESTER_ROLE = """\
kind: role
version: v7
metadata: {name: requester}
spec:
  allow:
    request:
      roles: [kube-access]
      max_duration: 1h
"""
REVIEWER_ROLE = """\
kind: role
version: v7
metadata: {name: reviewer}
spec:
  allow:
    review_requests:
      roles: ['kube-*']
"""


def role_doc(yaml_text: str) -> dict:
    return resource_to_dict(parse_yaml(yaml_text)[0])


class RoleFieldTests(TestCase):
    def test_request_fields_round_trip(self):
        role = parse_yaml(
            "kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  allow:\n    request:\n"
            "      roles: [dba, '^dev-.*$']\n      search_as_roles: [viewer]\n"
            "      thresholds: [{approve: 2, deny: 1}]\n      max_duration: 4h\n"
            "    review_requests: {roles: [dba]}\n"
            "  deny:\n    request: {roles: [root]}\n    review_requests: {roles: [root]}\n"
        )[0]
        self.assertEqual(role.allow.request.roles, ("dba", "^dev-.*$"))
        self.assertEqual(role.allow.request.search_as_roles, ("viewer",))
        self.assertEqual((role.allow.request.thresholds[0].approve, role.allow.request.thresholds[0].deny), (2, 1))
        self.assertEqual(role.allow.request.max_duration, 4 * 3600)
        self.assertEqual(role.allow.review_requests.roles, ("dba",))
        self.assertEqual(role.deny.request.roles, ("root",))
        self.assertEqual(role.deny.review_requests.roles, ("root",))
        self.assertEqual(resource_from_dict(resource_to_dict(role)), role)

    def test_threshold_defaults_to_one_approval(self):
        role = parse_yaml("kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  allow:\n"
                          "    request: {roles: [a], thresholds: [{name: x}]}\n")[0]
        self.assertEqual((role.allow.request.thresholds[0].approve, role.allow.request.thresholds[0].deny), (1, 1))

    def test_invalid_fields_are_named(self):
        cases = {
            "allow:\n    request: {rolez: [a]}": "spec.allow.request.rolez",
            "allow:\n    request: {roles: a}": "spec.allow.request.roles",
            "allow:\n    request: {roles: ['bad role']}": "spec.allow.request.roles[0]",
            "allow:\n    request: {roles: ['^(x$']}": "spec.allow.request.roles[0]",
            "allow:\n    request: {thresholds: [{approve: 0}]}": "spec.allow.request.thresholds[0].approve",
            "allow:\n    request: {thresholds: [{approve: yes}]}": "spec.allow.request.thresholds[0].approve",
            "allow:\n    request: {max_duration: 1}": "spec.allow.request.max_duration",
            "allow:\n    request: {max_duration: 400h}": "spec.allow.request.max_duration",
            "deny:\n    request: {max_duration: 1h}": "spec.deny.request.max_duration",
            "deny:\n    request: {thresholds: []}": "spec.deny.request.thresholds",
            "allow:\n    review_requests: {roles: [a], where: x}": "spec.allow.review_requests.where",
        }
        for body, path in cases.items():
            with self.assertRaises(ValidationError, msg=body) as caught:
                parse_yaml(f"kind: role\nversion: v7\nmetadata: {{name: r}}\nspec:\n  {body}\n")
            self.assertEqual(caught.exception.path, path, body)

    def test_resource_ids(self):
        rid = parse_resource_id("/example/pod/cluster-1/default/web-0")
        self.assertEqual((rid.cluster, rid.kind, rid.name, rid.namespace, rid.pod),
                         ("example", "pod", "cluster-1", "default", "web-0"))
        self.assertEqual(str(rid), "/example/pod/cluster-1/default/web-0")
        self.assertEqual(parse_resource_id("/example/kube_cluster/c").sub_resource, "")
        for bad in ("example/pod/c/ns/p", "/example/pod/c/ns", "/example/secret/c/ns/s", "/e/namespace/c/a/b", "/e/pod/c/ns/../x"):
            with self.assertRaises(ValueError, msg=bad):
                parse_resource_id(bad)


class ResourceIdFuzzTests(TestCase):
    @given(st.lists(st.sampled_from(["", "a", "pod", "namespace", "kube_cluster", "x.y", "..", "a b", "\x00", "ns-1"]),
                    max_size=7).map("/".join) | st.text(max_size=80))
    def test_any_text_parses_to_a_round_trip_or_value_error(self, text):
        try:
            rid = parse_resource_id(text)
        except ValueError:
            return
        self.assertEqual(str(rid), text)
        self.assertEqual(parse_resource_id(str(rid)), rid)


class AccessRequestTests(TestCase):
    async def setUp(self):
        self.clock = ShiftedClock(reactor)
        self.backend = MemoryBackend(self.clock)
        self.addCleanup(self.backend.close)
        self.auth = await AuthServer.initialize(self.clock, self.backend, "example")
        for text in (KUBE_ACCESS_ROLE, REQUESTER_ROLE, REVIEWER_ROLE):
            await self.auth.resources.upsert(ADMIN, role_doc(text))
        for name, roles in (("alice", ["requester"]), ("bob", ["reviewer"]), ("carol", ["reviewer"]),
                            ("mallory", ["requester", "reviewer"])):
            await self.auth.users.create(ADMIN, parse_yaml(
                f"kind: user\nversion: v2\nmetadata: {{name: {name}}}\nspec: {{roles: [{', '.join(roles)}]}}\n")[0])

    def identity(self, name, roles, hours=8, requests=()):
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return UserIdentity(username=name, roles=tuple(roles), teleport_cluster="example", access_requests=requests,
                            expires=(now + timedelta(hours=hours)).replace(microsecond=0))

    async def events_of(self, event_type):
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return await self.auth.audit.search(now - timedelta(days=1), now + timedelta(days=1), [event_type], 100)

    async def test_request_approve_and_elevated_certificate(self):
        alice = self.identity("alice", ["requester"])
        bob = self.identity("bob", ["reviewer"])
        created = await self.auth.access_requests.create(alice, ["kube-access"], "fix prod")
        request_id = created["metadata"]["name"]
        self.assertEqual(created["spec"]["state"], "PENDING")
        self.assertEqual(created["spec"]["request_reason"], "fix prod")
        # max_duration 1h caps the access, though alice's certificate runs 8h.
        expires = datetime.fromisoformat(created["spec"]["expires"].replace("Z", "+00:00"))
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        self.assertLessEqual(abs((expires - now).total_seconds() - 3600), 2)
        # Not approved yet: no elevated certificate.
        with self.assertRaises(AccessDenied):
            await self.auth.user_certificates.reissue(alice, public_pem(), "", None, (request_id,))
        reviewed = await self.auth.access_requests.review(bob, request_id, "APPROVED", "ok")
        self.assertEqual(reviewed["spec"]["state"], "APPROVED")
        self.assertEqual(reviewed["spec"]["reviews"][0]["author"], "bob")
        self.assertEqual(reviewed["spec"]["reviews"][0]["reason"], "ok")
        result = await self.auth.user_certificates.reissue(alice, public_pem(), "", None, (request_id,))
        ident = identity_from_certificate(load_certificate_pem(result["cert"].encode()),
                                          user_ca=self.auth.user_ca.certificate, host_ca=None)
        self.assertEqual(ident.roles, ("requester", "kube-access"))
        self.assertEqual(ident.access_requests, (request_id,))
        self.assertLessEqual(ident.expires, expires)
        # A certificate carrying the request keeps it when reissued (a kube
        # certificate from an elevated login), checked again.
        elevated = self.identity("alice", ident.roles, requests=(request_id,))
        kept = await self.auth.user_certificates.reissue(elevated, public_pem(), "", None)
        self.assertEqual((kept["roles"], kept["access_requests"]), (["requester", "kube-access"], [request_id]))
        # An empty list: the user's own roles only.
        plain = await self.auth.user_certificates.reissue(elevated, public_pem(), "", None, ())
        self.assertEqual(plain["roles"], ["requester"])
        self.assertEqual(plain["access_requests"], [])
        # Someone else cannot use alice's request.
        with self.assertRaises(AccessDenied):
            await self.auth.user_certificates.reissue(bob, public_pem(), "", None, (request_id,))
        [create_event] = await self.events_of(events.ACCESS_REQUEST_CREATE)
        self.assertEqual((create_event["id"], create_event["user"], create_event["code"]), (request_id, "alice", "T5000I"))
        [review_event] = await self.events_of(events.ACCESS_REQUEST_REVIEW)
        self.assertEqual((review_event["user"], review_event["state"]), ("bob", "APPROVED"))
        cert_events = [e for e in await self.events_of(events.CERT_CREATE) if e.get("access_requests")]
        self.assertEqual(cert_events[0]["access_requests"], [request_id])

    async def test_dropping_one_of_two_requests(self):
        """``tsh request drop ID``: a reissue from the elevated certificate
        with the other requests only; audited as cert.create."""
        alice = self.identity("alice", ["requester"])
        bob = self.identity("bob", ["reviewer"])
        ids = []
        for reason in ("one", "two"):
            request_id = (await self.auth.access_requests.create(alice, ["kube-access"], reason))["metadata"]["name"]
            await self.auth.access_requests.review(bob, request_id, "APPROVED", "ok")
            ids.append(request_id)
        both = (await self.auth.user_certificates.reissue(alice, public_pem(), "", None, tuple(ids)))["access_requests"]
        self.assertEqual(both, sorted(ids))
        elevated = self.identity("alice", ["requester", "kube-access"], requests=tuple(sorted(ids)))
        kept = await self.auth.user_certificates.reissue(elevated, public_pem(), "", None, (ids[1],))
        self.assertEqual((kept["roles"], kept["access_requests"]), (["requester", "kube-access"], [ids[1]]))
        dropped = await self.auth.user_certificates.reissue(elevated, public_pem(), "", None, ())
        self.assertEqual((dropped["roles"], dropped["access_requests"]), (["requester"], []))
        certs = [e for e in await self.events_of(events.CERT_CREATE) if e.get("user") == "alice"]
        self.assertEqual([e.get("access_requests") or [] for e in certs][-2:], [[ids[1]], []])

    async def test_requester_cannot_review_own_request(self):
        mallory = self.identity("mallory", ["requester", "reviewer"])
        request_id = (await self.auth.access_requests.create(mallory, ["kube-access"], ""))["metadata"]["name"]
        with self.assertRaises(AccessDenied) as caught:
            await self.auth.access_requests.review(mallory, request_id, "APPROVED", "")
        self.assertIn("own", caught.exception.message)
        self.assertEqual((await self.auth.access_requests.get(mallory, request_id))["spec"]["state"], "PENDING")

    async def test_who_may_request_and_review(self):
        alice = self.identity("alice", ["requester"])
        bob = self.identity("bob", ["reviewer"])
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.create(alice, ["editor"], "")
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.create(bob, ["kube-access"], "")
        with self.assertRaises(BadParameter):
            await self.auth.access_requests.create(alice, [], "")
        request_id = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        other = self.identity("alice", ["requester"])
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.review(other, request_id, "APPROVED", "")
        with self.assertRaises(BadParameter):
            await self.auth.access_requests.review(bob, request_id, "PENDING", "")
        # A user with nothing to do with it does not see it.
        stranger = self.identity("dave", ["access"])
        with self.assertRaises(NotFound):
            await self.auth.access_requests.get(stranger, request_id)
        self.assertEqual(await self.auth.access_requests.list(stranger), [])
        self.assertEqual(len(await self.auth.access_requests.list(bob)), 1)
        self.assertEqual(len(await self.auth.access_requests.list(ADMIN)), 1)

    async def test_deny_role_field_wins(self):
        await self.auth.resources.upsert(ADMIN, role_doc(
            "kind: role\nversion: v7\nmetadata: {name: no-review}\nspec:\n  deny:\n    review_requests: {roles: ['*']}\n"))
        alice = self.identity("alice", ["requester"])
        request_id = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.review(self.identity("bob", ["reviewer", "no-review"]), request_id, "APPROVED", "")

    async def test_denied_request_grants_nothing(self):
        alice = self.identity("alice", ["requester"])
        request_id = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        result = await self.auth.access_requests.review(self.identity("bob", ["reviewer"]), request_id, "DENIED", "no")
        self.assertEqual(result["spec"]["state"], "DENIED")
        with self.assertRaises(AccessDenied):
            await self.auth.user_certificates.reissue(alice, public_pem(), "", None, (request_id,))
        with self.assertRaises(BadParameter):
            await self.auth.access_requests.review(self.identity("carol", ["reviewer"]), request_id, "APPROVED", "")

    async def test_thresholds_need_two_approvals(self):
        await self.auth.resources.upsert(ADMIN, role_doc(
            "kind: role\nversion: v7\nmetadata: {name: requester}\nspec:\n  allow:\n"
            "    request: {roles: [kube-access], thresholds: [{approve: 2, deny: 1}]}\n"), force=True)
        alice = self.identity("alice", ["requester"])
        request_id = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        bob = self.identity("bob", ["reviewer"])
        self.assertEqual((await self.auth.access_requests.review(bob, request_id, "APPROVED", ""))["spec"]["state"], "PENDING")
        with self.assertRaises(BadParameter):
            await self.auth.access_requests.review(bob, request_id, "APPROVED", "")
        carol = self.identity("carol", ["reviewer"])
        self.assertEqual((await self.auth.access_requests.review(carol, request_id, "APPROVED", ""))["spec"]["state"], "APPROVED")

    async def test_tctl_resolve(self):
        alice = self.identity("alice", ["requester"])
        request_id = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.resolve(alice, request_id, "APPROVED", "")
        result = await self.auth.access_requests.resolve(ADMIN, request_id, "DENIED", "not today")
        self.assertEqual((result["spec"]["state"], result["spec"]["resolve_reason"]), ("DENIED", "not today"))
        [event] = await self.events_of(events.ACCESS_REQUEST_UPDATE)
        self.assertEqual(event["state"], "DENIED")

    async def test_expiry(self):
        alice = self.identity("alice", ["requester"])
        pending = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        approved = (await self.auth.access_requests.create(alice, ["kube-access"], ""))["metadata"]["name"]
        await self.auth.access_requests.resolve(ADMIN, approved, "APPROVED", "")
        self.assertEqual(await self.auth.access_requests.expire_due(), 0)
        self.clock.offset = 3601
        # Time alone makes them read EXPIRED, before anything is written.
        self.assertEqual((await self.auth.access_requests.get(alice, approved))["spec"]["state"], "EXPIRED")
        with self.assertRaises(AccessDenied):
            await self.auth.user_certificates.reissue(self.identity("alice", ["requester"]), public_pem(), "", None, (approved,))
        self.assertEqual(await self.auth.access_requests.expire_due(), 2)
        self.assertEqual(await self.auth.access_requests.expire_due(), 0)
        expired = await self.events_of(events.ACCESS_REQUEST_EXPIRE)
        self.assertEqual(sorted(e["id"] for e in expired), sorted([pending, approved]))
        with self.assertRaises(BadParameter):
            await self.auth.access_requests.review(self.identity("bob", ["reviewer"]), pending, "APPROVED", "")

    async def test_access_request_cannot_be_created_with_tctl_create(self):
        alice = self.identity("alice", ["requester"])
        doc = await self.auth.access_requests.create(alice, ["kube-access"], "")
        doc["metadata"]["name"] = "forged"
        doc["spec"]["state"] = "APPROVED"
        with self.assertRaises(BadParameter):
            await self.auth.resources.upsert(ADMIN, doc)


POD_SEARCH_ROLE = """\
kind: role
version: v7
metadata: {name: pod-search}
spec:
  allow:
    kubernetes_labels: {'*': '*'}
    kubernetes_groups: [viewers]
    kubernetes_resources:
      - {kind: pod, namespace: default, name: '*', verbs: [get, list, exec]}
  deny:
    kubernetes_resources:
      - {kind: pod, namespace: default, name: 'secret-*', verbs: ['*']}
"""
RESOURCE_REQUESTER_ROLE = """\
kind: role
version: v7
metadata: {name: resource-requester}
spec:
  allow:
    request:
      search_as_roles: [pod-search]
      max_duration: 30m
"""
NO_SEARCH_ROLE = """\
kind: role
version: v7
metadata: {name: no-search}
spec:
  deny:
    request:
      search_as_roles: [pod-search]
"""


class ResourceRequestTests(TestCase):
    """Resource access requests: only through search_as_roles, pruned to the
    roles that grant the resources, and the certificate restricted to them."""

    async def setUp(self):
        self.clock = ShiftedClock(reactor)
        self.backend = MemoryBackend(self.clock)
        self.addCleanup(self.backend.close)
        self.auth = await AuthServer.initialize(self.clock, self.backend, "example")
        for text in (KUBE_ACCESS_ROLE, POD_SEARCH_ROLE, RESOURCE_REQUESTER_ROLE, NO_SEARCH_ROLE, REVIEWER_ROLE,
                     REQUESTER_ROLE):
            await self.auth.resources.upsert(ADMIN, role_doc(text))
        # A reviewer of requests for pod-search.
        await self.auth.resources.upsert(ADMIN, role_doc(REVIEWER_ROLE.replace("reviewer", "pod-reviewer")
                                                         .replace("'kube-*'", "pod-search")))
        for name, roles in (("alice", ["resource-requester"]), ("bob", ["pod-reviewer"]),
                            ("eve", ["resource-requester", "no-search"]), ("dave", ["requester"])):
            await self.auth.users.create(ADMIN, parse_yaml(
                f"kind: user\nversion: v2\nmetadata: {{name: {name}}}\nspec: {{roles: [{', '.join(roles)}]}}\n")[0])
        kube = HostIdentity(host_id="agent-1", nodename="n", system_role="kube", teleport_cluster="example")
        for cluster in ("c1", "c2"):
            await self.auth.kube_servers.heartbeat(kube, {
                "kind": "kube_server", "version": "v3", "metadata": {"name": cluster},
                "spec": {"host_id": "agent-1", "hostname": "n", "version": "teleport_py",
                         "cluster": {"kind": "kube_cluster", "version": "v3",
                                     "metadata": {"name": cluster, "labels": {"env": "dev"}}, "spec": {}}},
            })

    def identity(self, name, roles, requests=(), allowed=()):
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return UserIdentity(username=name, roles=tuple(roles), teleport_cluster="example", access_requests=requests,
                            allowed_resources=allowed, expires=(now + timedelta(hours=8)).replace(microsecond=0))

    async def test_pod_request_approved_gives_a_restricted_certificate(self):
        alice = self.identity("alice", ["resource-requester"])
        pod = "/example/pod/c1/default/web-0"
        created = await self.auth.access_requests.create(alice, [], "debug web-0", [pod])
        request_id = created["metadata"]["name"]
        self.assertEqual(created["spec"]["roles"], ["pod-search"])
        self.assertEqual(created["spec"]["requested_resource_ids"],
                         [{"cluster": "example", "kind": "pod", "name": "c1", "sub_resource": "default/web-0"}])
        # max_duration of the role that allowed searching as pod-search.
        expires = datetime.fromisoformat(created["spec"]["expires"].replace("Z", "+00:00"))
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        self.assertLessEqual(abs((expires - now).total_seconds() - 1800), 2)
        await self.auth.access_requests.review(self.identity("bob", ["pod-reviewer"]), request_id, "APPROVED", "ok")
        result = await self.auth.user_certificates.reissue(alice, public_pem(), "", None, (request_id,))
        ident = identity_from_certificate(load_certificate_pem(result["cert"].encode()),
                                          user_ca=self.auth.user_ca.certificate, host_ca=None)
        self.assertEqual(ident.roles, ("resource-requester", "pod-search"))
        self.assertEqual(ident.access_requests, (request_id,))
        self.assertEqual(ident.allowed_resources, (parse_resource_id(pod),))
        self.assertEqual(result["allowed_resources"], [pod])
        # tsh kube ls with it: only the cluster the pod is in.
        elevated = self.identity("alice", ident.roles, (request_id,), ident.allowed_resources)
        self.assertEqual([c["name"] for c in await self.auth.kube_servers.list_for(elevated)], ["c1"])
        # A kube certificate for c1 keeps the restriction; none for c2.
        kube = await self.auth.user_certificates.reissue(elevated, public_pem(), "c1", None)
        self.assertEqual(kube["allowed_resources"], [pod])
        with self.assertRaises(NotFound):
            await self.auth.user_certificates.reissue(elevated, public_pem(), "c2", None)
        # Search as roles: both clusters are requestable.
        found = await self.auth.kube_servers.list_for(alice, search_as_roles=True)
        self.assertEqual([c["name"] for c in found], ["c1", "c2"])
        self.assertEqual(await self.auth.kube_servers.list_for(alice), [])
        [event] = await self.events_of(events.ACCESS_REQUEST_CREATE)
        self.assertEqual(event["resource_ids"], [pod])
        [cert_event] = [e for e in await self.events_of(events.CERT_CREATE) if e.get("kube_cluster") == "c1"]
        self.assertEqual(cert_event["allowed_resources"], [pod])

    async def events_of(self, event_type):
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return await self.auth.audit.search(now - timedelta(days=1), now + timedelta(days=1), [event_type], 100)

    async def test_only_resources_a_search_role_grants(self):
        alice = self.identity("alice", ["resource-requester"])
        refused = {
            "/example/pod/c1/kube-system/dns": AccessDenied,       # namespace not in pod-search
            "/example/pod/c1/default/secret-1": AccessDenied,      # pod-search denies it
            "/example/pod/nowhere/default/web-0": AccessDenied,    # no such cluster: same answer
            "/other/pod/c1/default/web-0": BadParameter,           # another Teleport cluster
            "/example/secret/c1/default/s": BadParameter,          # not a requestable kind
            "example/pod/c1/default/web-0": BadParameter,
        }
        for resource, error in refused.items():
            with self.assertRaises(error, msg=resource):
                await self.auth.access_requests.create(alice, [], "", [resource])
        # Requestable kinds: a namespace pod-search reaches, a whole cluster.
        for resource in ("/example/namespace/c1/default", "/example/kube_cluster/c2"):
            created = await self.auth.access_requests.create(alice, [], "", [resource])
            self.assertEqual(created["spec"]["roles"], ["pod-search"], resource)
        # deny.request.search_as_roles wins; a user without search_as_roles cannot ask for resources.
        for user, roles in (("eve", ["resource-requester", "no-search"]), ("dave", ["requester"])):
            with self.assertRaises(AccessDenied, msg=user):
                await self.auth.access_requests.create(self.identity(user, roles), [], "", ["/example/pod/c1/default/web-0"])

    async def test_role_reviewers_cannot_review_resource_requests_for_other_roles(self):
        alice = self.identity("alice", ["resource-requester"])
        request_id = (await self.auth.access_requests.create(
            alice, [], "", ["/example/pod/c1/default/web-0"]))["metadata"]["name"]
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.review(self.identity("carol", ["reviewer"]), request_id, "APPROVED", "")


class RestrictedCheckerTests(TestCase):
    """The agent's checker for a certificate with allowed resources: exactly
    the named pod (with the verbs the roles grant it), nothing else."""

    def setUp(self):
        from teleport_py.rbac import AccessChecker
        role = parse_yaml(POD_SEARCH_ROLE)[0]
        self.labels = {"env": "dev"}
        self.make = lambda ids, tc="example": AccessChecker(
            "alice", [role], {}, allowed_resources=[parse_resource_id(i) for i in ids], teleport_cluster=tc)

    def info(self, method, path):
        from teleport_py.rbac import classify
        return classify(method, path, {})

    def allowed(self, checker, method, path, cluster="c1"):
        from teleport_py.rbac import AccessDenied as RBACDenied
        try:
            checker.check_request(self.info(method, path), self.labels, cluster_name=cluster)
        except RBACDenied:
            return False
        return True

    def test_one_pod(self):
        checker = self.make(["/example/pod/c1/default/web-0"])
        checker.check_cluster("c1", self.labels)
        for method, path in (("GET", "/api/v1/namespaces/default/pods/web-0"),
                             ("GET", "/api/v1/namespaces/default/pods/web-0/log"),
                             ("POST", "/api/v1/namespaces/default/pods/web-0/exec"),
                             ("GET", "/api/v1/namespaces/default/pods"),
                             ("GET", "/api/v1/pods"),
                             ("GET", "/api/v1/namespaces/default")):
            self.assertTrue(self.allowed(checker, method, path), (method, path))
        for method, path in (("GET", "/api/v1/namespaces/default/pods/web-1"),
                             ("DELETE", "/api/v1/namespaces/default/pods/web-0"),      # pod-search has no delete
                             ("POST", "/api/v1/namespaces/default/pods/web-1/exec"),
                             ("GET", "/api/v1/namespaces/kube-system/pods"),
                             ("GET", "/api/v1/namespaces/default/secrets"),
                             ("GET", "/api/v1/namespaces/default/configmaps/web-0"),
                             ("DELETE", "/api/v1/namespaces/default/pods")):
            self.assertFalse(self.allowed(checker, method, path), (method, path))
        # Another kube cluster, or the ids of another Teleport cluster: nothing.
        self.assertFalse(self.allowed(checker, "GET", "/api/v1/namespaces/default/pods/web-0", cluster="c2"))
        self.assertFalse(self.allowed(self.make(["/example/pod/c1/default/web-0"], tc="other"),
                                      "GET", "/api/v1/namespaces/default/pods/web-0"))
        from teleport_py.rbac import AccessDenied as RBACDenied
        with self.assertRaises(RBACDenied):
            checker.check_cluster("c2", self.labels)
        # Listing pods shows only web-0 (Teleport filters the list).
        listing = self.info("GET", "/api/v1/namespaces/default/pods")
        self.assertTrue(checker.needs_filtering(listing, self.labels, cluster_name="c1"))
        keep = checker.item_filter(listing, self.labels, cluster_name="c1")
        self.assertEqual([n for n in ("web-0", "web-1", "secret-1") if keep("default", n)], ["web-0"])

    def test_denied_pod_stays_denied(self):
        checker = self.make(["/example/pod/c1/default/secret-1"])
        self.assertFalse(self.allowed(checker, "GET", "/api/v1/namespaces/default/pods/secret-1"))

    def test_namespace_and_cluster_ids(self):
        namespace = self.make(["/example/namespace/c1/default"])
        self.assertTrue(self.allowed(namespace, "GET", "/api/v1/namespaces/default/pods/web-1"))
        self.assertFalse(self.allowed(namespace, "GET", "/api/v1/namespaces/default/pods/secret-1"))
        self.assertFalse(self.allowed(namespace, "GET", "/api/v1/namespaces/other/pods/web-1"))
        whole = self.make(["/example/kube_cluster/c1"])
        self.assertTrue(self.allowed(whole, "GET", "/api/v1/namespaces/default/pods/web-1"))
        self.assertFalse(self.allowed(whole, "GET", "/api/v1/namespaces/default/pods/web-1", cluster="c2"))

    def test_no_cluster_name_allows_nothing(self):
        checker = self.make(["/example/kube_cluster/c1"])
        self.assertFalse(self.allowed(checker, "GET", "/api/v1/namespaces/default/pods/web-1", cluster=""))


class AllowedResourcesCertificateTests(TestCase):
    """The certificate field: round trip, and fail closed on what cannot be read."""

    def test_round_trip_and_malformed_ids_refuse_the_certificate(self):
        from unittest import mock

        from teleport_py.pki import CertAuthority, IdentityError, generate_private_key
        from teleport_py.pki import ca as ca_module
        from teleport_py.pki.identity import ALLOWED_RESOURCES_OID, user_subject

        now = datetime.now(timezone.utc)
        ca = CertAuthority.generate("user", "example", now)
        ident = UserIdentity(username="alice", roles=("a",), teleport_cluster="example",
                             allowed_resources=("/example/pod/c1/default/web-0", "/example/kube_cluster/c2"),
                             expires=(now + timedelta(hours=1)).replace(microsecond=0))
        cert = ca.issue_user_certificate(generate_private_key().public_key(), ident, now)
        back = identity_from_certificate(cert, user_ca=ca.certificate, host_ca=None)
        self.assertEqual(back, ident)
        self.assertEqual([str(r) for r in back.allowed_resources],
                         ["/example/pod/c1/default/web-0", "/example/kube_cluster/c2"])
        # A resource id the reader cannot parse, in a certificate our CA
        # signed: the whole certificate is refused, never read as "no restriction".
        for bad in ("/example/pod/c1/default", "/example/secret/c1/ns/x", "*", "/example/pod/c1/default/web-*"):
            def subject(identity, bad=bad):
                name = user_subject(identity)
                return x509.Name(list(name.rdns) + [x509.RelativeDistinguishedName(
                    [x509.NameAttribute(ALLOWED_RESOURCES_OID, bad)])])
            with mock.patch.object(ca_module, "user_subject", subject):
                forged = ca.issue_user_certificate(generate_private_key().public_key(),
                                                   UserIdentity(username="alice", roles=("a",), expires=ident.expires), now)
            with self.assertRaises(IdentityError, msg=bad):
                identity_from_certificate(forged, user_ca=ca.certificate, host_ca=None)


_names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)


class RestrictedCheckerPropertyTests(TestCase):
    """Whatever pod is named and whatever request is made: a certificate
    restricted to one pod reaches that pod (as far as the roles allow it)
    and nothing else by name."""

    @settings(deadline=None, max_examples=60)  # timing on a shared 2-core machine is not the property
    @given(namespace=_names, pod=_names, other_namespace=_names, other_pod=_names,
           subresource=st.sampled_from(["", "log", "exec", "status"]),
           method=st.sampled_from(["GET", "POST", "DELETE", "PATCH"]))
    def test_only_the_named_pod(self, namespace, pod, other_namespace, other_pod, subresource, method):
        from teleport_py.rbac import AccessChecker, classify
        from teleport_py.rbac import AccessDenied as RBACDenied

        role = parse_yaml(POD_SEARCH_ROLE.replace("namespace: default, name: '*', verbs: [get, list, exec]",
                                                  "namespace: '*', name: '*', verbs: ['*']"))[0]
        restricted = AccessChecker("alice", [role], {}, teleport_cluster="example",
                                   allowed_resources=[f"/example/pod/c1/{namespace}/{pod}"])
        unrestricted = AccessChecker("alice", [role], {})

        def allowed(checker, ns, name, **kw):
            path = f"/api/v1/namespaces/{ns}/pods/{name}" + (f"/{subresource}" if subresource else "")
            try:
                checker.check_request(classify(method, path, {}), {"env": "dev"}, **kw)
            except RBACDenied:
                return False
            return True

        self.assertEqual(allowed(restricted, namespace, pod, cluster_name="c1"), allowed(unrestricted, namespace, pod))
        self.assertFalse(allowed(restricted, namespace, pod, cluster_name="c2"))
        if (other_namespace, other_pod) != (namespace, pod):
            self.assertFalse(allowed(restricted, other_namespace, other_pod, cluster_name="c1"))
        keep = restricted.item_filter(classify("GET", "/api/v1/pods", {}), {"env": "dev"}, cluster_name="c1")
        self.assertEqual(keep(other_namespace, other_pod), (other_namespace, other_pod) == (namespace, pod))


class AllowedResourcesRoundTripTests(TestCase):
    @settings(deadline=None, max_examples=40)  # each example signs a certificate
    @given(st.lists(st.tuples(st.sampled_from(["pod", "namespace", "kube_cluster"]), _names, _names, _names),
                    max_size=4))
    def test_certificate_round_trip(self, parts):
        from teleport_py.pki import CertAuthority, generate_private_key

        ids = []
        for kind, cluster, namespace, pod in parts:
            sub = {"pod": f"{namespace}/{pod}", "namespace": namespace, "kube_cluster": ""}[kind]
            ids.append(f"/example/{kind}/{cluster}" + (f"/{sub}" if sub else ""))
        now = datetime.now(timezone.utc)
        ident = UserIdentity(username="alice", roles=("a",), teleport_cluster="example", allowed_resources=ids,
                             expires=(now + timedelta(hours=1)).replace(microsecond=0))
        cert = _CA.issue_user_certificate(_KEY.public_key(), ident, now)
        back = identity_from_certificate(cert, user_ca=_CA.certificate, host_ca=None)
        self.assertEqual(back, ident)
        self.assertEqual([str(r) for r in back.allowed_resources], list(dict.fromkeys(ids)))


def _user_ca():
    from teleport_py.pki import CertAuthority

    return CertAuthority.generate("user", "example", datetime.now(timezone.utc))


_CA = _user_ca()
_KEY = __import__("teleport_py.pki", fromlist=["generate_private_key"]).generate_private_key()
