"""The agent's HTTP/2 front within ``teleport.connection_limits`` and
kube/h2_guard.py's budgets, on in-memory transports and a Clock: a
connection with no request open is closed after ``idle_timeout``, a header
block left unfinished after ``read_header_timeout`` ends the connection and
is audited, and floods of resets or control frames end the connection
(GOAWAY ENHANCE_YOUR_CALM) while other connections are served."""
from __future__ import annotations

from h2.errors import ErrorCodes
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, PriorityFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.config import ConnectionLimits
from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import MAX_UNPARSED_REASON, RoleCache
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.h2_guard import (CONTROL_BURST, MAX_SETTINGS, PREFACE, RESET_BURST, RESETS_PER_SECOND, Flood,
                                       FrameGuard)
from tests.support.kube import FakeRoles, credentials, role
from tests.support.kube_h2 import PODS, WATCH, FakePool, HTTP11OnlyAPIServer, Kubectl, json_response
from tests.support.pki import NOW, USER_CA, user_cert_pem

LIMITS = ConnectionLimits(read_header_timeout=10.0, idle_timeout=60.0)


def frames(*frames) -> bytes:
    return b"".join(frame.serialize() for frame in frames)


def request_block(kubectl: Kubectl, stream_id: int) -> bytes:
    """A request's header block as kubectl's HPACK encoder makes it (its state moves on)."""
    return kubectl.h2.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"), (b":path", PODS),
                                      (b":authority", b"proxy")])


def open_and_reset(kubectl: Kubectl) -> None:
    """A request opened and reset at once (not yet sent)."""
    stream = kubectl.h2.get_next_available_stream_id()
    kubectl.h2.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", PODS),
                                     (b":authority", b"proxy")], end_stream=True)
    kubectl.h2.reset_stream(stream, ErrorCodes.CANCEL)


