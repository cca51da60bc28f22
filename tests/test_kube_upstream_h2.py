"""The agent's multiplexed HTTP/2 client to the API server: in memory against
the h2 library's server state machine, then against a real kube-apiserver."""
from __future__ import annotations

import json
import secrets

import h11
import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py.kube import upstream_h2
from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.context import Decision, KubeCluster
from teleport_py.kube.credentials import ClusterCredentials
from teleport_py.kube.upstream_h2 import (
    REQUEST_BODY_BUFFER,
    STREAM_WINDOW,
    H2NotSupported,
    H2Pool,
    H2UpstreamRequest,
    StreamRefused,
    StreamReset,
    UpstreamConnectionLost,
    UpstreamProtocolError,
    request_headers,
)
from teleport_py.pki import load_certificates_pem
from teleport_py.rbac import RequestInfo
from tests.support.kube import FakeEndpoint, FakeRoles, credentials, kubectl_request, request_context
from tests.support.pki import USER_CA, user_cert_pem
from tests.support.kubeenv import shared_control_plane

HOST = [(b"Host", b"api:6443")]


class Receiver:
    """Records what a stream reports."""

    def __init__(self):
        self.status = None
        self.headers = None
        self.body = b""
        self.ended = False
        self.failure = None
        self.pauses = []

    def response_head(self, status, headers):
        self.status, self.headers = status, headers

    def response_data(self, data):
        self.body += data

    def response_end(self):
        self.ended = True

    def response_failed(self, reason):
        self.failure = reason

    def pause_request_body(self):
        self.pauses.append("pause")

    def resume_request_body(self):
        self.pauses.append("resume")


class Server:
    """The h2 library's server state machine on the far end of one client connection."""

    def __init__(self, protocol, transport, max_streams=100):
        self.protocol, self.transport = protocol, transport
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.h2.initiate_connection()
        self.events = []

    def handshake(self):
        self.protocol.handshakeCompleted()
        self.pump()

    def pump(self):
        while True:
            out = self.transport.value()
            self.transport.clear()
            if out:
                self.events += self.h2.receive_data(out)
            back = self.h2.data_to_send()
            if back:
                self.protocol.dataReceived(back)
            if not out and not back:
                return

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def respond(self, stream_id, status=b"200", body=b"", end=True, headers=()):
        self.h2.send_headers(stream_id, [(b":status", status), *headers])
        frame = self.h2.max_outbound_frame_size
        for start in range(0, len(body), frame):
            self.h2.send_data(stream_id, body[start:start + frame])
        if end:
            self.h2.end_stream(stream_id)
        self.pump()


def lose(protocol):
    protocol.transport.disconnecting = True
    protocol.connectionLost(Failure(ConnectionDone()))


