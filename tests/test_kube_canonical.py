"""The canonical request: only origin-form targets, decoded once, rebuilt for upstream."""
from __future__ import annotations

import re
from urllib.parse import unquote, unquote_to_bytes

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.canonical import BadRequestTarget, canonical_request, parse_target

SECRETS = b"/api/v1/namespaces/default/secrets"


def canonical(target: bytes, method: bytes = b"GET", authority: bytes = b"proxy"):
    return canonical_request(method, target, authority, [(b"host", authority)])


def go_query(query: str) -> list[tuple[str, str]]:
    """How an API server built with Go 1.15's ``url.ParseQuery`` reads a
    query: split on ``&`` AND ``;``, ``+`` is a space. A rebuilt query must
    read the same whichever way it is split."""
    pairs = []
    for piece in re.split("[&;]", query):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((unquote(key.replace("+", " ")), unquote(value.replace("+", " "))))
    return pairs


class RefusedTargetTests(SynchronousTestCase):
    def assertRefused(self, target: bytes, words: str) -> None:
        with self.assertRaises(BadRequestTarget) as caught:
            canonical(target)
        self.assertIn(words, str(caught.exception), target)

    def test_only_origin_form_is_accepted(self):
        self.assertRefused(b"https://x/api/v1/namespaces/default/secrets", "absolute-form")
        self.assertRefused(b"HTTP://x" + SECRETS, "absolute-form")
        self.assertRefused(b"http:" + SECRETS, "must be a path")
        self.assertRefused(b"x:443", "must be a path")
        self.assertRefused(b"*", "asterisk-form")
        self.assertRefused(b"api/v1/namespaces/default/secrets", "must be a path")
        self.assertRefused(b"//x" + SECRETS, "must not start with //")
        self.assertRefused(b"", "empty")

    def test_fragments_control_and_non_ascii_bytes_are_refused(self):
        self.assertRefused(SECRETS + b"#x", "fragment")
        self.assertRefused(SECRETS + b"?a=b#x", "fragment")
        for byte in (b"\x00", b"\t", b" ", b"\x7f", b"\x80", "é".encode()):
            self.assertRefused(SECRETS + byte, "control, space or non-ASCII")
        self.assertRefused(SECRETS + b"/a%00b", "control")
        self.assertRefused(SECRETS + b"/a%0Ab", "control")

    def test_malformed_percent_encoding_is_refused(self):
        for target in (SECRETS + b"/%", SECRETS + b"/%zz", SECRETS + b"/%4", SECRETS + b"?a=%g0",
                       SECRETS + b"/%%41"):
            self.assertRefused(target, "percent-encoding")
        self.assertRefused(SECRETS + b"/%FF", "not UTF-8")
        self.assertRefused(SECRETS + b"?a=%C3", "not UTF-8")

    def test_malformed_method_and_authority_are_refused(self):
        with self.assertRaises(BadRequestTarget):
            canonical(SECRETS, method=b"GE T")
        with self.assertRaises(BadRequestTarget):
            canonical(SECRETS, authority=b"x/y")