class FrameGuardTests(SynchronousTestCase):
    def test_a_header_block_is_open_from_its_headers_frame_until_the_frame_ending_it_is_whole(self):
        guard = FrameGuard()
        guard.receive(PREFACE + SettingsFrame(0).serialize(), 0)
        self.assertFalse(guard.header_block_open)
        headers = HeadersFrame(1, data=b"abc").serialize()
        guard.receive(headers[:9], 0)
        self.assertTrue(guard.header_block_open)
        guard.receive(headers[9:], 0)
        self.assertTrue(guard.header_block_open)  # no END_HEADERS: CONTINUATION must follow
        last = ContinuationFrame(1, data=b"defg", flags=["END_HEADERS"]).serialize()
        guard.receive(last[:-1], 0)
        self.assertTrue(guard.header_block_open)
        guard.receive(last[-1:], 0)
        self.assertFalse(guard.header_block_open)
        whole = HeadersFrame(3, data=b"abc", flags=["END_HEADERS", "END_STREAM"]).serialize()
        guard.receive(whole[:10], 0)
        self.assertTrue(guard.header_block_open)
        guard.receive(whole[10:], 0)
        self.assertFalse(guard.header_block_open)

    def test_resets_past_the_burst_are_a_flood_until_the_bucket_refills(self):
        guard = FrameGuard(reset_burst=3, resets_per_second=2)
        guard.receive(PREFACE, 0)
        reset = RstStreamFrame(1, error_code=8).serialize()
        guard.receive(reset * 3, 0)
        self.assertRaises(Flood, guard.receive, reset, 0.1)
        guard = FrameGuard(reset_burst=3, resets_per_second=2)
        guard.receive(PREFACE + reset * 3, 0)
        guard.receive(reset, 0.5)  # one token back after half a second
        self.assertRaises(Flood, guard.receive, reset, 0.5)

    def test_control_frames_that_cost_work_are_counted_and_acks_and_window_updates_are_not(self):
        guard = FrameGuard(control_burst=4, control_per_second=0.001)
        guard.receive(PREFACE, 0)
        free = frames(SettingsFrame(0, flags=["ACK"]), PingFrame(0, flags=["ACK"]), WindowUpdateFrame(0, 1),
                      DataFrame(1, data=b"x"), DataFrame(1, flags=["END_STREAM"]))
        guard.receive(free * 10, 0)
        guard.receive(frames(SettingsFrame(0), PingFrame(0, opaque_data=b"12345678"), PriorityFrame(1),
                             DataFrame(1)), 0)
        with self.assertRaises(Flood) as e:
            guard.receive(b"\0\0\0\x42\0\0\0\0\0", 0)  # an unknown frame type, empty
        self.assertIn("PING", str(e.exception))

    def test_bytes_that_are_not_http2_are_left_to_h2(self):
        guard = FrameGuard(reset_burst=1)
        guard.receive(b"GET / HTTP/1.1\r\n" + RstStreamFrame(1).serialize() * 5, 0)
        self.assertTrue(guard.lost_sync)
        self.assertFalse(guard.header_block_open)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(["headers", "headers_end", "continuation", "continuation_end", "data",
                                     "ping", "window"]), max_size=20),
           st.lists(st.integers(min_value=1, max_value=50), max_size=30))
    def test_the_state_does_not_depend_on_how_the_bytes_are_split(self, kinds, cuts):
        made = {"headers": HeadersFrame(1, data=b"h" * 20), "headers_end": HeadersFrame(1, data=b"h",
                                                                                         flags=["END_HEADERS"]),
                "continuation": ContinuationFrame(1, data=b"c" * 7),
                "continuation_end": ContinuationFrame(1, data=b"", flags=["END_HEADERS"]),
                "data": DataFrame(1, data=b"d" * 30), "ping": PingFrame(0), "window": WindowUpdateFrame(0, 5)}
        data = PREFACE + b"".join(made[kind].serialize() for kind in kinds)
        whole = FrameGuard()
        whole.receive(data, 0)
        split, at = FrameGuard(), 0
        for cut in cuts:
            split.receive(data[at:at + cut], 0)
            at += cut
            self.assertLess(len(split._header), 9)
        split.receive(data[at:], 0)
        self.assertEqual((split.header_block_open, split.control.tokens, split.lost_sync),
                         (whole.header_block_open, whole.control.tokens, whole.lost_sync))
        expected_open = False
        for kind in kinds:
            if kind == "headers":
                expected_open = True
            elif kind in ("headers_end", "continuation_end"):
                expected_open = False
        self.assertEqual(whole.header_block_open, expected_open)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
    def test_any_bytes_keep_at_most_a_frame_header_and_raise_nothing_but_a_flood(self, data, step):
        guard = FrameGuard()
        for at in range(0, len(data), step):
            try:
                guard.receive(PREFACE + data[at:at + step] if at == 0 else data[at:at + step], 0)
            except Flood:
                return
            self.assertLess(len(guard._header), 9)


