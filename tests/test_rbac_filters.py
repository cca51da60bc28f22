"""Tests for list and watch response filtering (``teleport_py.rbac.filters``)."""
import gzip
import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.rbac import AccessChecker, classify
from teleport_py.rbac.filters import (
    INFLATE_STEP,
    FilterError,
    ListFilter,
    WatchFilter,
    filterable_accept,
    namespace_and_name,
    response_filter,
)
from teleport_py.resources.role import KubernetesResource, Role, RoleConditions

KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


def only_development(namespace: str, name: str) -> bool:
    return namespace == "development"


def pod(namespace: str, name: str) -> dict:
    """A pod as the API server returns it (abridged but with every usual section)."""
    return {
        "metadata": {
            "name": name,
            "generateName": name.rsplit("-", 1)[0] + "-",
            "namespace": namespace,
            "uid": f"5f1e0c9a-{namespace[:4]}-{name[-4:]}",
            "resourceVersion": "48213",
            "creationTimestamp": "2024-03-01T09:12:44Z",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                "uid": "0b1c2d3e", "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "nginx:1.25",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "nodeName": "node-1",
            "serviceAccountName": "default", "schedulerName": "default-scheduler",
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.11", "podIP": "10.244.1.7",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-03-01T09:12:50Z"}],
            "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0, "image": "nginx:1.25"}],
        },
    }


PODS = [("development", "web-1a2b"), ("kube-system", "coredns-9x8y"), ("development", "web-3c4d"),
        ("production", "web-5e6f")]


def pod_list(pods=PODS, **list_metadata) -> dict:
    return {
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "48290", **list_metadata},
        "items": [pod(namespace, name) for namespace, name in pods],
    }


def table_row(namespace: str, name: str) -> dict:
    return {
        "cells": [name, "1/1", "Running", 0, "3d"],
        "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "uid": "u-" + name,
                         "resourceVersion": "48213", "creationTimestamp": "2024-03-01T09:12:44Z"},
        },
    }


def pod_table(pods=PODS) -> dict:
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "48290"},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique.", "priority": 0},
            {"name": "Ready", "type": "string", "format": "", "description": "", "priority": 0},
            {"name": "Status", "type": "string", "format": "", "description": "", "priority": 0},
            {"name": "Restarts", "type": "integer", "format": "", "description": "", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0},
        ],
        "rows": [table_row(namespace, name) for namespace, name in pods],
    }


def node_list(names=("node-1", "node-2", "gpu-1")) -> dict:
    """Nodes: a cluster-scoped kind, items without a namespace."""
    return {
        "kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "777"},
        "items": [{"metadata": {"name": name, "uid": "n-" + name, "labels": {"kubernetes.io/hostname": name}},
                   "spec": {"podCIDR": "10.244.0.0/24"}, "status": {"capacity": {"cpu": "4"}}}
                  for name in names],
    }


