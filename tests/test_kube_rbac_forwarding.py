"""Fine-grained ``kubernetes_resources`` enforced on real HTTP traffic: the
agent's forwarder between a kubectl-like client and a TLS API server stand-in
on 127.0.0.1 (lists and watches filtered, creates named from their body,
deletecollection, CRD scope from discovery, denials)."""
from __future__ import annotations

import gzip
import json

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from teleport_py.kube.authorize import MAX_CREATE_BODY, Discovery, DiscoveryError
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.memory_budget import LIST_BYTE_COST, MemoryBudget
from teleport_py.rbac import RequestInfo
from teleport_py.resources.role import KubernetesResource, Role, RoleConditions
from tests.support.kube import AgentHarness, FakeRoles, credentials
from tests.support.kube_protobuf import delimited, envelope, object_meta
from tests.support.pki import user_cert_pem


def pod(namespace: str, name: str) -> dict:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"namespace": namespace, "name": name}}


PODS = [pod("development", "web-1"), pod("default", "db-1"), pod("development", "web-2"), pod("kube-system", "dns")]
POD_LIST = {"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "42", "remainingItemCount": 7}, "items": PODS}
POD_TABLE = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "42"},
             "columnDefinitions": [{"name": "Name", "type": "string"}],
             "rows": [{"cells": [p["metadata"]["name"]], "object": p} for p in PODS]}
RESOURCES = {"kind": "APIResourceList", "groupVersion": "example.com/v1", "resources": [
    {"name": "widgets", "namespaced": True, "kind": "Widget", "verbs": ["get", "list"]},
    {"name": "gadgets", "namespaced": False, "kind": "Gadget", "verbs": ["get", "list"]},
]}


def rule(kind="*", namespace="development", name="*", verbs=("*",), api_group="*") -> KubernetesResource:
    return KubernetesResource(kind=kind, api_group=api_group, namespace=namespace, name=name, verbs=tuple(verbs))


def role(name: str, *allow: KubernetesResource, deny: tuple[KubernetesResource, ...] = (),
         groups: tuple[str, ...] = ("dev-team",)) -> Role:
    """Like the seed's ``dev-namespace-access`` (v8), on clusters labelled ``env: dev``."""
    return Role(name=name, version="v8",
                allow=RoleConditions(kubernetes_labels={"env": ("dev",)}, kubernetes_groups=groups,
                                     kubernetes_resources=allow or (rule(),)),
                deny=RoleConditions(kubernetes_resources=deny))