class HTTP2LimitsTests(SynchronousTestCase):
    def setUp(self):
        self.audit = []
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.acceptor = StreamAcceptor(
            self.clock, clusters={"c1": KubeCluster("c1", {"env": "dev"}, credentials(1))},
            user_cas=[USER_CA.certificate], roles=RoleCache(self.clock, FakeRoles(role()).fetch),
            emit=self.audit.append, limits=LIMITS)
        self.pool = FakePool()
        self.acceptor.connections.pool = lambda cluster: self.pool
        self.acceptor.connections.h2_pool = lambda cluster: HTTP11OnlyAPIServer()

    def kubectl(self) -> Kubectl:
        front = self.acceptor.accept_stream({"user_cert": user_cert_pem(), "kube_cluster": "c1",
                                              "client_addr": "192.0.2.1:5000", "alpn": "h2"})
        return Kubectl(front)

    def goaway(self, kubectl: Kubectl) -> GoAwayFrame:
        (goaway,) = [frame for frame in kubectl.raw_frames() if isinstance(frame, GoAwayFrame)]
        return goaway

    def test_a_connection_that_never_asks_is_closed_when_idle_and_pings_do_not_keep_it(self):
        kubectl = self.kubectl()
        for _ in range(5):
            self.clock.advance(11)
            kubectl.h2.ping(b"12345678")
            kubectl.pump()
        self.clock.advance(4)
        self.assertFalse(kubectl.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(kubectl.transport.disconnecting)
        self.assertEqual(self.goaway(kubectl).error_code, ErrorCodes.NO_ERROR)
        self.assertEqual(self.audit, [])  # no request was cut: not audited

    def test_the_idle_timer_waits_while_a_request_is_open_and_restarts_after_it(self):
        kubectl = self.kubectl()
        watch = kubectl.request(b"GET", WATCH)
        self.clock.advance(600)
        self.assertFalse(kubectl.transport.disconnecting)
        (api,) = self.pool.connections
        api.answer(json_response(b"{}"))
        kubectl.pump()
        self.assertEqual(kubectl.response(watch)[0], 200)
        self.clock.advance(59)
        self.assertFalse(kubectl.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(kubectl.transport.disconnecting)

    def test_a_header_block_never_finished_ends_the_connection_and_is_audited(self):
        kubectl = self.kubectl()
        watch = kubectl.request(b"GET", WATCH)  # an open request does not stop the head deadline
        stream_id = kubectl.h2.get_next_available_stream_id()
        block = request_block(kubectl, stream_id)
        started = self.clock.seconds()
        kubectl.front.dataReceived(HeadersFrame(stream_id, data=block[:3]).serialize())
        for byte in range(3, len(block)):  # progress does not extend the deadline
            self.clock.advance(0.1)
            kubectl.front.dataReceived(ContinuationFrame(stream_id, data=block[byte:byte + 1]).serialize())
        self.clock.advance(started + 9.9 - self.clock.seconds())
        self.assertFalse(kubectl.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(kubectl.transport.disconnecting)
        goaway = self.goaway(kubectl)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (ErrorCodes.PROTOCOL_ERROR, watch))
        self.assertIn(b"did not arrive within 10 s", goaway.additional_data)
        self.assertTrue(self.pool.connections[0].transport.disconnecting)  # the watch is cancelled
        event = self.audit[-1]
        self.assertEqual((event["response_code"], event["success"], event["request_path"], event["http_method"]),
                         (408, False, "", ""))
        self.assertEqual(event["reason"], "HTTP/2: the request head did not arrive within 10 s")
        self.assertEqual(event["addr_remote"], "192.0.2.1:5000")
        self.assertEqual(len(self.audit), 1)  # the watch had no answer yet: it was never audited

    def test_a_header_block_finished_in_time_is_served_and_nothing_is_left_timed_but_idle(self):
        kubectl = self.kubectl()
        stream_id = kubectl.h2.get_next_available_stream_id()
        kubectl.h2.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", PODS),
                                            (b":authority", b"proxy")], end_stream=True)
        data = kubectl.h2.data_to_send()
        kubectl.front.dataReceived(data[:12])
        self.clock.advance(9)
        kubectl.front.dataReceived(data[12:])
        kubectl.pump()
        self.assertEqual(len(self.pool.connections), 1)
        self.clock.advance(100)
        self.assertFalse(kubectl.transport.disconnecting)
        self.assertEqual(self.audit, [])

    def test_rapid_reset_ends_the_connection_and_other_connections_are_served(self):
        kubectl, other = self.kubectl(), self.kubectl()
        for _ in range(RESET_BURST):
            open_and_reset(kubectl)
        kubectl.pump()
        self.assertFalse(kubectl.transport.disconnecting)
        served = len(self.pool.connections)
        open_and_reset(kubectl)
        kubectl.front.dataReceived(kubectl.h2.data_to_send())
        self.assertTrue(kubectl.transport.disconnecting)
        self.assertEqual(self.goaway(kubectl).error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(all(api.transport.disconnecting for api in self.pool.connections[:served]))
        event = self.audit[-1]
        self.assertEqual((event["response_code"], event["success"]), (429, False))
        self.assertIn("rapid reset", event["reason"])
        self.assertLessEqual(len(event["reason"]), MAX_UNPARSED_REASON)
        get = other.request(b"GET", PODS)
        self.pool.connections[-1].answer(json_response(b"{}"))
        other.pump()
        self.assertEqual(other.response(get)[0], 200)

    def test_resets_at_the_steady_rate_are_served(self):
        kubectl = self.kubectl()
        for _ in range(3 * RESET_BURST):
            self.clock.advance(1 / RESETS_PER_SECOND)
            open_and_reset(kubectl)
            kubectl.pump()
        self.assertFalse(kubectl.transport.disconnecting)

    def test_ping_and_settings_floods_end_the_connection(self):
        for flood in (lambda h2: h2.ping(b"12345678"), lambda h2: h2.update_settings({4: 70000})):
            kubectl = self.kubectl()
            for _ in range(CONTROL_BURST + 1):
                flood(kubectl.h2)
            kubectl.front.dataReceived(kubectl.h2.data_to_send())
            self.assertTrue(kubectl.transport.disconnecting)
            self.assertEqual(self.goaway(kubectl).error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_a_settings_frame_of_many_parameters_ends_the_connection(self):
        kubectl = self.kubectl()
        def settings_frame(count: int) -> bytes:  # INITIAL_WINDOW_SIZE 65536, ``count`` times
            return (6 * count).to_bytes(3, "big") + b"\4\0\0\0\0\0" + b"\0\4\0\1\0\0" * count
        kubectl.front.dataReceived(settings_frame(MAX_SETTINGS))
        self.assertFalse(kubectl.transport.disconnecting)
        kubectl.front.dataReceived(settings_frame(MAX_SETTINGS + 1))
        self.assertTrue(kubectl.transport.disconnecting)
        self.assertEqual(self.goaway(kubectl).error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("SETTINGS frame of more than 64", self.audit[-1]["reason"])

    def test_a_continuation_flood_is_refused_by_h2(self):
        kubectl = self.kubectl()
        kubectl.front.dataReceived(HeadersFrame(1, data=b"").serialize()
                                   + ContinuationFrame(1, data=b"").serialize() * 100)
        self.assertTrue(kubectl.transport.disconnecting)
        self.assertEqual(self.audit[-1]["response_code"], 400)

    def test_flow_control_abuse_is_refused_by_h2(self):
        kubectl = self.kubectl()
        kubectl.front.dataReceived(WindowUpdateFrame(0, window_increment=2 ** 31 - 1).serialize())
        self.assertTrue(kubectl.transport.disconnecting)
        self.assertEqual(self.goaway(kubectl).error_code, ErrorCodes.FLOW_CONTROL_ERROR)
        kubectl = self.kubectl()
        stream = kubectl.h2.get_next_available_stream_id()
        kubectl.h2.send_headers(stream, [(b":method", b"PUT"), (b":scheme", b"https"), (b":path", PODS + b"/p"),
                                         (b":authority", b"proxy")])
        kubectl.pump()
        self.pool.connections[0].transport.producer.pauseProducing()  # acknowledgements are held
        # More body than the window allows (65535): h2 ends the connection.
        for _ in range(5):
            kubectl.front.dataReceived(DataFrame(stream, data=b"x" * 16384).serialize())
        self.assertTrue(kubectl.transport.disconnecting)

    def test_a_closed_connection_leaves_no_timer(self):
        kubectl = self.kubectl()
        kubectl.front.dataReceived(HeadersFrame(1, data=b"").serialize())
        kubectl.front.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
