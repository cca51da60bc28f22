"""Tests for the sans-IO tunnel Multiplexer."""

import attrs
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.tunnel import frames, mux
from teleport_py.tunnel.frames import TunnelProtocolError
from teleport_py.tunnel.mux import Multiplexer, TunnelClosed

WINDOW = 1000
PAYLOAD = 100


def pair(**options):
    """An agent (initiator) and proxy Multiplexer that have exchanged HELLO."""
    options = {"initial_window": WINDOW, "max_frame_payload": PAYLOAD, **options}
    agent = Multiplexer(initiator=True, **options)
    proxy = Multiplexer(initiator=False, **options)
    exchange(agent, proxy)
    assert agent.next_events() == proxy.next_events() == [mux.HelloReceived(1)]
    return agent, proxy


def exchange(a, b):
    """Deliver bytes both ways until both are quiet."""
    while True:
        a_out, b_out = a.data_to_send(), b.data_to_send()
        if not (a_out or b_out):
            return
        b.receive_data(a_out)
        a.receive_data(b_out)


def sent_frames(m):
    return FrameReader().feed(m.data_to_send())


class FrameReader(frames.FrameDecoder):
    def __init__(self):
        super().__init__(2**24)


def open_accepted(opener, acceptor, kind="kube", metadata=None):
    stream_id = opener.open_stream(kind, metadata or {})
    exchange(opener, acceptor)
    [opened] = acceptor.next_events()
    acceptor.accept_stream(opened.stream_id)
    exchange(opener, acceptor)
    assert opener.next_events() == [mux.StreamAccepted(stream_id)]
    return stream_id


def received(m, stream_id):
    events = m.next_events()
    return b"".join(e.data for e in events if isinstance(e, mux.DataReceived))


class HandshakeTests(SynchronousTestCase):
    def test_hello_first(self):
        m = Multiplexer(initiator=True)
        self.assertEqual(
            sent_frames(m), [frames.Hello(1, 1, 1024 * 1024, 256 * 1024)]
        )

    def test_frame_before_hello_is_a_protocol_error(self):
        m = Multiplexer(initiator=True)
        self.assertRaises(
            TunnelProtocolError, m.receive_data, frames.encode(frames.Ping(b"12345678"))
        )

    def test_no_common_version(self):
        m = Multiplexer(initiator=True)
        self.assertRaises(
            TunnelProtocolError,
            m.receive_data,
            frames.encode(frames.Hello(2, 3, 100, 100)),
        )

    def test_newer_peer_negotiates_down(self):
        m = Multiplexer(initiator=True)
        m.receive_data(frames.encode(frames.Hello(1, 7, 100, 100)))
        self.assertEqual(m.next_events(), [mux.HelloReceived(1)])

    def test_duplicate_hello(self):
        agent, _ = pair()
        self.assertRaises(
            TunnelProtocolError,
            agent.receive_data,
            frames.encode(frames.Hello(1, 1, 100, 100)),
        )


