"""Access requests in Auth: role fields, requesting, reviewing, thresholds,
self-review, expiry, elevated certificates, and their audit events.

In-memory backend and the real reactor; expiry moves a shifted clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from teleport_py import events
from teleport_py.auth.errors import AccessDenied, BadParameter, NotFound
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from teleport_py.pki import UserIdentity, identity_from_certificate, load_certificate_pem
from teleport_py.resources import ValidationError, parse_yaml, resource_from_dict, resource_to_dict
from teleport_py.resources.access_request import parse_resource_id
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
