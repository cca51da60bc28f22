"""The agent's HTTP/2 front end, driven by a real h2 client on in-memory transports.

kubectl's side is an h2 client connection whose bytes go straight into the
protocol ``StreamAcceptor.accept_stream`` returns for ``alpn: h2``; the API
server's side is a pool of in-memory HTTP/1.1 connections the test reads
requests from and answers on, so flow control and cancellation are visible.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import h2.events
import hyperframe.frame
from h2.errors import ErrorCodes
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.canonical import BadRequestTarget, canonical_request
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.http1 import KubeConnection
from teleport_py.kube.http2 import KubeHTTP2Connection
from teleport_py.kube.service import Serving
from teleport_py.resources.role import KubernetesResource
from teleport_py.tunnel import StreamRejected
from tests.support.kube import FakeRoles, credentials, role
from tests.support.pki import NOW, USER_CA, user_cert_pem
from tests.support.kube_h2 import PODS, WATCH, FakePool, HTTP11OnlyAPIServer, Kubectl, json_response


class HTTP2FrontTests(SynchronousTestCase):
    def setUp(self):
        self.audit = []
        self.roles = FakeRoles(role(), role("names", resources=(KubernetesResource(
            kind="pods", namespace="default", name="allowed", verbs=("*",), api_group=""),)))
        cluster = KubeCluster("c1", {"env": "dev"}, credentials(1))
        # A Clock: each connection's idle timer and head deadline are never left on the reactor.
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.acceptor = StreamAcceptor(self.clock, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                                       roles=RoleCache(self.clock, self.roles.fetch), emit=self.audit.append)
        self.pool = FakePool()
        self.acceptor.connections.pool = lambda cluster: self.pool
        self.h2_pool = HTTP11OnlyAPIServer()
        self.acceptor.connections.h2_pool = lambda cluster: self.h2_pool

    def kubectl(self, roles=("dev",), **options) -> Kubectl:
        front = self.acceptor.accept_stream({"user_cert": user_cert_pem(roles=roles), "kube_cluster": "c1",
                                              "client_addr": "192.0.2.1:5000", "alpn": "h2"})
        return Kubectl(front, **options)

    def test_protocol_follows_the_negotiated_alpn_and_unknown_ones_are_refused(self):
        metadata = {"user_cert": user_cert_pem(), "kube_cluster": "c1"}
        self.assertIsInstance(self.acceptor.accept_stream(dict(metadata, alpn="h2")), KubeHTTP2Connection)
        self.assertIsInstance(self.acceptor.accept_stream(dict(metadata, alpn="http/1.1")), KubeConnection)
        self.assertIsInstance(self.acceptor.accept_stream(metadata), KubeConnection)
        for alpn in ("spdy/3.1", "", ["h2"], None):
            self.assertRaises(StreamRejected, self.acceptor.accept_stream, dict(metadata, alpn=alpn))

    def test_watches_go_to_the_http2_pool_and_everything_else_to_http11(self):
        """A watch holds its carrier as long as kubectl keeps it open: a
        stream of a shared HTTP/2 connection, not a TLS connection of its own."""
        kubectl = self.kubectl()
        get = kubectl.request(b"GET", PODS)
        self.assertEqual(self.h2_pool.requests, [])
        self.pool.connections[0].answer(json_response(b"{}"))
        kubectl.pump()
        self.assertEqual(kubectl.response(get)[0], 200)
        watch = kubectl.request(b"GET", WATCH)
        self.assertEqual(self.h2_pool.requests, [WATCH])
        # This API server has no h2: the watch fell back to an HTTP/1.1 connection.
        self.assertEqual(self.pool.connections[1].request()[0].target, WATCH)
        self.pool.connections[1].answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                        b"transfer-encoding: chunked\r\n\r\n4\r\n{}\n\n\r\n")
        kubectl.pump()
        self.assertEqual(kubectl.response(watch)[:2], (200, b"{}\n\n"))

    def test_allowed_get_is_impersonated_relayed_and_audited(self):
        kubectl = self.kubectl()
        stream = kubectl.request(b"GET", PODS, (b"authorization", b"Bearer user-secret"))
        (api,) = self.pool.connections
        request, _ = api.request()
        self.assertEqual((request.method, request.target), (b"GET", PODS))
        self.assertEqual(api.header(b"impersonate-user"), [b"alice"])
        self.assertEqual(api.header(b"host"), [b"127.0.0.1:1"])
        self.assertEqual(api.header(b"authorization"), [])
        api.answer(json_response(b'{"kind":"PodList","items":[]}'))
        kubectl.pump()
        self.assertEqual(kubectl.response(stream), (200, b'{"kind":"PodList","items":[]}', True))
        self.assertTrue(api.given_back)
        (event,) = self.audit
        self.assertEqual((event["verb"], event["resource_kind"], event["response_code"], event["success"]),
                         ("list", "pods", 200, True))
        self.assertEqual(event["addr_remote"], "192.0.2.1:5000")

    def test_a_chunked_upstream_body_is_decoded_into_data_frames(self):
        kubectl = self.kubectl()
        stream = kubectl.request(b"GET", PODS)
        self.pool.connections[0].answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                        b"2\r\n{}\r\n0\r\n\r\n")
        kubectl.pump()
        self.assertEqual(kubectl.response(stream), (200, b"{}", True))

    def test_denied_request_is_a_status_over_h2_and_audited(self):
        kubectl = self.kubectl()
        stream = kubectl.request(b"DELETE", b"/api/v1/namespaces/kube-system/pods/x")
        status, body, ended = kubectl.response(stream)
        self.assertEqual((status, ended), (403, True))
        self.assertIn('pods "x" is forbidden', json.loads(body)["message"])
        self.assertEqual(self.pool.connections, [])
        (event,) = self.audit
        self.assertEqual((event["verb"], event["response_code"], event["success"]), ("delete", 403, False))
        # The connection carries the next request.
        stream = kubectl.request(b"GET", PODS)
        self.assertEqual(len(self.pool.connections), 1)

    def test_impersonation_headers_are_refused(self):
        kubectl = self.kubectl()
        for header in ((b"impersonate-uid", b"1"), (b"impersonate-user", b"admin")):
            stream = kubectl.request(b"GET", PODS, header)
            status, body, _ = kubectl.response(stream)
            self.assertEqual(status, 403)
            self.assertIn("impersonation request has been denied", json.loads(body)["message"])
        self.assertEqual(self.pool.connections, [])

    def test_create_is_authorized_by_the_name_in_its_body(self):
        kubectl = self.kubectl(roles=("names",))
        denied = kubectl.request(b"POST", PODS, (b"content-type", b"application/json"),
                                 body=json.dumps({"metadata": {"name": "other"}}).encode())
        self.assertEqual(kubectl.response(denied)[0], 403)
        self.assertEqual(self.audit[-1]["resource_name"], "other")
        body = json.dumps({"metadata": {"name": "allowed"}}).encode()
        allowed = kubectl.request(b"POST", PODS, (b"content-type", b"application/json"), body=body)
        (api,) = self.pool.connections
        self.assertEqual(api.request()[1], body)
        api.answer(json_response(b"{}", b"201 Created"))
        kubectl.pump()
        self.assertEqual(kubectl.response(allowed)[0], 201)

    def test_a_request_body_without_length_goes_upstream_chunked(self):
        kubectl = self.kubectl()
        stream = kubectl.h2.get_next_available_stream_id()
        kubectl.h2.send_headers(stream, [(b":method", b"PUT"), (b":scheme", b"https"),
                                         (b":path", PODS + b"/p"), (b":authority", b"proxy")])
        kubectl.pump()
        for part in (b'{"a":', b'1}'):
            kubectl.h2.send_data(stream, part)
            kubectl.pump()
        kubectl.h2.end_stream(stream)
        kubectl.pump()
        (api,) = self.pool.connections
        request, body = api.request()
        self.assertEqual((dict(request.headers)[b"transfer-encoding"], body), (b"chunked", b'{"a":1}'))

    def test_watch_is_filtered_item_by_item(self):
        kubectl = self.kubectl()
        stream = kubectl.request(b"GET", b"/api/v1/pods?watch=1")
        (api,) = self.pool.connections
        api.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        for namespace, name in (("kube-system", "dns"), ("default", "web-1")):
            line = json.dumps({"type": "ADDED", "object": {"kind": "Pod", "metadata": {
                "namespace": namespace, "name": name}}}).encode() + b"\n"
            api.answer(b"%x\r\n%s\r\n" % (len(line), line))
        kubectl.pump()
        status, body, ended = kubectl.response(stream)
        self.assertEqual((status, ended), (200, False))
        self.assertEqual([json.loads(e)["object"]["metadata"]["name"] for e in body.splitlines()], ["web-1"])
        self.assertEqual(self.audit[0]["verb"], "watch")

    def test_response_waits_for_kubectls_window_and_pauses_the_api_server(self):
        kubectl = self.kubectl(window=0)
        stream = kubectl.request(b"GET", PODS)
        (api,) = self.pool.connections
        api.answer(json_response(b"x" * 1000))
        kubectl.pump()
        self.assertEqual(kubectl.response(stream), (200, b"", False))
        self.assertEqual(api.transport.producerState, "paused")
        kubectl.h2.increment_flow_control_window(600, stream_id=stream)
        kubectl.pump()
        self.assertEqual((len(kubectl.response(stream)[1]), api.transport.producerState), (600, "paused"))
        kubectl.h2.increment_flow_control_window(400, stream_id=stream)
        kubectl.pump()
        self.assertEqual(kubectl.response(stream), (200, b"x" * 1000, True))

    def test_a_full_tunnel_stream_pauses_every_api_server_connection(self):
        kubectl = self.kubectl()
        streams = [kubectl.request(b"GET", WATCH) for _ in range(2)]
        for api in self.pool.connections:
            api.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        kubectl.pump()
        kubectl.transport.producer.pauseProducing()
        self.assertEqual([a.transport.producerState for a in self.pool.connections], ["paused", "paused"])
        kubectl.transport.producer.resumeProducing()
        self.assertEqual([a.transport.producerState for a in self.pool.connections], ["producing", "producing"])
        self.assertEqual([kubectl.response(s)[0] for s in streams], [200, 200])

    def test_request_body_is_acknowledged_only_once_the_api_server_takes_it(self):
        kubectl = self.kubectl()
        stream = kubectl.h2.get_next_available_stream_id()
        kubectl.h2.send_headers(stream, [(b":method", b"PUT"), (b":scheme", b"https"), (b":path", PODS + b"/p"),
                                         (b":authority", b"proxy"), (b"content-length", b"60000")])
        kubectl.pump()
        (api,) = self.pool.connections
        api.transport.producer.pauseProducing()  # the API server connection's buffer is full
        window = kubectl.h2.outbound_flow_control_window
        for _ in range(5):
            kubectl.h2.send_data(stream, b"x" * 10000)
        kubectl.pump()
        self.assertEqual(kubectl.h2.outbound_flow_control_window, window - 50000)
        api.transport.producer.resumeProducing()
        kubectl.pump()
        self.assertEqual(kubectl.h2.outbound_flow_control_window, window)
        self.assertEqual(len(api.request()[1]), 50000)

    def test_rst_stream_cancels_only_its_request(self):
        kubectl = self.kubectl()
        first, second = (kubectl.request(b"GET", WATCH) for _ in range(2))
        api1, api2 = self.pool.connections
        for api in (api1, api2):
            api.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        kubectl.h2.reset_stream(first, ErrorCodes.CANCEL)
        kubectl.pump()
        self.assertTrue(api1.transport.disconnecting)
        self.assertFalse(api2.transport.disconnecting)
        api2.answer(b"3\r\n{}\n\r\n")
        kubectl.pump()
        self.assertEqual(kubectl.response(second)[1], b"{}\n")
        self.assertFalse(kubectl.transport.disconnecting)

    def test_fifty_concurrent_requests(self):
        kubectl = self.kubectl()
        streams = [kubectl.request(b"GET", PODS + b"/p%d" % i) for i in range(50)]
        self.assertEqual(len(self.pool.connections), 50)
        for i, api in reversed(list(enumerate(self.pool.connections))):
            self.assertEqual(api.request()[0].target, PODS + b"/p%d" % i)
            api.answer(json_response(b'{"n":%d}' % i))
        kubectl.pump()
        self.assertEqual([kubectl.response(s) for s in streams],
                         [(200, b'{"n":%d}' % i, True) for i in range(50)])
        self.assertEqual(len(self.audit), 50)

    def test_a_path_holding_a_full_url_gets_400_reaches_nothing_and_is_audited(self):
        kubectl = self.kubectl()
        streams = [kubectl.request(b"GET", b"https://x/api/v1/namespaces/default/secrets"),
                   kubectl.request(b"GET", b"https://x/api/v1/namespaces/default/secrets?watch=1"),
                   kubectl.request(b"DELETE", b"*")]
        for stream in streams:
            status, body, ended = kubectl.response(stream)
            self.assertEqual((status, ended), (400, True))
            self.assertEqual(json.loads(body)["reason"], "BadRequest")
        self.assertEqual((self.pool.connections, self.h2_pool.requests), ([], []))
        self.assertEqual([(e["response_code"], e["success"]) for e in self.audit], [(400, False)] * 3)
        self.assertEqual(self.audit[0]["request_path"], "https://x/api/v1/namespaces/default/secrets")

    def test_the_target_sent_upstream_is_rebuilt_from_what_was_classified(self):
        kubectl = self.kubectl()
        kubectl.request(b"GET", b"/api/v1/namespaces%2Fdefault/pod%73?a=b;c")
        (api,) = self.pool.connections
        self.assertEqual(api.request()[0].target, PODS + b"?a=b%3Bc")

    def hang_up_during_authorization(self, hang_up):
        """kubectl hangs up while the request's roles are being looked up:
        nothing is opened upstream."""
        self.roles.gate = Deferred()
        kubectl = self.kubectl()
        stream = kubectl.request(b"GET", WATCH)
        self.assertTrue(self.roles.fetched)
        hang_up(kubectl, stream)
        gate, self.roles.gate = self.roles.gate, None
        gate.callback(None)
        self.assertEqual((self.pool.connections, self.h2_pool.requests), ([], []))

    def test_stream_reset_during_authorization_sends_nothing_upstream(self):
        def reset(kubectl, stream):
            kubectl.h2.reset_stream(stream, ErrorCodes.CANCEL)
            kubectl.pump()
        self.hang_up_during_authorization(reset)

    def test_connection_lost_during_authorization_sends_nothing_upstream(self):
        self.hang_up_during_authorization(lambda kubectl, stream: kubectl.front.connectionLost(None))

    def test_requests_without_pseudo_headers_or_with_connect_are_refused(self):
        kubectl = self.kubectl(validate=False)
        missing = kubectl.h2.get_next_available_stream_id()
        kubectl.h2.send_headers(missing, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", PODS),
                                          (b"host", b"proxy")], end_stream=True)
        kubectl.pump()
        connect = kubectl.h2.get_next_available_stream_id()
        kubectl.h2.send_headers(connect, [(b":method", b"CONNECT"), (b":authority", b"proxy")], end_stream=True)
        kubectl.pump()
        self.assertEqual((kubectl.response(missing)[0], kubectl.response(connect)[0]), (400, 405))
        self.assertEqual(self.pool.connections, [])
        self.assertEqual([(e["response_code"], e["success"], e["user"], e["request_path"]) for e in self.audit],
                         [(400, False, "alice", ""), (405, False, "alice", "")])
        self.assertIn(":authority", self.audit[0]["reason"])
        self.assertIn("CONNECT", self.audit[1]["reason"])

    def test_malformed_frames_end_only_that_tunnel_stream(self):
        other = self.kubectl()
        kubectl = self.kubectl()
        watch = kubectl.request(b"GET", b"/api/v1/pods?watch=1")
        kubectl.front.dataReceived(b"\x00\x00\x03\x08\x00\x00\x00\x00\x00\x00\x00\x01")  # WINDOW_UPDATE of 3 bytes
        self.assertTrue(kubectl.transport.disconnecting)
        goaway = hyperframe.frame.Frame.parse_frame_header(memoryview(kubectl.transport.value()[:9]))[0]
        self.assertIsInstance(goaway, hyperframe.frame.GoAwayFrame)
        kubectl.front.connectionLost(None)
        self.assertTrue(self.pool.connections[0].transport.disconnecting)
        self.assertFalse(kubectl.was_reset(watch))
        refused = [e for e in self.audit if e["response_code"] == 400]
        self.assertEqual([(e["event"], e["success"], e["user"]) for e in refused], [("kube.request", False, "alice")])
        self.assertIn("HTTP/2", refused[0]["reason"])
        stream = other.request(b"GET", PODS)
        self.pool.connections[-1].answer(json_response(b"{}"))
        other.pump()
        self.assertEqual(other.response(stream), (200, b"{}", True))

    def test_stream_and_header_limits_are_advertised_and_enforced(self):
        kubectl = self.kubectl()
        remote = kubectl.h2.remote_settings
        self.assertEqual((remote.max_concurrent_streams, remote.max_header_list_size), (1000, 64 * 1024))
        kubectl.request(b"GET", PODS, (b"x-big", b"x" * (64 * 1024)))
        (terminated,) = [e for e in kubectl.events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual(terminated.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(kubectl.transport.disconnecting)
        self.assertEqual(self.pool.connections, [])

    def test_shutdown_sends_goaway_and_ends_requests(self):
        kubectl = self.kubectl()
        kubectl.request(b"GET", WATCH)
        (api,) = self.pool.connections
        self.successResultOf(self.acceptor.close())
        kubectl.pump()
        self.assertTrue(any(isinstance(e, h2.events.ConnectionTerminated) for e in kubectl.events))
        self.assertEqual((kubectl.transport.disconnecting, api.transport.disconnecting), (True, True))

    def draining(self, *kubectls: Kubectl):
        """The agent's serving step stopped with a 10 s drain on a Clock; its
        tunnel counts the kubectl connections (tunnel streams) still open."""
        clock = Clock()
        open_streams = lambda kind: sum(not k.transport.disconnecting for k in kubectls)
        tunnel = SimpleNamespace(announced=None, tunnels=[SimpleNamespace(streams_of_kind=open_streams)])
        tunnel.announce = lambda clusters: setattr(tunnel, "announced", clusters)
        serving = Serving(clock, self.acceptor, tunnel)
        serving.startService()
        stopped = serving.stop_by(clock.seconds() + 10)
        self.assertEqual(tunnel.announced, [])
        for kubectl in kubectls:
            kubectl.pump()
        return clock, stopped

    def test_shutdown_drains_streams_already_accepted_and_refuses_new_ones(self):
        kubectl, idle = self.kubectl(), self.kubectl()
        first, second = kubectl.request(b"GET", PODS), kubectl.request(b"GET", WATCH)
        api1, api2 = self.pool.connections
        clock, stopped = self.draining(kubectl, idle)
        (goaway,) = [e for e in kubectl.events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (ErrorCodes.NO_ERROR, second))
        self.assertTrue(idle.transport.disconnecting)  # nothing in flight: closed at once
        self.assertFalse(kubectl.transport.disconnecting)
        # A stream opened after the GOAWAY is refused (kubectl retries it elsewhere)...
        late = kubectl.h2.get_next_available_stream_id()
        block = kubectl.h2.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"), (b":path", PODS),
                                           (b":authority", b"proxy")])
        kubectl.front.dataReceived(
            hyperframe.frame.HeadersFrame(late, block, flags=["END_STREAM", "END_HEADERS"]).serialize())
        (refused,) = kubectl.raw_frames()
        self.assertEqual((type(refused), refused.stream_id, refused.error_code),
                         (hyperframe.frame.RstStreamFrame, late, ErrorCodes.REFUSED_STREAM))
        self.assertEqual(len(self.pool.connections), 2)
        # ...while those accepted before it finish within the drain, then the connection closes.
        api1.answer(json_response(b'{"first":1}'))
        api2.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n\r\n{}\n")
        responses = {}
        for frame in kubectl.raw_frames():
            status, body, ended = responses.get(frame.stream_id, (None, b"", False))
            if isinstance(frame, hyperframe.frame.HeadersFrame):
                status = dict(kubectl.h2.decoder.decode(frame.data, raw=True))[b":status"]
            elif isinstance(frame, hyperframe.frame.DataFrame):
                body += frame.data
            responses[frame.stream_id] = (status, body, ended or "END_STREAM" in frame.flags)
        self.assertEqual(responses, {first: (b"200", b'{"first":1}', True), second: (b"200", b"{}\n", True)})
        self.assertTrue(kubectl.transport.disconnecting)
        clock.advance(1)
        self.successResultOf(stopped)
        self.assertLess(clock.seconds(), 10)
        self.assertEqual([e["response_code"] for e in self.audit], [200, 200])

    def test_streams_still_open_at_the_drains_deadline_are_reset(self):
        kubectl = self.kubectl()
        watch = kubectl.request(b"GET", WATCH)
        (api,) = self.pool.connections
        api.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        clock, stopped = self.draining(kubectl)
        api.answer(b"3\r\n{}\n\r\n")  # still served during the drain
        self.assertEqual([f.data for f in kubectl.raw_frames() if isinstance(f, hyperframe.frame.DataFrame)],
                         [b"{}\n"])
        clock.advance(9)
        self.assertNoResult(stopped)
        self.assertFalse(kubectl.transport.disconnecting)
        clock.advance(1)
        self.successResultOf(stopped)
        reset, goaway = kubectl.raw_frames()
        self.assertEqual((type(reset), reset.stream_id, reset.error_code),
                         (hyperframe.frame.RstStreamFrame, watch, ErrorCodes.CANCEL))
        self.assertEqual((type(goaway), goaway.last_stream_id), (hyperframe.frame.GoAwayFrame, watch))
        self.assertEqual((kubectl.transport.disconnecting, api.transport.disconnecting), (True, True))

    def test_an_unfilterable_watch_event_resets_only_that_stream(self):
        kubectl = self.kubectl()
        bad, good = kubectl.request(b"GET", b"/api/v1/pods?watch=1"), kubectl.request(b"GET", WATCH)
        api_bad, api_good = self.pool.connections
        for api in (api_bad, api_good):
            api.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        api_bad.answer(b"6\r\nnot js\r\n1\r\n\n\r\n")
        kubectl.pump()
        self.assertTrue(kubectl.was_reset(bad))
        self.assertTrue(api_bad.transport.disconnecting)
        api_good.answer(b"3\r\n{}\n\r\n")
        kubectl.pump()
        self.assertEqual(kubectl.response(good), (200, b"{}\n", False))
        self.assertFalse(kubectl.was_reset(good))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from([b"GET", b"DELETE", b"POST"]), st.one_of(
        st.lists(st.sampled_from([b"/", b"//", b"?", b"#", b"%", b"%2F", b"%2e", b"%00", b"%zz", b"&", b";", b"=",
                                  b"+", b"..", b"api", b"apis", b"v1", b"namespaces", b"default", b"secrets",
                                  b"pods", b"x", b"watch=1", b"https://x", b"*", b" ", b"\xc3\xa9", b"\x7f"]),
                 min_size=1, max_size=12).map(b"".join),
        st.binary(min_size=1, max_size=60)))
    def test_any_path_is_refused_or_forwarded_as_it_was_classified(self, method, path):
        """Whatever ``:path`` holds: a 400 and nothing upstream, or (for a
        role allowing everything) exactly the canonical target upstream."""
        self.roles.by_name["all"] = role("all", resources=(KubernetesResource(
            kind="*", namespace="*", name="*", verbs=("*",), api_group="*"),))
        kubectl = self.kubectl(roles=("all",), validate=False)
        connections, watches = len(self.pool.connections), len(self.h2_pool.requests)
        try:
            expected = canonical_request(method, path, b"proxy", []).target
        except BadRequestTarget:
            expected = None
        stream = kubectl.request(method, path, body=b"{}" if method == b"POST" else None)
        status = kubectl.response(stream)[0]
        sent = [api.request()[0].target for api in self.pool.connections[connections:]]
        sent += self.h2_pool.requests[watches:]
        if sent:
            self.assertEqual(set(sent), {expected}, path)
        elif status is None:  # h2 itself refused the header block: the stream reset, or GOAWAY
            self.assertTrue(kubectl.was_reset(stream) or any(
                isinstance(e, h2.events.ConnectionTerminated) for e in kubectl.events), path)
        else:  # refused by the parser (400), or by classification and roles (403)
            self.assertEqual(status, 400 if expected is None else 403, path)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_random_bytes_after_the_preface_never_raise(self, data):
        self.assert_survives(data)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 2 ** 31 - 1]),
                              st.binary(max_size=40)), max_size=6))
    def test_random_frames_never_raise(self, frames):
        self.assert_survives(b"".join(
            len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload
            for kind, flags, stream_id, payload in frames))

    def assert_survives(self, data):
        self.pool.connections.clear()
        kubectl = self.kubectl()
        kubectl.request(b"GET", b"/api/v1/pods?watch=1")
        kubectl.front.dataReceived(data)
        if kubectl.transport.disconnecting:
            kubectl.front.connectionLost(None)
            self.assertTrue(all(a.transport.disconnecting for a in self.pool.connections))
        else:
            kubectl.front.dataReceived(kubectl.h2.data_to_send())