def encode(obj) -> bytes:
    """Go's encoding/json: compact, as the API server writes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def run_list(body: bytes, allow=only_development, chunk_size=7, **kwargs) -> bytes:
    list_filter = ListFilter(allow, **kwargs)
    for start in range(0, len(body), chunk_size):
        if list_filter.feed(body[start:start + chunk_size]) != b"":
            raise AssertionError("a list filter emitted bytes before the end of the body")
    return list_filter.finish()


def event(event_type: str, obj: dict) -> bytes:
    return encode({"type": event_type, "object": obj}) + b"\n"


def table_event(event_type: str, namespace: str, name: str) -> bytes:
    return event(event_type, {**pod_table([(namespace, name)]), "columnDefinitions": []})


BOOKMARK = event("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "50001"}})
EXPIRED = event("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "too old resource version: 1 (48213)", "reason": "Expired", "code": 410})
WATCH_STREAM = b"".join([
    event("ADDED", pod("development", "web-1a2b")),
    event("ADDED", pod("kube-system", "coredns-9x8y")),
    BOOKMARK,
    event("MODIFIED", pod("production", "web-5e6f")),
    table_event("ADDED", "development", "web-3c4d"),
    table_event("MODIFIED", "kube-system", "coredns-9x8y"),
    event("DELETED", pod("development", "web-1a2b")),
    EXPIRED,
])
WATCH_ALLOWED = b"".join([
    event("ADDED", pod("development", "web-1a2b")),
    BOOKMARK,
    table_event("ADDED", "development", "web-3c4d"),
    event("DELETED", pod("development", "web-1a2b")),
    EXPIRED,
])


def run_watch(chunks, allow=only_development, **kwargs) -> bytes:
    watch_filter = WatchFilter(allow, **kwargs)
    output = b"".join(watch_filter.feed(chunk) for chunk in chunks)
    return output + watch_filter.finish()


def split_at(data: bytes, cuts) -> list:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


class NamespaceAndNameTests(SynchronousTestCase):
    def test_objects_and_table_rows(self) -> None:
        self.assertEqual(namespace_and_name(pod("dev", "web")), ("dev", "web"))
        self.assertEqual(namespace_and_name(node_list()["items"][0]), ("", "node-1"))
        self.assertEqual(namespace_and_name(table_row("dev", "web")), ("dev", "web"))

    def test_unattributable_items_are_errors(self) -> None:
        for item in [None, [], {}, {"metadata": []}, {"metadata": {"name": 3}},
                     {"metadata": {"name": "x", "namespace": None}},
                     {"cells": ["web"]},  # a Table row fetched with includeObject=None
                     {"cells": ["web"], "object": {"kind": "PartialObjectMetadata"}}]:
            self.assertRaises(FilterError, namespace_and_name, item)


class ListFilterTests(SynchronousTestCase):
    def test_pod_list_keeps_allowed_items_and_list_metadata(self) -> None:
        body = encode(pod_list(**{"continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"}))
        filtered = json.loads(run_list(body))
        expected = pod_list([("development", "web-1a2b"), ("development", "web-3c4d")],
                            **{"continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"})
        self.assertEqual(filtered, expected)

    def test_remaining_item_count_is_dropped(self) -> None:
        """It would tell the user how many hidden items exist."""
        filtered = json.loads(run_list(encode(pod_list(remainingItemCount=1500, **{"continue": "c"}))))
        self.assertEqual(filtered["metadata"], {"resourceVersion": "48290", "continue": "c"})

    def test_table_of_pods_keeps_allowed_rows(self) -> None:
        filtered = json.loads(run_list(encode(pod_table())))
        expected = pod_table([("development", "web-1a2b"), ("development", "web-3c4d")])
        self.assertEqual(filtered, expected)

    def test_table_with_full_objects(self) -> None:
        """``includeObject=Object`` puts whole pods in the rows."""
        table = pod_table()
        for row, (namespace, name) in zip(table["rows"], PODS):
            row["object"] = {"kind": "Pod", "apiVersion": "v1", **pod(namespace, name)}
        filtered = json.loads(run_list(encode(table)))
        self.assertEqual([row["object"]["metadata"]["name"] for row in filtered["rows"]], ["web-1a2b", "web-3c4d"])

    def test_cluster_scoped_list(self) -> None:
        filtered = json.loads(run_list(encode(node_list()), allow=lambda namespace, name: name.startswith("node-")))
        self.assertEqual(filtered, node_list(("node-1", "node-2")))

    def test_with_the_access_checker(self) -> None:
        """The agent's ``allow``: ``allows_item`` for a role granting pods in development."""
        role = Role(name="dev-pods", version="v8", allow=RoleConditions(
            kubernetes_labels={"*": ("*",)},
            kubernetes_resources=(KubernetesResource(kind="pods", api_group="", namespace="development",
                                                     name="*", verbs=("list", "watch")),)))
        checker = AccessChecker("alice", [role], {})
        info = classify("GET", "/api/v1/pods", {})
        checker.check_request(info, {})
        filtered = json.loads(run_list(encode(pod_table()),
                                       allow=lambda ns, name: checker.allows_item(info, ns, name, {})))
        self.assertEqual([row["cells"][0] for row in filtered["rows"]], ["web-1a2b", "web-3c4d"])

    def test_everything_allowed_returns_the_body_unchanged(self) -> None:
        body = json.dumps(pod_list(), indent=2).encode()
        self.assertEqual(run_list(body, allow=lambda namespace, name: True), body)

    def test_nothing_allowed_is_an_empty_list(self) -> None:
        filtered = json.loads(run_list(encode(pod_list()), allow=lambda namespace, name: False))
        self.assertEqual(filtered, {**pod_list(), "items": []})

    def test_null_and_missing_items(self) -> None:
        for listing in [{"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": None},
                        {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": []}]:
            body = encode(listing)
            self.assertEqual(run_list(body), body)

    def test_status_passes_untouched(self) -> None:
        body = (b'{\n  "kind": "Status",\n  "apiVersion": "v1",\n  "metadata": {},\n  "status": "Failure",\n'
                b'  "message": "pods is forbidden", "reason": "Forbidden",\n  "code": 403\n}')
        self.assertEqual(run_list(body), body)

    def test_gzip_in_gzip_out(self) -> None:
        body = gzip.compress(encode(pod_table()))
        output = run_list(body, gzipped=True, chunk_size=100)
        self.assertEqual(output[:2], b"\x1f\x8b")
        self.assertEqual(json.loads(gzip.decompress(output)),
                         pod_table([("development", "web-1a2b"), ("development", "web-3c4d")]))

    def test_memory_bound(self) -> None:
        body = encode(pod_list())
        self.assertEqual(json.loads(run_list(body, max_body=len(body)))["items"][0]["metadata"]["name"], "web-1a2b")
        self.assertRaises(FilterError, run_list, body, max_body=len(body) - 1)

    def test_memory_bound_counts_inflated_bytes(self) -> None:
        """A small gzip bomb is refused without inflating it all."""
        bomb = gzip.compress(b" " * 10_000_000)
        list_filter = ListFilter(only_development, gzipped=True, max_body=1_000_000)
        self.assertRaises(FilterError, list_filter.feed, bomb)

    def test_reserve_is_asked_before_the_buffer_grows(self) -> None:
        body = encode(pod_list())
        asked = []
        list_filter = ListFilter(only_development, reserve=asked.append)
        for i in range(0, len(body), 100):
            list_filter.feed(body[i:i + 100])
        self.assertEqual(sum(asked), len(body))
        self.assertEqual(json.loads(list_filter.finish())["items"][0]["metadata"]["name"], "web-1a2b")

    def test_a_gzip_body_is_reserved_in_bounded_steps(self) -> None:
        """A large inflated body is reserved a step at a time, and the refusal
        of a step stops inflating: at most one step is held beyond it."""
        items = [pod("development", f"web-{i}") for i in range(15_000)]
        document = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        body = encode(document)
        asked = []
        list_filter = ListFilter(only_development, gzipped=True, reserve=asked.append)
        list_filter.feed(gzip.compress(body))
        self.assertGreater(len(asked), 2)
        self.assertLessEqual(max(asked), INFLATE_STEP + 1)
        self.assertEqual(sum(asked), len(body))
        self.assertEqual(len(json.loads(gzip.decompress(list_filter.finish()))["items"]), 15_000)

        class Spent(Exception):
            pass

        def refuse_past_two_mib(size, held=[0]):
            if held[0] + size > 2 << 20:
                raise Spent()
            held[0] += size

        bomb = ListFilter(only_development, gzipped=True, reserve=refuse_past_two_mib)
        self.assertRaises(Spent, bomb.feed, gzip.compress(b" " * 50_000_000))
        self.assertLessEqual(len(bomb._body), 2 << 20)

    def test_malformed_bodies(self) -> None:
        for body in [b"", b"{", b"[]", b"null", b'"PodList"', b"\xff\xfe", b"[" * 100_000,
                     b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x"}}',
                     b'{"kind":"PodList","items":{}}', b'{"kind":"PodList","items":[1]}',
                     b'{"kind":"Table","apiVersion":"meta.k8s.io/v1","rows":[{"cells":[]}]}',
                     b'{"kind":"PodList","items":[{"metadata":{"namespace":"development","name":"x"},"n":1e999},'
                     b'{"metadata":{"namespace":"production","name":"y"}}]}']:
            self.assertRaises(FilterError, run_list, body)

    def test_malformed_gzip(self) -> None:
        whole = gzip.compress(encode(pod_list()))
        for body in [b"not gzip at all", whole[:-4], whole + b"trailing"]:
            self.assertRaises(FilterError, run_list, body, gzipped=True)

    @given(st.binary(max_size=300))
    def test_fuzz_only_filter_error(self, body: bytes) -> None:
        for gzipped in (False, True):
            try:
                run_list(body, gzipped=gzipped)
            except FilterError:
                pass

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                        lambda children: st.lists(children, max_size=3)
                        | st.dictionaries(st.sampled_from(["kind", "items", "rows", "metadata", "name",
                                                           "namespace", "cells", "object", "apiVersion"]),
                                          children, max_size=4)))
    def test_fuzz_json_shapes_only_filter_error(self, document) -> None:
        try:
            run_list(encode(document))
        except FilterError:
            pass