class FakeAPIServer(resource.Resource):
    """Answers lists, watches (held open until the test writes), creates and
    discovery; records every request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.watching = defer.Deferred()
        self.list_body: bytes | None = None
        self.list_type = b"application/json"

    def render(self, request):
        headers = {k.lower(): b",".join(v) for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method, request.uri, headers, request.content.read()))
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/apis/example.com/v1":
            return json.dumps(RESOURCES).encode()
        if request.method == b"GET" and b"watch" in request.args:
            self.watching.callback(request)
            return server.NOT_DONE_YET
        if request.method == b"GET":
            request.setHeader(b"content-type", self.list_type)
            body = self.list_body
            if body is None:
                body = json.dumps(POD_TABLE if b"as=Table" in headers.get(b"accept", b"") else POD_LIST).encode()
            if b"gzip" in headers.get(b"accept-encoding", b""):
                request.setHeader(b"content-encoding", b"gzip")
                body = gzip.compress(body)
            return body
        return b'{"kind":"Status","status":"Success"}'

    def paths(self) -> list[bytes]:
        return [uri for _, uri, _, _ in self.requests]


def names(listing: dict) -> list[str]:
    if listing["kind"] == "Table":
        return [row["object"]["metadata"]["name"] for row in listing["rows"]]
    return [item["metadata"]["name"] for item in listing["items"]]


def header(response, name: bytes) -> list[bytes]:
    return [v for n, v in response.headers if n == name]


class RBACForwardingTests(AgentHarness, TestCase):
    def setUp(self):
        self.audit = []
        self.roles = FakeRoles(
            role("dev"),
            role("web-only", rule(kind="pods", api_group="", name="web-*")),
            role("dev-no-secrets", deny=(rule(kind="secrets", api_group="", namespace="*"),)),
            role("all-pods", rule(kind="pods", api_group="", namespace="*")),
            role("widgets", rule(kind="widgets", api_group="example.com")),
        )
        self.recorder = FakeAPIServer()

    async def ask(self, method: bytes, target: bytes, *headers, roles=("dev",), body=b""):
        await self.start()
        client = await self.connect(user_cert=user_cert_pem(roles=roles))
        client.transport.write(self.request(method, target, *headers, body=body))
        response, body = await self.response(client)
        return client, response, body

    def test_list_across_namespaces_shows_only_allowed_items(self):
        async def go():
            _, response, body = await self.ask(
                b"GET", b"/api/v1/pods?limit=500",
                (b"accept", b"application/vnd.kubernetes.protobuf,application/json"))
            self.assertEqual(response.status_code, 200)
            listing = json.loads(body)
            self.assertEqual(names(listing), ["web-1", "web-2"])
            self.assertEqual(listing["metadata"], {"resourceVersion": "42"})  # remainingItemCount counted hidden pods
            self.assertEqual(header(response, b"content-length"), [])
            self.assertEqual(header(response, b"transfer-encoding"), [b"chunked"])
            self.assertEqual(self.recorder.requests[0][2][b"accept"], b"application/json")
            (event,) = self.audit
            self.assertEqual((event["verb"], event["response_code"], event["resource_kind"]), ("list", 200, "pods"))
        return defer.Deferred.fromCoroutine(go())

    def test_table_list_keeps_server_side_columns_and_allowed_rows(self):
        async def go():
            accept = b"application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            _, response, body = await self.ask(b"GET", b"/api/v1/pods", (b"accept", accept))
            self.assertEqual(names(json.loads(body)), ["web-1", "web-2"])
            self.assertEqual(self.recorder.requests[0][2][b"accept"], accept)
        return defer.Deferred.fromCoroutine(go())

    def test_gzip_list_is_filtered_and_stays_gzip(self):
        async def go():
            _, response, body = await self.ask(b"GET", b"/api/v1/pods", (b"accept-encoding", b"gzip, br"))
            self.assertEqual(header(response, b"content-encoding"), [b"gzip"])
            self.assertEqual(names(json.loads(gzip.decompress(body))), ["web-1", "web-2"])
            self.assertEqual(self.recorder.requests[0][2][b"accept-encoding"], b"gzip")
        return defer.Deferred.fromCoroutine(go())

    def test_deny_rule_hides_items_of_an_otherwise_allowed_list(self):
        async def go():
            self.roles.by_name["pods-but-db"] = role("pods-but-db", rule(kind="pods", api_group="", namespace="*"),
                                                     deny=(rule(kind="pods", api_group="", namespace="*", name="db-*"),))
            _, _, body = await self.ask(b"GET", b"/api/v1/pods", roles=("pods-but-db",))
            self.assertEqual(names(json.loads(body)), ["web-1", "web-2", "dns"])
        return defer.Deferred.fromCoroutine(go())

    def test_list_a_rule_fully_covers_passes_untouched(self):
        async def go():
            accept = b"application/vnd.kubernetes.protobuf,application/json"
            _, response, body = await self.ask(b"GET", b"/api/v1/pods", (b"accept", accept), roles=("all-pods",))
            self.assertEqual(json.loads(body), POD_LIST)
            self.assertEqual(header(response, b"content-length"), [b"%d" % len(body)])
            self.assertEqual(self.recorder.requests[0][2][b"accept"], accept)
        return defer.Deferred.fromCoroutine(go())

    def test_malformed_list_is_a_500_and_never_forwarded(self):
        async def go():
            self.recorder.list_body = b'{"kind":"PodList","items":[{"metadata":{"name":"db-1","namespace":"default"}'
            client, response, body = await self.ask(b"GET", b"/api/v1/pods")
            self.assertEqual(response.status_code, 500)
            self.assertNotIn(b"db-1", body)
            status = json.loads(body)
            self.assertEqual(status["kind"], "Status")
            self.assertIn("could not filter", status["message"])
            self.assertEqual(self.audit[-1]["response_code"], 500)
            self.assertIn("filter failed", self.audit[-1]["reason"])
            # The connection still serves the next request.
            self.recorder.list_body = None
            client.received = b""
            client.transport.write(self.request(b"GET", b"/api/v1/pods"))
            _, body = await self.response(client)
            self.assertEqual(names(json.loads(body)), ["web-1", "web-2"])
        return defer.Deferred.fromCoroutine(go())

    async def ask_within(self, budget: MemoryBudget, roles=("dev",)):
        await self.start()
        self.acceptor.buffers = budget
        client = await self.connect(user_cert=user_cert_pem(roles=roles))
        client.transport.write(self.request(b"GET", b"/api/v1/pods"))
        response, body = await self.response(client)
        return client, response, body

    def test_a_list_past_the_memory_budget_is_a_429_to_retry_and_gives_the_budget_back(self):
        async def go():
            body_size = len(json.dumps(POD_LIST).encode())
            budget = MemoryBudget(body_size * LIST_BYTE_COST * 2)
            others = budget.claim()
            others.take(budget.limit - body_size * LIST_BYTE_COST + 1)  # other lists hold all but a byte too few
            client, response, body = await self.ask_within(budget)
            self.assertEqual(response.status_code, 429)
            self.assertEqual(header(response, b"retry-after"), [b"1"])
            status = json.loads(body)
            self.assertEqual((status["reason"], status["details"]), ("TooManyRequests", {"retryAfterSeconds": 1}))
            self.assertIn("too many large lists at once", status["message"])
            self.assertNotIn(b"db-1", body)
            self.assertEqual(self.audit[-1]["response_code"], 429)
            self.assertIn("memory budget", self.audit[-1]["reason"])
            self.assertEqual(budget.used, others.held)  # the refused list holds nothing
            others.release()
            client.received = b""
            client.transport.write(self.request(b"GET", b"/api/v1/pods"))
            response, body = await self.response(client)
            self.assertEqual(names(json.loads(body)), ["web-1", "web-2"])
            self.assertEqual(budget.used, 0)  # given back once the filtered list is sent
        return defer.Deferred.fromCoroutine(go())

    def test_a_list_larger_than_the_whole_budget_is_refused_as_too_large(self):
        async def go():
            budget = MemoryBudget(100)
            _, response, body = await self.ask_within(budget)
            self.assertEqual(response.status_code, 500)
            self.assertIn("too large for the teleport agent to filter", json.loads(body)["message"])
            self.assertEqual(budget.used, 0)
        return defer.Deferred.fromCoroutine(go())

    def test_a_malformed_list_gives_the_budget_back(self):
        async def go():
            self.recorder.list_body = b'{"kind":"PodList","items":[{"metadata":{"name":"db-1","namespace":"default"}'
            budget = MemoryBudget()
            _, response, _ = await self.ask_within(budget)
            self.assertEqual(response.status_code, 500)
            self.assertEqual(budget.used, 0)
        return defer.Deferred.fromCoroutine(go())

    def test_unfilterable_content_type_is_refused(self):
        async def go():
            self.recorder.list_body = b"k8s\x00protobuf bytes naming db-1"
            self.recorder.list_type = b"application/vnd.kubernetes.protobuf"
            _, response, body = await self.ask(b"GET", b"/api/v1/pods")
            self.assertEqual(response.status_code, 500)
            self.assertNotIn(b"db-1", body)
            self.assertIn("cannot filter", json.loads(body)["message"])
        return defer.Deferred.fromCoroutine(go())

    def test_watch_streams_only_allowed_events(self):
        async def go():
            await self.start()
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/pods?watch=1"))
            upstream = await self.recorder.watching
            for obj in (pod("default", "db-1"), pod("development", "web-1")):
                upstream.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            await client.until(b"web-1")  # streamed before the watch ends
            upstream.write(json.dumps({"type": "DELETED", "object": pod("kube-system", "dns")}).encode() + b"\n")
            upstream.write(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}\n')
            await client.until(b"BOOKMARK")
            upstream.finish()
            response, body = await self.response(client)
            events = [json.loads(line) for line in body.splitlines()]
            self.assertEqual([e["type"] for e in events], ["ADDED", "BOOKMARK"])
            self.assertEqual(events[0]["object"]["metadata"]["name"], "web-1")
            self.assertEqual(self.audit[0]["verb"], "watch")
        return defer.Deferred.fromCoroutine(go())

    def test_malformed_watch_event_closes_the_stream(self):
        async def go():
            await self.start()
            client = await self.connect()
            client.transport.write(self.request(b"GET", b"/api/v1/pods?watch=true"))
            upstream = await self.recorder.watching
            upstream.write(json.dumps({"type": "ADDED", "object": pod("development", "web-1")}).encode() + b"\n")
            await client.until(b"web-1")
            upstream.write(b'{"type":"ADDED","object":{"metadata":{"namespace":"default","name":"db-1"}\n')
            await client.lost
            self.assertNotIn(b"db-1", client.received)
        return defer.Deferred.fromCoroutine(go())

    def test_deletecollection_only_where_the_whole_collection_is_allowed(self):
        async def go():
            _, response, body = await self.ask(b"DELETE", b"/api/v1/namespaces/development/pods")
            self.assertEqual(response.status_code, 200)
            client = await self.connect()
            client.transport.write(self.request(b"DELETE", b"/api/v1/namespaces/default/pods"))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 403)
            self.assertIn("teleport roles do not allow every item", json.loads(body)["message"])
            client.received = b""
            # Part of development is not enough either.
            client = await self.connect(user_cert=user_cert_pem(roles=("web-only",)))
            client.transport.write(self.request(b"DELETE", b"/api/v1/namespaces/development/pods"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 403)
            self.assertEqual(self.recorder.paths(), [b"/api/v1/namespaces/development/pods"])
        return defer.Deferred.fromCoroutine(go())

    def test_create_is_authorized_on_the_name_in_its_body(self):
        def pod(meta: bytes) -> bytes:
            return envelope(delimited(1, meta), kind="Pod")

        async def go():
            json_type = (b"content-type", b"application/json")
            web = json.dumps({"kind": "Pod", "metadata": {"name": "web-3"}}).encode()
            _, response, _ = await self.ask(b"POST", b"/api/v1/namespaces/development/pods", json_type,
                                            roles=("web-only",), body=web)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(self.recorder.requests[0][3], web)
            self.assertEqual(self.audit[-1]["resource_name"], "web-3")
            # kubectl create sends protobuf (kube/protobuf_meta.py reads it)
            protobuf_type = (b"content-type", b"application/vnd.kubernetes.protobuf")
            _, response, _ = await self.ask(b"POST", b"/api/v1/namespaces/development/pods", protobuf_type,
                                            roles=("web-only",), body=pod(object_meta(name="web-4")))
            self.assertEqual(response.status_code, 200)
            self.assertEqual(self.audit[-1]["resource_name"], "web-4")
            refused = [
                (json_type, json.dumps({"kind": "Pod", "metadata": {"name": "db-3"}}).encode()),
                (json_type, json.dumps({"kind": "Pod", "metadata": {"generateName": "web-"}}).encode()),
                (json_type, b'{"kind":"Pod","metadata":{"name":"web-4"'),
                ((b"content-type", b"application/yaml"), b"metadata: {name: web-5}\n"),
                (protobuf_type, pod(object_meta(name="db-3"))),
                # a second runtime.Unknown.raw: the last one is the object, as in the API server
                (protobuf_type, pod(object_meta(name="web-3")) + delimited(2, delimited(1, object_meta(name="db-3")))),
                (protobuf_type, pod(object_meta(name="web-3"))[:-2]),  # truncated
            ]
            for content_type, body in refused:
                client = await self.connect(user_cert=user_cert_pem(roles=("web-only",)))
                client.transport.write(self.request(b"POST", b"/api/v1/namespaces/development/pods",
                                                    content_type, body=body))
                response, answer = await self.response(client)
                self.assertEqual(response.status_code, 403, body)
                self.assertEqual(json.loads(answer)["kind"], "Status")
            self.assertEqual(len(self.recorder.requests), 2)
        return defer.Deferred.fromCoroutine(go())

    def test_create_body_beyond_the_limit_is_413_and_connection_survives(self):
        async def go():
            body = b'{"metadata":{"name":"web-1"},"pad":"' + b"x" * MAX_CREATE_BODY + b'"}'
            client, response, answer = await self.ask(
                b"POST", b"/api/v1/namespaces/development/pods", (b"content-type", b"application/json"), body=body)
            self.assertEqual(response.status_code, 413)
            self.assertEqual(self.recorder.requests, [])
            client.received = b""
            client.transport.write(self.request(b"GET", b"/api/v1/namespaces/development/pods"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
        return defer.Deferred.fromCoroutine(go())

    def test_a_create_body_past_the_memory_budget_is_429_and_the_budget_comes_back(self):
        async def go():
            await self.start()
            budget = self.acceptor.buffers = MemoryBudget(4096)
            others = budget.claim()
            others.take(4000)
            body = json.dumps({"kind": "Pod", "metadata": {"name": "web-3"}, "pad": "x" * 200}).encode()
            client = await self.connect(user_cert=user_cert_pem(roles=("web-only",)))
            client.transport.write(self.request(b"POST", b"/api/v1/namespaces/development/pods",
                                                (b"content-type", b"application/json"), body=body))
            response, answer = await self.response(client)
            self.assertEqual(response.status_code, 429)
            self.assertEqual(header(response, b"retry-after"), [b"1"])
            self.assertIn("too many request bodies", json.loads(answer)["message"])
            self.assertIn("memory budget", self.audit[-1]["reason"])
            self.assertEqual(self.recorder.requests, [])
            self.assertEqual(budget.used, 4000)
            others.release()
            client.received = b""
            client.transport.write(self.request(b"POST", b"/api/v1/namespaces/development/pods",
                                                (b"content-type", b"application/json"), body=body))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(budget.used, 0)
        return defer.Deferred.fromCoroutine(go())

    def test_a_create_body_held_by_a_connection_that_goes_away_is_given_back(self):
        async def go():
            await self.start()
            budget = self.acceptor.buffers = MemoryBudget(1 << 20)
            client = await self.connect(user_cert=user_cert_pem(roles=("web-only",)))
            head = self.request(b"POST", b"/api/v1/namespaces/development/pods",
                                (b"content-type", b"application/json"), body=b"x" * 1000)
            client.transport.write(head[:-500])  # half the body: held, waiting for the rest
            while budget.used < 500:
                await deferLater(reactor, 0.01, lambda: None)
            client.transport.loseConnection()
            await client.lost
            while budget.used:
                await deferLater(reactor, 0.01, lambda: None)  # fails by the test's timeout if never given back
        return defer.Deferred.fromCoroutine(go())

    def test_custom_resources_use_discovery_for_their_scope(self):
        async def go():
            _, response, _ = await self.ask(b"GET", b"/apis/example.com/v1/namespaces/development/widgets",
                                            roles=("widgets",))
            self.assertEqual(response.status_code, 200)
            client = await self.connect(user_cert=user_cert_pem(roles=("dev",)))
            # Cluster-scoped per discovery: no namespace-scoped rule reaches it, so 403 (not an empty list).
            client.transport.write(self.request(b"GET", b"/apis/example.com/v1/gadgets"))
            response, body = await self.response(client)
            self.assertEqual(response.status_code, 403)
            self.assertIn('gadgets is forbidden', json.loads(body)["message"])
            self.assertEqual(self.recorder.paths().count(b"/apis/example.com/v1"), 1)  # cached per cluster
            discovery = [r for r in self.recorder.requests if r[1] == b"/apis/example.com/v1"][0]
            self.assertNotIn(b"impersonate-user", discovery[2])  # the agent's own credentials
            client = await self.connect(user_cert=user_cert_pem(roles=("widgets",)))
            client.transport.write(self.request(b"GET", b"/apis/other.example.com/v1/namespaces/development/things"))
            response, _ = await self.response(client)
            self.assertEqual(response.status_code, 403)
        return defer.Deferred.fromCoroutine(go())

    def test_denial_names_the_object_and_the_teleport_role(self):
        async def go():
            _, response, body = await self.ask(b"GET", b"/api/v1/namespaces/development/secrets/token",
                                               roles=("dev-no-secrets",))
            self.assertEqual(response.status_code, 403)
            status = json.loads(body)
            self.assertEqual(status["message"],
                             'secrets "token" is forbidden: User "alice" cannot get resource "secrets" in API group '
                             '"" in the namespace "development": denied by teleport role \'dev-no-secrets\'')
            self.assertEqual(status["details"], {"name": "token", "group": "", "kind": "secrets"})
            (event,) = self.audit
            self.assertFalse(event["success"])
            self.assertEqual((event["resource_kind"], event["resource_namespace"], event["resource_name"]),
                             ("secrets", "development", "token"))
            self.assertEqual(event["reason"], "deny kubernetes_resources of role 'dev-no-secrets' match")
            self.assertEqual(self.recorder.requests, [])
        return defer.Deferred.fromCoroutine(go())

    def test_early_denials_are_audited_with_the_resource(self):
        async def go():
            _, response, _ = await self.ask(b"GET", b"/api/v1/namespaces/default/secrets",
                                            (b"impersonate-uid", b"0"))
            self.assertEqual(response.status_code, 403)
            (event,) = self.audit
            self.assertEqual((event["resource_kind"], event["resource_namespace"], event["verb"]),
                             ("secrets", "default", "list"))
            self.assertIn("impersonate-uid", event["reason"])
        return defer.Deferred.fromCoroutine(go())


class DiscoveryTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.fetched = []
        self.answers = [{"widgets": True}]
        self.discovery = Discovery(self.clock, self.fetch, ttl=60, refresh_after=1)
        self.cluster = KubeCluster("c1", {}, credentials(1))

    async def fetch(self, reactor, creds, group, version):
        self.fetched.append((group, version))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def scoped(self, resource, group="example.com"):
        info = RequestInfo(verb="list", api_group=group, api_version="v1", resource=resource,
                           is_resource_request=True)
        return self.successResultOf(defer.Deferred.fromCoroutine(self.discovery.namespace_scoped(self.cluster, info)))

    def test_builtin_groups_are_not_asked(self):
        self.assertIsNone(self.scoped("pods", group=""))
        self.assertIsNone(self.scoped("deployments", group="apps"))
        self.assertEqual(self.fetched, [])

    def test_cached_for_the_ttl(self):
        self.assertTrue(self.scoped("widgets"))
        self.clock.advance(59)
        self.assertTrue(self.scoped("widgets"))
        self.assertEqual(len(self.fetched), 1)
        self.clock.advance(1)
        self.scoped("widgets")
        self.assertEqual(len(self.fetched), 2)

    def test_unknown_resource_refetches_at_most_every_refresh_interval(self):
        self.answers = [{"widgets": True}, {"widgets": True, "gadgets": False}]
        self.assertIsNone(self.scoped("gadgets"))
        self.assertIsNone(self.scoped("gadgets"))
        self.assertEqual(len(self.fetched), 1)
        self.clock.advance(1)
        self.assertIs(self.scoped("gadgets"), False)  # a CRD created meanwhile

    def test_failure_falls_back_to_the_checker(self):
        self.answers = [DiscoveryError("503"), {"widgets": False}]
        self.assertIsNone(self.scoped("widgets"))
        self.assertIs(self.scoped("widgets"), False)  # failures are not cached