class RequestHeadersTests(SynchronousTestCase):
    def test_http1_headers_become_http2_headers(self):
        headers = request_headers(b"GET", b"/api/v1/pods?watch=1", [
            (b"Host", b"api:6443"), (b"Accept", b"application/json"), (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"), (b"Keep-Alive", b"5"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"),
            (b"TE", b"trailers"), (b"Impersonate-User", b"alice"),
        ])
        self.assertEqual(headers, [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api:6443"),
            (b":path", b"/api/v1/pods?watch=1"), (b"accept", b"application/json"), (b"te", b"trailers"),
            (b"impersonate-user", b"alice"),
        ])

    def test_te_other_than_trailers_is_dropped(self):
        headers = request_headers(b"GET", b"/", [*HOST, (b"te", b"gzip")])
        self.assertNotIn(b"te", [name for name, _ in headers])

    def test_host_is_required(self):
        self.assertRaises(ValueError, request_headers, b"GET", b"/", [(b"accept", b"*/*")])


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.pool = H2Pool(self.clock, lambda: self.endpoint, idle_timeout=30)
        self.servers = []

    def request(self, receiver=None, method=b"GET", end_stream=True):
        return Deferred.fromCoroutine(
            self.pool.request(method, b"/api/v1/configmaps", HOST, receiver or Receiver(), end_stream=end_stream))

    def server(self, index=-1, max_streams=100, handshake=True):
        protocol, transport = self.endpoint.connections[index]
        server = Server(protocol, transport, max_streams)
        if handshake:
            server.handshake()
        self.servers.append(server)
        return server

    def open(self, receiver=None, **kwargs):
        """A stream on the current connection (set up and handshaken as needed)."""
        opened = self.request(receiver, **kwargs)
        if not opened.called:
            self.server()
        return self.successResultOf(opened)

    def test_get_round_trip(self):
        receiver = Receiver()
        stream = self.open(receiver)
        server = self.servers[0]
        server.pump()
        [request] = server.of(h2.events.RequestReceived)
        self.assertEqual(dict(request.headers)[b":authority"], b"api:6443")
        self.assertEqual(dict(request.headers)[b":method"], b"GET")
        self.assertTrue(server.of(h2.events.StreamEnded))
        server.respond(stream.stream_id, body=b'{"kind":"ConfigMapList"}', headers=[(b"content-type", b"application/json")])
        self.assertEqual(receiver.status, 200)
        self.assertEqual(receiver.headers, [(b"content-type", b"application/json")])
        self.assertEqual(receiver.body, b'{"kind":"ConfigMapList"}')
        self.assertTrue(receiver.ended)
        self.assertIsNone(receiver.failure)

    def test_settings_we_send(self):
        self.open()
        remote = self.servers[0].h2.remote_settings
        self.assertEqual(remote.enable_push, 0)
        self.assertEqual(remote.initial_window_size, STREAM_WINDOW)
        self.assertGreater(self.servers[0].h2.outbound_flow_control_window, STREAM_WINDOW)

    def test_concurrency_limit_opens_a_second_connection(self):
        first = self.request()
        self.server(max_streams=1)
        first = self.successResultOf(first)
        second = self.request()
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertNoResult(second)
        self.server(max_streams=1)
        self.assertIsNot(self.successResultOf(second).connection, first.connection)

    def test_waiting_requests_share_the_connection_being_set_up(self):
        waiting = [self.request() for _ in range(3)]
        self.assertEqual(len(self.endpoint.connections), 1)
        for d in waiting:
            self.assertNoResult(d)
        self.server()
        streams = [self.successResultOf(d) for d in waiting]
        self.assertEqual(len({s.connection for s in streams}), 1)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_waiters_beyond_the_new_connections_limit_get_another(self):
        waiting = [self.request() for _ in range(3)]
        self.server(max_streams=2)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.server(max_streams=2)
        streams = [self.successResultOf(d) for d in waiting]
        self.assertEqual(len({s.connection for s in streams}), 2)

    def test_goaway_refuses_unseen_streams_and_finishes_the_others(self):
        seen, unseen = Receiver(), Receiver()
        first, second = self.open(seen), self.open(unseen)
        server = self.servers[0]
        server.pump()
        # h2's own server could send nothing after its GOAWAY: the frame is made by hand.
        first.connection.dataReceived(GoAwayFrame(0, last_stream_id=first.stream_id).serialize())
        self.assertTrue(unseen.failure.check(StreamRefused))
        self.assertIsNone(seen.failure)
        self.assertFalse(first.connection.transport.disconnecting)
        # No new stream goes there: a new request makes a new connection.
        third = self.request()
        self.assertEqual(len(self.endpoint.connections), 2)
        self.server()
        self.assertIsNot(self.successResultOf(third).connection, first.connection)
        # The stream the server saw still gets its response, then the connection closes.
        server.respond(first.stream_id, body=b"data")
        self.assertTrue(seen.ended)
        self.assertEqual(seen.body, b"data")
        self.assertTrue(first.connection.transport.disconnecting)
        self.assertIs(second.connection, first.connection)

    def test_goaway_with_no_streams_closes(self):
        stream = self.open()
        server = self.servers[0]
        server.respond(stream.stream_id)
        server.h2.close_connection()
        server.pump()
        self.assertTrue(stream.connection.transport.disconnecting)
        self.assertEqual(self.pool.connections, [])

    def test_server_reset_fails_only_that_stream(self):
        reset, other = Receiver(), Receiver()
        first, second = self.open(reset), self.open(other)
        server = self.servers[0]
        server.h2.reset_stream(first.stream_id, ErrorCodes.INTERNAL_ERROR)
        server.pump()
        self.assertTrue(reset.failure.check(StreamReset))
        self.assertIsNone(other.failure)
        server.respond(second.stream_id, body=b"ok")
        self.assertTrue(other.ended)

    def test_refused_stream_is_retryable(self):
        receiver = Receiver()
        stream = self.open(receiver)
        self.servers[0].h2.reset_stream(stream.stream_id, ErrorCodes.REFUSED_STREAM)
        self.servers[0].pump()
        self.assertTrue(receiver.failure.check(StreamRefused))

    def test_connection_loss_fails_every_stream(self):
        receivers = [Receiver(), Receiver()]
        streams = [self.open(r) for r in receivers]
        lose(streams[0].connection)
        for receiver in receivers:
            self.assertTrue(receiver.failure.check(UpstreamConnectionLost))
        self.assertEqual(self.pool.connections, [])
        self.request()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_loss_during_setup_fails_the_waiters(self):
        waiting = [self.request(), self.request()]
        lose(self.endpoint.connections[0][0])
        for d in waiting:
            self.failureResultOf(d, UpstreamConnectionLost)

    def test_setup_timeout(self):
        waiting = self.request()
        self.clock.advance(30)
        self.failureResultOf(waiting, UpstreamConnectionLost)
        self.assertTrue(self.endpoint.connections[0][1].disconnecting)

    def test_idle_connection_closes_after_idle_timeout(self):
        stream = self.open()
        server = self.servers[0]
        self.clock.advance(60)
        self.assertFalse(stream.connection.transport.disconnecting)  # busy
        server.respond(stream.stream_id)
        self.clock.advance(29)
        self.assertFalse(stream.connection.transport.disconnecting)
        self.successResultOf(self.request())  # reused, and busy again
        self.assertEqual(len(self.endpoint.connections), 1)
        self.clock.advance(60)
        self.assertFalse(stream.connection.transport.disconnecting)

    def test_idle_timeout_sends_goaway_and_closes(self):
        stream = self.open()
        server = self.servers[0]
        server.respond(stream.stream_id)
        self.clock.advance(30)
        self.assertTrue(stream.connection.transport.disconnecting)
        server.pump()
        self.assertTrue(server.of(h2.events.ConnectionTerminated))

    def test_silent_server_is_pinged_then_dropped(self):
        receiver = Receiver()
        stream = self.open(receiver)
        self.clock.advance(30)
        self.assertIn(b"tpkeepal", stream.connection.transport.value())  # the PING
        self.clock.advance(14)
        self.assertIsNone(receiver.failure)
        self.clock.advance(1)
        self.assertTrue(receiver.failure.check(UpstreamConnectionLost))
        self.assertTrue(stream.connection.transport.disconnected)
        self.assertEqual(self.pool.connections, [])

    def test_answered_ping_keeps_the_streams(self):
        receiver = Receiver()
        self.open(receiver)
        server = self.servers[0]
        for _ in range(10):
            self.clock.advance(15)
            server.pump()
        self.assertTrue(server.of(h2.events.PingReceived))
        self.assertIsNone(receiver.failure)

    def test_response_window_is_acknowledged_only_once_consumed(self):
        receiver = Receiver()
        stream = self.open(receiver)
        server = self.servers[0]
        server.pump()
        server.respond(stream.stream_id, end=False)
        chunk = b"x" * server.h2.max_outbound_frame_size
        while server.h2.local_flow_control_window(stream.stream_id) >= len(chunk):
            server.h2.send_data(stream.stream_id, chunk)
        server.pump()
        self.assertEqual(len(receiver.body), STREAM_WINDOW - STREAM_WINDOW % len(chunk))
        self.assertLess(server.h2.local_flow_control_window(stream.stream_id), len(chunk))  # server blocked
        stream.consumed(len(receiver.body))
        server.pump()
        self.assertEqual(server.h2.local_flow_control_window(stream.stream_id), STREAM_WINDOW)

    def test_request_body_respects_the_servers_window_and_pauses_the_caller(self):
        receiver = Receiver()
        stream = self.open(receiver, method=b"POST", end_stream=False)
        server = self.servers[0]
        body = bytes(range(256)) * (2 * REQUEST_BODY_BUFFER // 256)
        for piece in (body[:1000], body[1000:300000], body[300000:]):
            stream.send_data(piece)
        stream.end()
        server.pump()
        received = b"".join(e.data for e in server.of(h2.events.DataReceived))
        self.assertEqual(len(received), 65535)  # the server's default stream window
        self.assertEqual(receiver.pauses, ["pause"])
        self.assertFalse(server.of(h2.events.StreamEnded))
        while not server.of(h2.events.StreamEnded):
            data = server.of(h2.events.DataReceived)
            server.events.clear()
            for event in data:
                server.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            server.pump()
            received += b"".join(e.data for e in server.of(h2.events.DataReceived))
        self.assertEqual(received, body)
        self.assertEqual(receiver.pauses, ["pause", "resume"])

    def test_response_before_request_end_resets_the_rest_of_the_request(self):
        receiver = Receiver()
        stream = self.open(receiver, method=b"POST", end_stream=False)
        server = self.servers[0]
        server.respond(stream.stream_id, status=b"403")
        self.assertTrue(receiver.ended)
        self.assertEqual([e.error_code for e in server.of(h2.events.StreamReset)], [ErrorCodes.NO_ERROR])

    def test_cancel_resets_the_stream_and_reports_nothing(self):
        receiver = Receiver()
        stream = self.open(receiver)
        server = self.servers[0]
        stream.cancel()
        server.pump()
        self.assertEqual([e.error_code for e in server.of(h2.events.StreamReset)], [ErrorCodes.CANCEL])
        self.assertIsNone(receiver.failure)
        self.assertFalse(receiver.ended)

    def test_unacknowledged_bytes_of_a_cancelled_stream_return_to_the_connection_window(self):
        self.patch(upstream_h2, "CONNECTION_WINDOW", 65536)  # small enough that h2 sends its updates early
        stream = self.open()
        server = self.servers[0]
        server.respond(stream.stream_id, body=b"z" * 40000, end=False)
        self.assertEqual(server.h2.outbound_flow_control_window, 65536 - 40000)
        stream.cancel()
        server.pump()
        self.assertEqual(server.h2.outbound_flow_control_window, 65536)

    def test_trailers_are_refused(self):
        receiver = Receiver()
        stream = self.open(receiver)
        server = self.servers[0]
        server.respond(stream.stream_id, body=b"x", end=False)
        server.h2.send_headers(stream.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        server.pump()
        self.assertTrue(receiver.failure.check(UpstreamProtocolError))
        self.assertFalse(receiver.ended)

    def test_malformed_frames_close_the_connection_and_fail_its_streams(self):
        receiver = Receiver()
        stream = self.open(receiver)
        # A DATA frame on stream 0 is a connection error (RFC 9113 6.1).
        stream.connection.dataReceived(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        self.assertTrue(receiver.failure.check(UpstreamProtocolError))
        self.assertTrue(stream.connection.transport.disconnected)
        self.assertEqual(self.pool.connections, [])

    def test_no_h2_is_a_clear_error_remembered_for_a_while(self):
        self.endpoint.alpn = b"http/1.1"
        waiting = self.request()
        self.endpoint.connections[0][0].handshakeCompleted()
        self.failureResultOf(waiting, H2NotSupported)
        self.failureResultOf(self.request(), H2NotSupported)
        self.assertEqual(len(self.endpoint.connections), 1)
        self.clock.advance(300)
        self.endpoint.alpn = b"h2"
        again = self.request()
        self.assertEqual(len(self.endpoint.connections), 2)
        self.server()
        self.successResultOf(again)

    def test_close_sends_goaway_and_fires_when_closed(self):
        receiver = Receiver()
        stream = self.open(receiver)
        server = self.servers[0]
        closed = self.pool.close()
        self.assertNoResult(closed)
        server.pump()
        self.assertTrue(server.of(h2.events.ConnectionTerminated))
        self.assertTrue(stream.connection.transport.disconnecting)
        lose(stream.connection)
        self.successResultOf(closed)
        self.assertTrue(receiver.failure.check(UpstreamConnectionLost))
        self.failureResultOf(self.request(), UpstreamConnectionLost)


def watch_event(name: str, kind="ADDED") -> bytes:
    return json.dumps({"type": kind, "object": {"kind": "ConfigMap", "apiVersion": "v1",
                                                "metadata": {"name": name, "namespace": "default"}}}).encode() + b"\n"


class WatchRelayTests(SynchronousTestCase):
    """H2UpstreamRequest: a kubectl watch (HTTP/1.1 front end) carried on an H2Pool stream."""

    def setUp(self):
        self.audit = []
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.pool = H2Pool(self.clock, lambda: self.endpoint)
        cluster = KubeCluster("c1", {"env": "dev"}, credentials(6443))
        forwarder = StreamAcceptor(reactor, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                              roles=RoleCache(reactor, FakeRoles().fetch), emit=self.audit.append)
        self.kubectl = forwarder.accept_stream({"user_cert": user_cert_pem(), "kube_cluster": "c1"})
        self.kubectl.makeConnection(StringTransport())
        self.addCleanup(self.kubectl.connectionLost, None)  # its keep-alive timer goes with it
        self.kubectl.http.receive_data(kubectl_request(
            b"GET", b"/api/v1/namespaces/default/configmaps?watch=1", (b"accept", b"application/json")))
        self.request = self.kubectl.http.next_event()
        self.kubectl.http.next_event()

    def start(self, item_filter=None, server=True):
        info = RequestInfo(verb="watch", api_version="v1", resource="configmaps", namespace="default",
                           is_resource_request=True)
        self.upstream = H2UpstreamRequest(self.kubectl, request_context(
            self.kubectl, self.request, Decision("alice", ("developers",), info, item_filter)))
        self.kubectl.upstream = self.upstream
        started = Deferred.fromCoroutine(self.upstream.start(self.pool))
        self.upstream.request_done()
        if server:
            self.server = Server(*self.endpoint.connections[-1])
            self.server.handshake()
        self.successResultOf(started)
        self.server.pump()
        return self.upstream.stream

    def kubectl_saw(self):
        http = h11.Connection(h11.CLIENT)
        http.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
        http.send(h11.EndOfMessage())
        http.receive_data(self.kubectl.transport.value())
        events = []
        while (event := http.next_event()) is not h11.NEED_DATA:
            events.append(event)
            if type(event) is h11.EndOfMessage:
                break
        return events[0], b"".join(e.data for e in events if type(e) is h11.Data), type(events[-1]) is h11.EndOfMessage

    def test_watch_events_reach_kubectl(self):
        stream = self.start()
        [request] = self.server.of(h2.events.RequestReceived)
        headers = dict(request.headers)
        self.assertEqual(headers[b":authority"], b"127.0.0.1:6443")
        self.assertEqual(headers[b"impersonate-user"], b"alice")
        self.assertNotIn(b"host", headers)
        self.server.respond(stream.stream_id, end=False, headers=[(b"content-type", b"application/json")])
        self.server.h2.send_data(stream.stream_id, watch_event("a") + watch_event("b"))
        self.server.h2.end_stream(stream.stream_id)
        self.server.pump()
        response, body, ended = self.kubectl_saw()
        self.assertEqual(response.status_code, 200)
        self.assertEqual(body, watch_event("a") + watch_event("b"))
        self.assertTrue(ended)
        self.assertEqual([e["response_code"] for e in self.audit], [200])
        self.assertIsNone(self.kubectl.upstream)

    def test_watch_events_are_filtered_by_role(self):
        stream = self.start(item_filter=lambda namespace, name: name == "a")
        self.server.respond(stream.stream_id, end=False, headers=[(b"content-type", b"application/json")])
        self.server.h2.send_data(stream.stream_id, watch_event("b") + watch_event("a"))
        self.server.pump()
        response, body, _ = self.kubectl_saw()
        self.assertEqual(json.loads(body)["object"]["metadata"]["name"], "a")
        self.assertEqual(body.count(b"\n"), 1)

    def test_a_paused_kubectl_stops_the_acknowledgements(self):
        stream = self.start()
        self.server.respond(stream.stream_id, end=False, headers=[(b"content-type", b"application/json")])
        self.kubectl.transport.producer.pauseProducing()  # kubectl's side is full
        sent = 40 * 16384  # over half the window: h2 batches smaller acknowledgements
        for _ in range(40):
            self.server.h2.send_data(stream.stream_id, b"x" * 16384)
        self.server.pump()
        self.assertEqual(self.server.h2.local_flow_control_window(stream.stream_id), STREAM_WINDOW - sent)
        self.kubectl.transport.producer.resumeProducing()
        self.server.pump()
        self.assertEqual(self.server.h2.local_flow_control_window(stream.stream_id), STREAM_WINDOW)

    def test_a_refused_stream_is_retried_once(self):
        stream = self.start()
        self.server.h2.reset_stream(stream.stream_id, ErrorCodes.REFUSED_STREAM)
        self.server.pump()
        retried = self.upstream.stream
        self.assertNotEqual(retried.stream_id, stream.stream_id)
        self.server.h2.reset_stream(retried.stream_id, ErrorCodes.REFUSED_STREAM)
        self.server.pump()
        response, body, _ = self.kubectl_saw()
        self.assertEqual(response.status_code, 502)
        self.assertEqual([e["response_code"] for e in self.audit], [502])

    def test_a_stream_broken_after_the_head_cuts_kubectl_off(self):
        stream = self.start()
        self.server.respond(stream.stream_id, end=False, headers=[(b"content-type", b"application/json")])
        self.server.h2.reset_stream(stream.stream_id, ErrorCodes.INTERNAL_ERROR)
        self.server.pump()
        self.assertTrue(self.kubectl.transport.disconnecting)

    def test_kubectl_gone_cancels_only_its_stream(self):
        stream = self.start()
        self.kubectl.connectionLost(Failure(ConnectionDone()))
        self.server.pump()
        self.assertEqual([(e.stream_id, e.error_code) for e in self.server.of(h2.events.StreamReset)],
                         [(stream.stream_id, ErrorCodes.CANCEL)])
        self.assertFalse(stream.connection.transport.disconnecting)

    def test_no_h2_is_raised_for_the_caller_to_fall_back(self):
        self.endpoint.alpn = b"http/1.1"
        info = RequestInfo(verb="watch", api_version="v1", resource="configmaps", namespace="default",
                           is_resource_request=True)
        upstream = H2UpstreamRequest(self.kubectl, request_context(
            self.kubectl, self.request, Decision("alice", ("developers",), info)))
        started = Deferred.fromCoroutine(upstream.start(self.pool))
        self.endpoint.connections[0][0].handshakeCompleted()
        self.failureResultOf(started, H2NotSupported)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.binary(max_size=64), max_size=8))
    def test_random_bytes_after_the_server_preface_never_raise(self, chunks):
        clock, endpoint = MemoryReactorClock(), FakeEndpoint()
        pool = H2Pool(clock, lambda: endpoint)
        receiver = Receiver()
        opened = Deferred.fromCoroutine(pool.request(b"GET", b"/", HOST, receiver))
        protocol, transport = endpoint.connections[0]
        Server(protocol, transport).handshake()
        stream = self.successResultOf(opened)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        if transport.disconnecting:
            self.assertTrue(receiver.failure is not None or receiver.ended)
        stream.consumed(1 << 20)
        stream.cancel()


class RealAPIServerTests(TestCase):
    """Against kube-apiserver 1.20.2 (tests/support/kubeenv.py)."""

    timeout = 240

    async def _pool(self):
        plane = await shared_control_plane()
        credential = plane.issue_client_certificate("teleport-h2-test", ("system:masters",))
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        creds = ClusterCredentials(
            name="h2", host="127.0.0.1", port=plane.port,
            ca_certificates=tuple(load_certificates_pem(plane.serving_ca.cert_pem)),
            client_certificate=load_certificates_pem(credential.cert_pem)[0],
            client_key=load_pem_private_key(credential.key_pem, None),
        )
        tls = creds.tls_options(alpn=(b"h2", b"http/1.1"))
        pool = H2Pool(global_reactor, lambda: wrapClientTLS(tls, HostnameEndpoint(global_reactor, "127.0.0.1", plane.port)))
        self.addCleanup(pool.close)
        return pool, [(b"host", f"127.0.0.1:{plane.port}".encode())]

    async def _exchange(self, pool, host, method, path, body=None):
        receiver = Receiver()
        headers = [*host, (b"accept", b"application/json")]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        stream = await pool.request(method, path, headers, receiver, end_stream=body is None)
        if body is not None:
            stream.send_data(body)
            stream.end()
        for _ in range(600):
            if receiver.ended or receiver.failure:
                break
            await deferLater(global_reactor, 0.05)
        stream.consumed(len(receiver.body))
        self.assertIsNone(receiver.failure)
        return receiver

    async def test_get_and_404(self):
        pool, host = await self._pool()
        found = await self._exchange(pool, host, b"GET", b"/api/v1/namespaces/default")
        self.assertEqual(found.status, 200)
        self.assertEqual(json.loads(found.body)["metadata"]["name"], "default")
        missing = await self._exchange(pool, host, b"GET", b"/api/v1/namespaces/default/configmaps/no-such-h2-cm")
        self.assertEqual(missing.status, 404)
        self.assertEqual(json.loads(missing.body)["reason"], "NotFound")
        self.assertEqual(len(pool.connections), 1)

    async def test_300_watches_share_the_servers_stream_limit(self):
        pool, host = await self._pool()
        name = f"h2-watch-{secrets.token_hex(4)}"
        path = f"/api/v1/namespaces/default/configmaps?watch=1&fieldSelector=metadata.name%3D{name}".encode()
        receivers = [Receiver() for _ in range(300)]
        streams = [await pool.request(b"GET", path, host, r) for r in receivers]
        for _ in range(600):
            if all(r.status for r in receivers):
                break
            await deferLater(global_reactor, 0.05)
        self.assertEqual({r.status for r in receivers}, {200})
        limit = pool.connections[0].h2.remote_settings.max_concurrent_streams
        self.assertEqual(len(pool.connections), -(-300 // limit))
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).encode()
        created = await self._exchange(pool, host, b"POST", b"/api/v1/namespaces/default/configmaps", body)
        self.assertEqual(created.status, 201)
        for _ in range(600):
            if all(name.encode() in r.body for r in receivers):
                break
            await deferLater(global_reactor, 0.05)
        for receiver in receivers:
            event = json.loads(receiver.body.split(b"\n")[0])
            self.assertEqual((event["type"], event["object"]["metadata"]["name"]), ("ADDED", name))
            self.assertIsNone(receiver.failure)
        for stream in streams:
            stream.cancel()
        await self._exchange(pool, host, b"DELETE", f"/api/v1/namespaces/default/configmaps/{name}".encode())