class WatchFilterTests(SynchronousTestCase):
    def test_filters_events(self) -> None:
        self.assertEqual(run_watch([WATCH_STREAM]), WATCH_ALLOWED)

    def test_allowed_event_is_emitted_at_once(self) -> None:
        watch_filter = WatchFilter(only_development)
        added = event("ADDED", pod("development", "web-1a2b"))
        self.assertEqual(watch_filter.feed(added[:-1]), b"")
        self.assertEqual(watch_filter.feed(added[-1:]), added)
        self.assertEqual(watch_filter.feed(event("ADDED", pod("production", "web-5e6f"))), b"")
        self.assertEqual(watch_filter.feed(table_event("MODIFIED", "development", "a")),
                         table_event("MODIFIED", "development", "a"))
        self.assertEqual(watch_filter.finish(), b"")

    @settings(max_examples=200)
    @given(st.lists(st.integers(min_value=0, max_value=len(WATCH_STREAM)), max_size=40))
    def test_any_chunking_gives_the_same_output(self, cuts) -> None:
        self.assertEqual(run_watch(split_at(WATCH_STREAM, cuts)), WATCH_ALLOWED)

    def test_split_at_every_byte(self) -> None:
        stream = event("ADDED", pod("development", "a")) + event("ADDED", pod("kube-system", "b"))
        expected = event("ADDED", pod("development", "a"))
        for cut in range(len(stream) + 1):
            self.assertEqual(run_watch([stream[:cut], stream[cut:]]), expected, cut)
        self.assertEqual(run_watch([bytes([byte]) for byte in stream]), expected)

    def test_table_event_with_several_rows(self) -> None:
        mixed = event("ADDED", pod_table())
        expected = pod_table([("development", "web-1a2b"), ("development", "web-3c4d")])
        self.assertEqual(json.loads(run_watch([mixed])), {"type": "ADDED", "object": expected})

    def test_cluster_scoped_watch(self) -> None:
        nodes = [event("ADDED", item) for item in node_list()["items"]]
        output = run_watch(nodes, allow=lambda namespace, name: namespace == "" and name == "gpu-1")
        self.assertEqual(output, nodes[2])

    def test_blank_lines_are_dropped(self) -> None:
        self.assertEqual(run_watch([b"\n", BOOKMARK, b"  \n"]), BOOKMARK)

    def test_truncated_event(self) -> None:
        watch_filter = WatchFilter(only_development)
        watch_filter.feed(BOOKMARK + BOOKMARK[:20])
        self.assertRaises(FilterError, watch_filter.finish)

    def test_malformed_events(self) -> None:
        for line in [b"{", b"[]", b"{}", b'{"type":"ADDED"}', b'{"type":"ADDED","object":[]}',
                     b'{"type":"EXPLODED","object":{}}', b'{"type":"ADDED","object":{"kind":"Pod"}}',
                     b"\xff", b'{"type":"ADDED","object":{"metadata":{"name":1}}}']:
            self.assertRaises(FilterError, run_watch, [line + b"\n"])

    def test_event_size_bound(self) -> None:
        watch_filter = WatchFilter(only_development, max_body=len(BOOKMARK))
        self.assertEqual(watch_filter.feed(BOOKMARK * 3), BOOKMARK * 3)
        self.assertRaises(FilterError, watch_filter.feed, b"{" * (len(BOOKMARK) + 1))

    def test_gzip_streams(self) -> None:
        compressed = gzip.compress(WATCH_STREAM)
        watch_filter = WatchFilter(only_development, gzipped=True)
        # Fed byte by byte, the first output is the first allowed event, readable at once.
        emitted, fed = b"", 0
        while not emitted:
            emitted = watch_filter.feed(compressed[fed:fed + 1])
            fed += 1
        self.assertEqual(zlib.decompressobj(31).decompress(emitted), event("ADDED", pod("development", "web-1a2b")))
        rest = watch_filter.feed(compressed[fed:]) + watch_filter.finish()
        self.assertEqual(gzip.decompress(emitted + rest), WATCH_ALLOWED)

    def test_gzip_bomb_is_bounded(self) -> None:
        watch_filter = WatchFilter(only_development, gzipped=True, max_body=100_000)
        self.assertRaises(FilterError, watch_filter.feed, gzip.compress(b"x" * 10_000_000))

    def test_gzip_truncated(self) -> None:
        watch_filter = WatchFilter(only_development, gzipped=True)
        watch_filter.feed(gzip.compress(BOOKMARK)[:-3])
        self.assertRaises(FilterError, watch_filter.finish)

    @given(st.lists(st.binary(max_size=60), max_size=6), st.booleans())
    def test_fuzz_only_filter_error(self, chunks, gzipped) -> None:
        try:
            run_watch(chunks, gzipped=gzipped)
        except FilterError:
            pass

    @given(st.lists(st.integers(min_value=0, max_value=len(WATCH_STREAM)), max_size=10),
           st.integers(min_value=0, max_value=len(WATCH_STREAM) - 1), st.integers(min_value=0, max_value=255))
    def test_fuzz_corrupted_stream_only_filter_error(self, cuts, position, byte) -> None:
        corrupted = bytearray(WATCH_STREAM)
        corrupted[position] = byte
        try:
            run_watch(split_at(bytes(corrupted), cuts))
        except FilterError:
            pass


