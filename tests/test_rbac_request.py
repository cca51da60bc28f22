"""Tests for Kubernetes request classification."""
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.rbac.request import RequestInfo, classify

NS = "/api/v1/namespaces/dev"


class ClassifyTests(SynchronousTestCase):
    def assertClassified(self, method, url_path, query, **expected) -> None:
        info = classify(method, url_path, query)
        for field, value in expected.items():
            self.assertEqual(getattr(info, field), value, (method, url_path, query, field))

    def test_resource_requests(self) -> None:
        table = [
            # method, path, query, verb, group, resource, subresource, namespace, name
            ("GET", f"{NS}/pods/web", {}, "get", "", "pods", "", "dev", "web"),
            ("HEAD", f"{NS}/pods/web", {}, "get", "", "pods", "", "dev", "web"),
            ("GET", f"{NS}/pods", {}, "list", "", "pods", "", "dev", ""),
            ("GET", "/api/v1/pods", {}, "list", "", "pods", "", "", ""),
            ("GET", "/api/v1/pods", {"watch": ["true"]}, "watch", "", "pods", "", "", ""),
            ("GET", "/api/v1/pods", {"watch": ["1"]}, "watch", "", "pods", "", "", ""),
            ("GET", "/api/v1/pods", {"watch": ["false"]}, "list", "", "pods", "", "", ""),
            ("GET", "/api/v1/pods", {"watch": ["0"]}, "list", "", "pods", "", "", ""),
            ("GET", "/api/v1/watch/namespaces/dev/pods", {}, "watch", "", "pods", "", "dev", ""),
            ("GET", f"{NS}/pods", {"watch": ["1"], "fieldSelector": ["metadata.name=web"]},
             "watch", "", "pods", "", "dev", "web"),
            ("POST", f"{NS}/pods", {}, "create", "", "pods", "", "dev", ""),
            ("PUT", f"{NS}/pods/web", {}, "update", "", "pods", "", "dev", "web"),
            ("PATCH", f"{NS}/pods/web", {}, "patch", "", "pods", "", "dev", "web"),
            ("DELETE", f"{NS}/pods/web", {}, "delete", "", "pods", "", "dev", "web"),
            ("DELETE", f"{NS}/pods", {}, "deletecollection", "", "pods", "", "dev", ""),
            ("POST", f"{NS}/pods/web/exec", {"command": ["sh"]}, "exec", "", "pods", "exec", "dev", "web"),
            ("GET", f"{NS}/pods/web/exec", {}, "exec", "", "pods", "exec", "dev", "web"),
            ("POST", f"{NS}/pods/web/attach", {}, "exec", "", "pods", "attach", "dev", "web"),
            ("POST", f"{NS}/pods/web/portforward", {}, "portforward", "", "pods", "portforward", "dev", "web"),
            ("GET", f"{NS}/pods/web/log", {}, "get", "", "pods", "log", "dev", "web"),
            ("GET", "/apis/apps/v1/namespaces/dev/deployments/api", {}, "get", "apps", "deployments", "", "dev", "api"),
            ("PATCH", "/apis/apps/v1/namespaces/dev/deployments/api/scale", {}, "patch", "apps", "deployments",
             "scale", "dev", "api"),
            ("GET", "/apis/stable.example.com/v1/namespaces/dev/crontabs", {}, "list", "stable.example.com",
             "crontabs", "", "dev", ""),
            ("GET", "/api/v1/nodes/n1", {}, "get", "", "nodes", "", "", "n1"),
            ("GET", "/api/v1/namespaces", {}, "list", "", "namespaces", "", "", ""),
            ("GET", "/api/v1/namespaces/dev", {}, "get", "", "namespaces", "", "dev", "dev"),
            ("PUT", "/api/v1/namespaces/dev/finalize", {}, "update", "", "namespaces", "finalize", "dev", "dev"),
            # decoded before splitting, as the API server sees it
            ("GET", "/api/v1/namespaces/a%2Fb/pods", {}, "get", "", "b", "", "a", "pods"),
        ]
        for method, path, query, verb, group, resource, sub, namespace, name in table:
            self.assertClassified(
                method, path, query, verb=verb, api_group=group, resource=resource, subresource=sub,
                namespace=namespace, name=name, is_resource_request=True,
            )

    def test_non_resource_requests(self) -> None:
        for path in ["/", "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/version",
                     "/openapi/v2", "/openapi/v3/apis/apps/v1", "/healthz", "/livez/ping"]:
            self.assertClassified("GET", path, {}, is_resource_request=False, verb="get", path=path)

    def test_dot_and_empty_segments_are_refused(self) -> None:
        """Such paths become resource requests with no resource: never "discovery"."""
        for path in ["/api/v1/namespaces/dev/../prod/pods", "/version/../api/v1/secrets",
                     "/api/v1/namespaces//pods", "/apis/apps/./v1/deployments", "/api/v1/%2e%2e/secrets"]:
            self.assertClassified("GET", path, {}, is_resource_request=True, resource="", verb="")

    def test_unknown_method_has_no_verb(self) -> None:
        self.assertClassified("OPTIONS", f"{NS}/pods/web", {}, verb="", resource="pods")

    @given(st.text(max_size=8), st.text(max_size=80),
           st.dictionaries(st.text(max_size=15), st.lists(st.text(max_size=15), max_size=2), max_size=3))
    def test_never_crashes(self, method, path, query) -> None:
        self.assertIsInstance(classify(method, path, query), RequestInfo)

    @given(st.lists(st.sampled_from(["api", "apis", "v1", "apps", "namespaces", "dev", "pods", "x",
                                     "exec", "watch", "..", "", "."]), max_size=8),
           st.sampled_from(["GET", "POST", "DELETE", "PUT"]))
    def test_resource_names_never_contain_slashes_or_dots(self, segments, method) -> None:
        info = classify(method, "/" + "/".join(segments), {})
        for field in (info.resource, info.namespace, info.name, info.subresource):
            self.assertNotIn(field, (".", ".."))
            self.assertNotIn("/", field)
