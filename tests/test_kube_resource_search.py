"""The agent's side of ``tsh request search`` (kube/resource_search.py):
the query read strictly, the API server's list asked as the user plus the
roles they may search as, each object listed only if those roles would let
it be requested; refusals as (code, message). The API server is a fake
here (``api_get`` replaced); tests.test_e2e_resource_requests runs it
against the real one."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from unittest import mock

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.kube import resource_search
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.resource_search import ResourceSearch, SearchQuery, SearchRefused, parse_query
from teleport_py.pki import UserIdentity
from teleport_py.resources import parse_yaml
from teleport_py.resources.lock import Lock

SEARCHER = parse_yaml("""\
kind: role
version: v7
metadata: {name: searcher}
spec:
  allow:
    request: {search_as_roles: [web-pods, missing-role]}
""")[0]
WEB_PODS = parse_yaml("""\
kind: role
version: v7
metadata: {name: web-pods}
spec:
  allow:
    kubernetes_labels: {env: dev}
    kubernetes_groups: [web-team]
    kubernetes_resources:
      - {kind: pod, namespace: default, name: 'web-*', verbs: [get]}
""")[0]
ROLES = {"searcher": SEARCHER, "web-pods": WEB_PODS}


class FakeRoles:
    async def roles(self, names):
        return [ROLES[n] for n in names if n in ROLES]


class FakeLocks:
    def __init__(self):
        self.lock = None

    def lock_for(self, identity):
        return self.lock


class Services:
    def __init__(self):
        self.reactor = Clock()
        self.roles = FakeRoles()
        self.locks = FakeLocks()
        self.teleport_cluster = "example"
        self.events = []
        self.emit = self.events.append


def pod_list(*pods):
    return json.dumps({"kind": "PodList", "items": [
        {"metadata": {"name": name, "namespace": ns, "labels": {"app": name.split("-")[0]}}} for ns, name in pods
    ]}).encode()


class ParseQueryTests(TestCase):
    def test_strict(self):
        self.assertEqual(parse_query({"kind": "pod", "namespace": "default"}), SearchQuery("pod", "default"))
        self.assertEqual(parse_query({"kind": "namespace", "namespace": "x"}), SearchQuery("namespace", ""))
        self.assertEqual(parse_query({"kind": "pod"}), SearchQuery("pod", ""))
        for bad in ({"kind": "secret"}, {}, {"kind": "pod", "namespace": "../x"}, {"kind": "pod", "namespace": 3},
                    {"kind": "pod", "namespace": "A"}, {"kind": "pod", "namespace": "a" * 64}):
            with self.assertRaises(SearchRefused, msg=bad) as caught:
                parse_query(bad)
            self.assertEqual(caught.exception.code, 400)


class ResourceSearchTests(TestCase):
    def setUp(self):
        self.services = Services()
        self.search = ResourceSearch(self.services)
        self.cluster = KubeCluster("c1", {"env": "dev"}, credentials=None)
        self.alice = UserIdentity(username="alice", roles=("searcher",), teleport_cluster="example",
                                  expires=datetime.now(timezone.utc) + timedelta(hours=1))
        self.calls = []

    def answer(self, code, body):
        async def fake(reactor, credentials, path, *, max_body, impersonate=None):
            self.calls.append((path, impersonate))
            return code, body
        return mock.patch.object(resource_search, "api_get", fake)

    async def test_lists_what_search_roles_would_grant(self):
        with self.answer(200, pod_list(("default", "web-0"), ("default", "db-0"), ("other", "web-1"))):
            found = await self.search.search(self.alice, self.cluster, SearchQuery("pod", ""))
        self.assertEqual(found, [{"kind": "pod", "name": "web-0", "namespace": "default", "labels": {"app": "web"},
                                  "id": "/example/pod/c1/default/web-0"}])
        # Asked as the search roles' principals (a user, the groups), never as the agent.
        [(path, (user, groups))] = self.calls
        self.assertEqual((path, user, groups), ("/api/v1/pods", "alice", ("system:authenticated", "web-team")))
        [event] = self.services.events
        self.assertEqual((event["event"], event["code"], event["search_as_roles"], event["found"]),
                         ("access_request.search", "T5004I", ["web-pods", "missing-role"], 1))

    async def test_namespace_path_and_kind(self):
        body = json.dumps({"items": [{"metadata": {"name": "default"}}, {"metadata": {"name": "kube-system"}}]})
        with self.answer(200, body.encode()):
            found = await self.search.search(self.alice, self.cluster, SearchQuery("namespace", ""))
        self.assertEqual([f["id"] for f in found], ["/example/namespace/c1/default"])
        self.assertEqual(self.calls[0][0], "/api/v1/namespaces")
        with self.answer(200, pod_list()):
            await self.search.search(self.alice, self.cluster, SearchQuery("pod", "default"))
        self.assertEqual(self.calls[1][0], "/api/v1/namespaces/default/pods")

    async def test_refusals(self):
        elsewhere = KubeCluster("c2", {"env": "prod"}, credentials=None)
        cases = [
            (elsewhere, 200, pod_list(), 403, 'access to kubernetes cluster "c2" denied'),
            (self.cluster, 403, b"{}", 403, "refused to list pods (HTTP 403)"),
            (self.cluster, 500, b"{}", 502, "refused to list pods (HTTP 500)"),
            (self.cluster, 200, b"not json", 502, "malformed"),
            (self.cluster, 200, b'{"items": [{"metadata": {}}]}', 502, "malformed"),
        ]
        for cluster, code, body, expected, message in cases:
            with self.answer(code, body):
                with self.assertRaises(SearchRefused) as caught:
                    await self.search.search(self.alice, cluster, SearchQuery("pod", ""))
            self.assertEqual(caught.exception.code, expected)
            self.assertIn(message, caught.exception.message)
        self.services.locks.lock = Lock(name="l", user="alice", message="stop")
        with self.answer(200, pod_list()):
            with self.assertRaises(SearchRefused) as caught:
                await self.search.search(self.alice, self.cluster, SearchQuery("pod", ""))
        self.assertEqual(caught.exception.message, 'lock targeting user "alice" is in force: stop')

    async def test_no_search_roles_reach_nothing(self):
        bob = UserIdentity(username="bob", roles=("nobody",), expires=self.alice.expires)
        with self.answer(200, pod_list(("default", "web-0"))):
            with self.assertRaises(SearchRefused):
                await self.search.search(bob, self.cluster, SearchQuery("pod", ""))
        self.assertEqual(self.calls, [])
