"""Locks in Auth: created, listed, removed and audited; while in force they
refuse their target logins, reissues and access requests at once."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from teleport_py import events
from teleport_py.auth.errors import AccessDenied, BadParameter
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from teleport_py.pki import HostIdentity, UserIdentity
from teleport_py.resources import ValidationError, parse_yaml, resource_from_dict, resource_to_dict
from tests.support.auth_callers import ADMIN, PROXY, public_pem
from tests.support.clocks import ShiftedClock
from tests.test_access_requests import REQUESTER_ROLE, role_doc
from tests.support.seed import KUBE_ACCESS_ROLE

PASSWORD = "correct horse battery"
KUBE = HostIdentity(host_id="agent-1", nodename="n", system_role="kube", teleport_cluster="example")


class LockTests(TestCase):
    async def setUp(self):
        self.clock = ShiftedClock(reactor)
        self.backend = MemoryBackend(self.clock)
        self.addCleanup(self.backend.close)
        self.auth = await AuthServer.initialize(self.clock, self.backend, "example")
        for text in (KUBE_ACCESS_ROLE, REQUESTER_ROLE):
            await self.auth.resources.upsert(ADMIN, role_doc(text))
        created = await self.auth.users.create(ADMIN, parse_yaml(
            "kind: user\nversion: v2\nmetadata: {name: alice}\nspec: {roles: [requester]}\n")[0])
        await self.auth.users.complete_signup(PROXY, created["token"], PASSWORD)

    def alice(self):
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return UserIdentity(username="alice", roles=("requester",), teleport_cluster="example",
                            expires=(now + timedelta(hours=1)).replace(microsecond=0))

    async def events_of(self, event_type):
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        return await self.auth.audit.search(now - timedelta(days=1), now + timedelta(days=1), [event_type], 100)

    async def test_user_lock_refuses_login_reissue_and_requests(self):
        await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())
        doc = await self.auth.locks.create(ADMIN, user="alice", message="incident 7", ttl=60)
        with self.assertRaises(AccessDenied) as caught:
            await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())
        self.assertEqual(caught.exception.message, 'lock targeting user "alice" is in force: incident 7')
        with self.assertRaises(AccessDenied):
            await self.auth.user_certificates.reissue(self.alice(), public_pem(), "", None)
        with self.assertRaises(AccessDenied):
            await self.auth.access_requests.create(self.alice(), ["kube-access"], "")
        # Agents read the locks; the lock's ttl lifts it.
        [listed] = await self.auth.locks.list(KUBE)
        self.assertEqual(listed["spec"]["target"], {"user": "alice"})
        [created] = await self.events_of(events.LOCK_CREATED)
        self.assertEqual((created["name"], created["target_user"], created["code"]), (doc["metadata"]["name"], "alice", "TLK00I"))
        self.clock.offset = 61
        await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())

    async def test_role_lock_and_removal(self):
        doc = await self.auth.locks.create(ADMIN, role="requester")
        with self.assertRaises(AccessDenied) as caught:
            await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())
        self.assertEqual(caught.exception.message, 'lock targeting role "requester" is in force')
        names = [d["metadata"]["name"] for d in await self.auth.resources.list(ADMIN, "lock")]
        self.assertEqual(names, [doc["metadata"]["name"]])
        await self.auth.resources.delete(ADMIN, "lock", doc["metadata"]["name"])
        await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())
        [deleted] = await self.events_of(events.LOCK_DELETED)
        self.assertEqual(deleted["name"], doc["metadata"]["name"])

    async def test_lock_from_a_file(self):
        """``tctl create -f lock.yaml`` (Teleport's lock v2): in force at
        once, its metadata.expires lifts it, audited with the caller as author."""
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        [lock] = parse_yaml(
            "kind: lock\nversion: v2\nmetadata:\n  name: incident-8\n"
            f"  expires: {(now + timedelta(seconds=60)).strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
            "spec:\n  target: {user: alice}\n  message: from a file\n  created_by: someone-else\n")
        result = await self.auth.resources.upsert(ADMIN, resource_to_dict(lock))
        self.assertEqual((result["kind"], result["name"], result["created"]), ("lock", "incident-8", True))
        with self.assertRaises(AccessDenied) as caught:
            await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())
        self.assertEqual(caught.exception.message, 'lock targeting user "alice" is in force: from a file')
        [listed] = await self.auth.locks.list(KUBE)
        self.assertEqual((listed["metadata"]["name"], listed["spec"]["created_by"]), ("incident-8", "admin:admin-test"))
        [created] = await self.events_of(events.LOCK_CREATED)
        self.assertEqual((created["name"], created["target_user"], created["message"]),
                         ("incident-8", "alice", "from a file"))
        with self.assertRaises(AccessDenied):
            await self.auth.resources.upsert(self.alice(), resource_to_dict(lock))
        self.clock.offset = 61
        await self.auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())

    async def test_who_may_lock(self):
        with self.assertRaises(AccessDenied):
            await self.auth.locks.create(self.alice(), user="bob")
        with self.assertRaises(AccessDenied):
            await self.auth.locks.list(self.alice())
        with self.assertRaises(BadParameter):
            await self.auth.locks.create(ADMIN, user="a", role="b")
        with self.assertRaises(BadParameter):
            await self.auth.locks.create(ADMIN)
        with self.assertRaises(BadParameter):
            await self.auth.locks.create(ADMIN, user="bad name")

    def test_lock_resource_is_strict(self):
        good = {"kind": "lock", "version": "v2", "metadata": {"name": "x"}, "spec": {"target": {"role": "r"}}}
        self.assertEqual(resource_from_dict(resource_to_dict(resource_from_dict(good))).role, "r")
        for spec, path in (({"target": {}}, "spec.target"), ({"target": {"user": "a", "role": "b"}}, "spec.target"),
                           ({"target": {"login": "a"}}, "spec.target.login"), ({}, "spec.target")):
            with self.assertRaises(ValidationError) as caught:
                resource_from_dict({**good, "spec": spec})
            self.assertEqual(caught.exception.path, path)
