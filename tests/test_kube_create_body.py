"""What a create body says about its object, in JSON and in protobuf."""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.create_body import CreateBodyError, object_meta
from teleport_py.kube.protobuf_meta import ObjectMeta
from tests.support.kube_protobuf import KUBECTL_BODIES

PROTOBUF = b"application/vnd.kubernetes.protobuf"


class ObjectMetaTests(SynchronousTestCase):
    def test_json(self):
        body = json.dumps({"kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "dev"}}).encode()
        self.assertEqual(object_meta(b"application/json", body, "dev"), ObjectMeta(name="c1", namespace="dev"))
        self.assertEqual(object_meta(b"Application/JSON; charset=utf-8", b'{"metadata": {"generateName": "x-"}}', ""),
                         ObjectMeta(generate_name="x-"))
        # As Go fills a struct: null is the zero value, the last duplicate wins.
        self.assertEqual(object_meta(b"application/json", b'{"metadata": null}', ""), ObjectMeta())
        self.assertEqual(object_meta(b"application/json", b'{"metadata": {"name": null}}', ""), ObjectMeta())
        self.assertEqual(object_meta(b"application/json", b'{"metadata": {"name": "a", "name": "b"}}', "").name, "b")

    def test_protobuf_from_kubectl(self):
        for kind, (expected, body) in KUBECTL_BODIES.items():
            self.assertEqual(object_meta(PROTOBUF, body, expected.namespace), expected, kind)

    def test_refusals(self):
        cases = [
            (b"application/yaml", b"metadata: {name: x}", "", "JSON or protobuf body, not 'application/yaml'"),
            (b"", b"{}", "", "not 'none'"),
            (b"application/json", b"{", "", "malformed JSON"),
            (b"application/json", b"[]", "", "could not read"),
            (b"application/json", b'{"metadata": []}', "", "could not read"),
            (b"application/json", b'{"metadata": {"name": 5}}', "", "could not read"),
            (b"application/json", '{"metadata": {"name": "x"}}'.encode("utf-16"), "", "malformed JSON"),
            (b"application/json", b'{"metadata": {"name": "x", "namespace": "prod"}}', "dev", "does not match"),
            (PROTOBUF, b"k8s\x00\x12\x05ab", "", "protobuf body: runtime.Unknown"),
            (PROTOBUF, KUBECTL_BODIES["configmap"][1], "prod", "does not match"),
        ]
        for content_type, body, namespace, message in cases:
            with self.assertRaises(CreateBodyError, msg=(content_type, body)) as caught:
                object_meta(content_type, body, namespace)
            self.assertIn(message, caught.exception.message)
            self.assertTrue(caught.exception.reason)

    @settings(max_examples=300)
    @given(st.sampled_from([b"application/json", PROTOBUF, b"text/plain"]), st.binary(max_size=100),
           st.sampled_from(["", "dev"]))
    def test_arbitrary_bodies(self, content_type, body, namespace):
        try:
            self.assertIsInstance(object_meta(content_type, body, namespace), ObjectMeta)
        except CreateBodyError:
            pass