class CanonicalRequestTests(SynchronousTestCase):
    def test_an_ordinary_request_is_classified_and_goes_as_it_came(self):
        request = canonical(b"/api/v1/namespaces/default/pods?watch=1&resourceVersion=10")
        self.assertEqual(request.target, b"/api/v1/namespaces/default/pods?watch=1&resourceVersion=10")
        info = request.info
        self.assertEqual((info.verb, info.resource, info.namespace), ("watch", "pods", "default"))

    def test_the_path_is_decoded_once_and_rebuilt_from_what_was_classified(self):
        request = canonical(b"/api/v1/namespaces/default/secret%73/x")
        self.assertEqual((request.info.resource, request.info.name), ("secrets", "x"))
        self.assertEqual(request.target, SECRETS + b"/x")
        # An encoded slash is a slash to the API server, so it is one here and upstream.
        request = canonical(b"/api/v1/namespaces%2Fdefault%2Fsecrets")
        self.assertEqual((request.info.resource, request.info.namespace), ("secrets", "default"))
        self.assertEqual(request.target, SECRETS)
        # %25 stays one percent sign: never decoded twice.
        request = canonical(b"/api/v1/namespaces/default/configmaps/a%252Fb")
        self.assertEqual(request.info.name, "a%2Fb")
        self.assertEqual(request.target, b"/api/v1/namespaces/default/configmaps/a%252Fb")

    def test_query_is_rebuilt_so_that_any_parser_reads_the_values_classified(self):
        request = canonical(SECRETS + b"?watch=0;watch=1&fieldSelector=metadata.name%3Dx&a+b=c+d")
        self.assertEqual(request.query, (("watch", "0;watch=1"), ("fieldSelector", "metadata.name=x"),
                                         ("a b", "c d")))
        self.assertEqual(request.info.verb, "watch")  # "0;watch=1" is not false, as Kubernetes reads it
        query = request.target.partition(b"?")[2].decode()
        self.assertEqual(go_query(query), list(request.query))

    def test_exec_commands_keep_their_order_and_newlines(self):
        request = canonical(b"/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo%0Ahi"
                            b"&container=c&stdout=true")
        self.assertEqual(request.info.verb, "exec")
        self.assertEqual([v for k, v in request.query if k == "command"], ["sh", "-c", "echo\nhi"])
        self.assertIn(b"command=echo%0Ahi", request.target)

    def test_a_create_without_a_name_reads_its_body_and_an_upgrade_never_does(self):
        self.assertTrue(canonical(b"/api/v1/namespaces/default/configmaps", method=b"POST").names_object_in_body)
        self.assertFalse(canonical(b"/api/v1/namespaces/default/configmaps/x", method=b"POST").names_object_in_body)
        upgrade = canonical_request(b"POST", b"/api/v1/namespaces/default/pods/web/exec", b"proxy",
                                    [(b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1")])
        self.assertTrue(upgrade.upgrade)
        self.assertFalse(upgrade.names_object_in_body)


#: Pieces a request target is made of, the troublesome ones included.
_PIECES = st.sampled_from([
    "/", "//", "?", "#", "%", "&", "=", ";", "+", ".", "..", "a", "api", "apis", "v1", "namespaces", "default",
    "secrets", "pods", "watch", "%2F", "%2f", "%2E", "%25", "%00", "%zz", "%C3%A9", "%FF", "http://x", "https:",
    " ", "\t", "\x00", "é", "*", "\\", "~", "@", ":", "fieldSelector=metadata.name%3D", "watch=1",
])
_TARGETS = st.one_of(
    st.lists(_PIECES, max_size=14).map(lambda parts: "".join(parts).encode("utf-8")),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b"/" + b),
)


class CanonicalRequestProperties(SynchronousTestCase):
    @settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_TARGETS, st.sampled_from([b"GET", b"POST", b"DELETE", b"PATCH"]))
    def test_any_target_is_refused_or_rebuilt_to_what_was_classified(self, target, method):
        try:
            request = canonical(target, method=method)
        except BadRequestTarget:
            return
        rebuilt = request.target
        # Origin-form, printable ASCII, no fragment: what the API server reads is a path.
        self.assertTrue(rebuilt.startswith(b"/") and not rebuilt.startswith(b"//"))
        self.assertTrue(all(0x21 <= byte <= 0x7E for byte in rebuilt))
        self.assertNotIn(b"#", rebuilt)
        path, _, query = rebuilt.partition(b"?")
        # The API server decodes the path once: it gets exactly the classified one.
        self.assertEqual(unquote_to_bytes(path).decode("utf-8"), request.info.path)
        self.assertEqual(request.info.path, request.path)
        # Its query parser, whether it splits on ";" or not, reads the pairs we read.
        self.assertEqual(go_query(query.decode("ascii")), list(request.query))
        # Canonical is a fixed point: the rebuilt target is classified the same.
        again = canonical(rebuilt, method=method)
        self.assertEqual((again.info, again.query, again.target), (request.info, request.query, rebuilt))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=80))
    def test_parse_target_never_raises_anything_else(self, target):
        try:
            parse_target(target)
        except BadRequestTarget:
            pass