class ResponseFilterTests(SynchronousTestCase):
    def test_json_lists_and_watches(self) -> None:
        for content_type in ["application/json", "application/json;as=Table;v=v1;g=meta.k8s.io",
                             "Application/JSON; charset=utf-8"]:
            self.assertIsInstance(response_filter(content_type, None, only_development), ListFilter)
            self.assertIsInstance(response_filter(content_type, "gzip", only_development, watch=True), WatchFilter)

    def test_gzip_is_carried_through(self) -> None:
        list_filter = response_filter("application/json", "gzip", only_development)
        list_filter.feed(gzip.compress(encode(pod_list())))
        self.assertEqual(len(json.loads(gzip.decompress(list_filter.finish()))["items"]), 2)

    def test_max_body(self) -> None:
        list_filter = response_filter("application/json", "identity", only_development, max_body=10)
        self.assertRaises(FilterError, list_filter.feed, b"x" * 11)

    def test_unfilterable_bodies(self) -> None:
        for content_type, encoding in [
            ("application/vnd.kubernetes.protobuf", None),
            ("application/vnd.kubernetes.protobuf;stream=watch", None),
            ("application/yaml", None),
            ("text/plain", None),
            ("", None),
            ("application/json", "br"),
            ("application/json", "gzip, gzip"),
        ]:
            self.assertIsNone(response_filter(content_type, encoding, only_development), (content_type, encoding))


class FilterableAcceptTests(SynchronousTestCase):
    def test_kubectl_table_request_is_kept(self) -> None:
        self.assertEqual(filterable_accept(KUBECTL_ACCEPT), KUBECTL_ACCEPT)

    def test_protobuf_and_yaml_are_removed(self) -> None:
        table = [
            ("application/vnd.kubernetes.protobuf, application/json", "application/json"),
            ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,"
             "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
             "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            ("application/vnd.kubernetes.protobuf", "application/json"),
            ("application/yaml", "application/json"),
            ("*/*", "application/json"),
            ("", "application/json"),
        ]
        for accept, expected in table:
            self.assertEqual(filterable_accept(accept), expected, accept)

    @given(st.text())
    def test_result_only_asks_for_json(self, accept: str) -> None:
        for media_range in filterable_accept(accept).split(","):
            self.assertEqual(media_range.split(";")[0].strip().lower(), "application/json")
