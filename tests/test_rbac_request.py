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
        # Methods are case-sensitive: the API server gives "get" no verb (found by the differential test).
        self.assertClassified("get", f"{NS}/pods", {}, verb="", resource="pods")
        self.assertClassified("get", "/version", {}, verb="get", is_resource_request=False)

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


class ListQueryTests(SynchronousTestCase):
    """The query of a list or watch, read as the API server's RequestInfo
    reads it (cases found by tests.test_e2e_apiserver_parity)."""

    def classified(self, **query) -> tuple[str, str]:
        info = classify("GET", f"{NS}/secrets", {k: [v] for k, v in query.items()})
        return info.verb, info.name

    def test_field_selector_names_the_object(self) -> None:
        table = {
            "metadata.name=s1": "s1",
            "metadata.name==s1": "s1",
            "metadata.name!=s1": "",
            " metadata.name=s1": "",  # the field is kept as written
            "metadata.name=s1,metadata.namespace=dev": "s1",
            "metadata.namespace=dev,metadata.name=s1": "s1",
            "metadata.name=b,metadata.name=a": "a",  # terms are sorted
            "metadata.name!=a,metadata.name=b": "b",
            "metadata.name=s1==x": "",  # an unescaped = in the value: no selector at all
            "metadata.name=a\\,b": "a,b",
            "metadata.name=a\\x": "",  # an unknown escape
            "metadata.name=a\\": "",
            "metadata.name=s1,junk": "",  # a term without an operator
            "metadata.name=s1,": "s1",
            "metadata.name=..": "",
            "metadata.name=a%2Fb": "",
            "metadata.name=..,metadata.name==s1": "",  # the first match decides
        }
        for selector, name in table.items():
            self.assertEqual(self.classified(fieldSelector=selector), ("list", name), selector)

    def test_undecodable_list_options_name_nothing(self) -> None:
        for key, value in (("limit", "x"), ("limit", ""), ("timeoutSeconds", "1.5"), ("limit", "9223372036854775808"),
                           ("timeoutSeconds", "١")):
            self.assertEqual(self.classified(fieldSelector="metadata.name=s1", **{key: value}), ("list", ""), key)
        for value in ("+5", "-1", "0", "9223372036854775807"):
            self.assertEqual(self.classified(fieldSelector="metadata.name=s1", limit=value), ("list", "s1"), value)

    def test_watch_values(self) -> None:
        for value, verb in (("1", "watch"), ("", "watch"), ("yes", "watch"), ("0", "list"), ("false", "list"),
                            ("FaLsE", "list"), ("fal\u017fe", "list"), ("00", "watch"), ("false ", "watch")):
            self.assertEqual(self.classified(watch=value)[0], verb, value)
        # Undecodable options: the API server lower-cases instead of folding.
        self.assertEqual(self.classified(watch="fal\u017fe", limit="x")[0], "watch")
        self.assertEqual(self.classified(watch="FALSE", limit="x")[0], "list")

    def test_label_selector_decides_whether_a_name_is_taken(self) -> None:
        """An invalid labelSelector makes the API server's list options fail
        to decode: no name from the field selector (labels.Parse grammar)."""
        valid = ["", " ", "app", "!app", "app=web", "app==web", "app!=web", "app=", "app=,tier", "a in (x,y)",
                 "a notin (x)", "a in ()", "a in (,x)", "a in (x,)", "a in (x,,y)", "x>5", "x<3", "in=x",
                 "example.com/app=web", "a=b\0garbage", "a = b , c != d", "a.b-c_d=A.b-9"]
        invalid = ["app=web,", ",app", "!app=web", "a in x", "a in (x", "a in (x y)", "x>y", "x>", "x>-5", "x<-3",
                   "-app=web", "app=-web", "a==b==c", "/app", "Example.com/app", "a/b/c", "a=b c", "a (x)",
                   "a" * 64, "a=" + "b" * 64, "a in (x=)", "a,,b", "a=(", "a=b)"]
        for selector in valid:
            self.assertEqual(self.classified(fieldSelector="metadata.name=s1", labelSelector=selector),
                             ("list", "s1"), repr(selector))
        for selector in invalid:
            self.assertEqual(self.classified(fieldSelector="metadata.name=s1", labelSelector=selector),
                             ("list", ""), repr(selector))

    @given(st.text(alphabet="ab =!(),<>-/.\t\0in7", max_size=30))
    def test_label_selectors_never_crash(self, selector) -> None:
        verb, _ = self.classified(fieldSelector="metadata.name=s1", labelSelector=selector)
        self.assertEqual(verb, "list")