class StreamTests(SynchronousTestCase):
    def test_open_accept_with_metadata(self):
        agent, proxy = pair()
        stream_id = proxy.open_stream("kube", {"user": "alice", "n": [1]})
        self.assertEqual(stream_id % 2, 0)
        exchange(agent, proxy)
        self.assertEqual(
            agent.next_events(),
            [mux.StreamOpened(stream_id, "kube", {"user": "alice", "n": [1]})],
        )
        agent.accept_stream(stream_id)
        exchange(agent, proxy)
        self.assertEqual(proxy.next_events(), [mux.StreamAccepted(stream_id)])
        self.assertEqual(agent.open_stream("auth", {}), 1)
        self.assertEqual(agent.open_stream("auth", {}), 3)

    def test_reject(self):
        agent, proxy = pair()
        stream_id = agent.open_stream("auth", {})
        exchange(agent, proxy)
        proxy.next_events()
        proxy.reject_stream(stream_id, "no auth here")
        exchange(agent, proxy)
        self.assertEqual(agent.next_events(), [mux.OpenRejected(stream_id, "no auth here")])
        self.assertEqual(agent.stream_count, 0)

    def test_metadata_must_be_json_object_and_small(self):
        agent, _ = pair()
        self.assertRaises(ValueError, agent.open_stream, "kube", ["list"])
        self.assertRaises(ValueError, agent.open_stream, "kube", {"x": "y" * 70000})

    def test_bad_metadata_from_peer_rejects_only_that_stream(self):
        agent, proxy = pair()
        agent.receive_data(frames.encode(frames.Open(2, "kube", b"[1]")))
        self.assertEqual(agent.next_events(), [])
        self.assertEqual(
            sent_frames(agent), [frames.Reject(2, "metadata is not a JSON object")]
        )

    def test_data_both_ways_split_by_max_payload(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        proxy.send_data(stream_id, b"x" * 250)
        data_frames = sent_frames(proxy)
        self.assertEqual([len(f.data) for f in data_frames], [100, 100, 50])
        agent.receive_data(b"".join(map(frames.encode, data_frames)))
        self.assertEqual(received(agent, stream_id), b"x" * 250)
        agent.send_data(stream_id, b"reply")
        exchange(agent, proxy)
        self.assertEqual(received(proxy, stream_id), b"reply")

    def test_queued_bytes_do_not_change_with_the_callers_buffer(self):
        """Frames refer to immutable bytes without copying; anything mutable is copied."""
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        mutable = bytearray(b"a" * 250)
        proxy.send_data(stream_id, mutable)
        proxy.send_data(stream_id, memoryview(mutable)[:10])
        mutable[:] = b"b" * 250
        data_frames = sent_frames(proxy)
        self.assertEqual(b"".join(f.data for f in data_frames), b"a" * 260)

    def test_fin_rides_on_the_last_frame_of_held_back_data(self):
        agent, proxy = pair(initial_window=150)
        stream_id = open_accepted(proxy, agent)
        proxy.send_data(stream_id, b"x" * 250)
        proxy.end_stream(stream_id)
        self.assertEqual([(len(f.data), f.fin) for f in sent_frames(proxy)], [(100, False), (50, False)])
        agent.acknowledge(stream_id, 150)
        proxy.receive_data(agent.data_to_send())
        self.assertEqual([(len(f.data), f.fin) for f in sent_frames(proxy)], [(100, True)])

    def test_peer_stream_with_our_parity_is_protocol_error(self):
        agent, _ = pair()
        self.assertRaises(
            TunnelProtocolError,
            agent.receive_data,
            frames.encode(frames.Open(1, "kube", b"{}")),
        )

    def test_reused_stream_id_is_protocol_error(self):
        agent, _ = pair()
        agent.receive_data(frames.encode(frames.Open(4, "kube", b"{}")))
        self.assertRaises(
            TunnelProtocolError,
            agent.receive_data,
            frames.encode(frames.Open(2, "kube", b"{}")),
        )

    def test_data_on_never_opened_stream_is_protocol_error(self):
        agent, _ = pair()
        self.assertRaises(
            TunnelProtocolError,
            agent.receive_data,
            frames.encode(frames.Data(8, b"x")),
        )

    def test_data_on_finished_stream_is_ignored(self):
        """Frames in flight when we reset a stream are not an error."""
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        agent.reset_stream(stream_id, "bye")
        agent.data_to_send()
        agent.receive_data(frames.encode(frames.Data(stream_id, b"late")))
        self.assertEqual(agent.next_events(), [])

    def test_half_close_then_close(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        proxy.send_data(stream_id, b"request")
        proxy.end_stream(stream_id)
        proxy.send_data(stream_id, b"after FIN is dropped")
        exchange(agent, proxy)
        self.assertEqual(
            agent.next_events(),
            [mux.DataReceived(stream_id, b"request"), mux.StreamEnded(stream_id)],
        )
        agent.send_data(stream_id, b"response")
        agent.end_stream(stream_id)
        self.assertEqual(agent.next_events()[-1], mux.StreamClosed(stream_id))
        exchange(agent, proxy)
        self.assertEqual(
            proxy.next_events(),
            [
                mux.DataReceived(stream_id, b"response"),
                mux.StreamEnded(stream_id),
                mux.StreamClosed(stream_id),
            ],
        )
        self.assertEqual((agent.stream_count, proxy.stream_count), (0, 0))

    def test_reset(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        proxy.reset_stream(stream_id, "user went away")
        exchange(agent, proxy)
        self.assertEqual(agent.next_events(), [mux.StreamReset(stream_id, "user went away")])
        self.assertEqual(agent.stream_count, 0)


class FlowControlTests(SynchronousTestCase):
    def test_sender_never_exceeds_window(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        proxy.send_data(stream_id, b"y" * 5000)
        self.assertEqual(sum(len(f.data) for f in sent_frames(proxy)), WINDOW)
        self.assertEqual(proxy.buffered(stream_id), 4000)

    def test_window_returns_when_consumed(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        proxy.send_data(stream_id, b"y" * 5000)
        total = b""
        for _ in range(20):
            exchange(agent, proxy)
            chunk = received(agent, stream_id)
            total += chunk
            agent.acknowledge(stream_id, len(chunk))
        self.assertEqual(total, b"y" * 5000)
        self.assertIn(mux.SendBufferDrained(stream_id), proxy.next_events())

    def test_unconsumed_stream_stalls_alone(self):
        agent, proxy = pair()
        slow = open_accepted(proxy, agent)
        fast = open_accepted(proxy, agent)
        proxy.send_data(slow, b"s" * 3000)
        proxy.send_data(fast, b"f" * 3000)
        fast_total = 0
        for _ in range(20):
            exchange(agent, proxy)
            for event in agent.next_events():
                if event.stream_id == fast:
                    fast_total += len(event.data)
                    agent.acknowledge(fast, len(event.data))
        self.assertEqual(fast_total, 3000)
        self.assertEqual(proxy.buffered(slow), 3000 - WINDOW)

    def test_data_beyond_window_resets_only_that_stream(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        other = open_accepted(proxy, agent)
        agent.receive_data(
            b"".join(frames.encode(frames.Data(stream_id, b"z" * PAYLOAD)) for _ in range(11))
        )
        events = agent.next_events()
        self.assertEqual(events[-1], mux.StreamReset(stream_id, "flow-control window exceeded"))
        self.assertEqual(sent_frames(agent), [frames.Reset(stream_id, "flow-control window exceeded")])
        self.assertEqual(agent.stream_count, 1)
        proxy.send_data(other, b"still fine")
        exchange(agent, proxy)
        self.assertEqual(received(agent, other), b"still fine")

    def test_window_update_overflow_resets_stream(self):
        agent, proxy = pair()
        stream_id = open_accepted(proxy, agent)
        proxy.receive_data(frames.encode(frames.WindowUpdate(stream_id, frames.MAX_WINDOW)))
        self.assertEqual(proxy.next_events(), [mux.StreamReset(stream_id, "window overflow")])

    @settings(max_examples=50)
    @given(
        st.lists(st.tuples(st.integers(0, 2), st.integers(1, 700)), max_size=40),
        st.lists(st.booleans(), min_size=3, max_size=3),
    )
    def test_random_writes_arrive_in_order_within_window(self, writes, consuming):
        """Whatever is written arrives intact once read; unread streams stay bounded."""
        agent, proxy = pair()
        streams = [open_accepted(proxy, agent) for _ in range(3)]
        expected = {s: b"" for s in streams}
        got = {s: b"" for s in streams}
        unread = {s: 0 for s in streams}

        def deliver():
            exchange(agent, proxy)
            events = agent.next_events()
            for event in events:
                position = streams.index(event.stream_id)
                got[event.stream_id] += event.data
                if consuming[position]:
                    agent.acknowledge(event.stream_id, len(event.data))
                else:
                    unread[event.stream_id] += len(event.data)
            return events

        for index, size in writes:
            data = bytes([index]) * size
            proxy.send_data(streams[index], data)
            expected[streams[index]] += data
            deliver()
        while deliver():
            pass
        for position, stream_id in enumerate(streams):
            self.assertLessEqual(unread[stream_id], WINDOW)
            if consuming[position]:
                self.assertEqual(got[stream_id], expected[stream_id])
            else:
                self.assertEqual(got[stream_id], expected[stream_id][: len(got[stream_id])])


class ControlTests(SynchronousTestCase):
    def test_ping_is_answered(self):
        agent, proxy = pair()
        agent.ping()
        exchange(agent, proxy)
        [ack] = agent.next_events()
        self.assertIsInstance(ack, mux.PingAcknowledged)

    def test_go_away_refuses_new_streams_both_ways(self):
        agent, proxy = pair()
        open_stream = open_accepted(proxy, agent)
        in_flight = agent.open_stream("auth", {})
        proxy.go_away("restart")
        exchange(agent, proxy)
        self.assertEqual(
            agent.next_events(),
            [mux.GoAwayReceived("restart"), mux.OpenRejected(in_flight, "tunnel is going away")],
        )
        self.assertRaises(TunnelClosed, agent.open_stream, "auth", {})
        self.assertRaises(TunnelClosed, proxy.open_stream, "kube", {})
        proxy.send_data(open_stream, b"existing streams still work")
        exchange(agent, proxy)
        self.assertEqual(received(agent, open_stream), b"existing streams still work")

    @given(st.binary(max_size=500))
    def test_random_bytes_after_hello_raise_only_protocol_error(self, garbage):
        agent, _ = pair()
        try:
            agent.receive_data(garbage)
        except TunnelProtocolError:
            pass

    @given(st.lists(st.sampled_from(range(9)), max_size=30), st.lists(st.integers(1, 6), max_size=30))
    def test_random_well_formed_frames_raise_only_protocol_error(self, types, ids):
        """Valid frames in nonsensical order never crash the state machine."""
        agent, _ = pair()
        samples = [
            frames.Hello(1, 1, 10, 10),
            frames.Open(0, "kube", b"{}"),
            frames.Accept(0),
            frames.Reject(0, "no"),
            frames.Data(0, b"abc", True),
            frames.WindowUpdate(0, 5),
            frames.Reset(0, "x"),
            frames.Ping(b"12345678"),
            frames.GoAway("bye"),
        ]
        try:
            for frame_type, stream_id in zip(types, ids):
                frame = samples[frame_type]
                if hasattr(frame, "stream_id"):
                    frame = attrs.evolve(frame, stream_id=stream_id)
                agent.receive_data(frames.encode(frame))
                agent.next_events()
        except TunnelProtocolError:
            pass
