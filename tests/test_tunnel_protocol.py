"""Tests for TunnelProtocol over in-memory and real loopback connections."""

import hashlib
import os

import attrs

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from teleport_py.tunnel import StreamRejected, TunnelClosed, TunnelProtocol, frames, mux
from teleport_py.tunnel.frames import FrameDecoder
from teleport_py.tunnel.protocol import COALESCE_FROM

WINDOW = 64 * 1024


class Recorder(Protocol):
    def __init__(self):
        self.data = bytearray()
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    read_closed = False

    def readConnectionLost(self):
        self.read_closed = True

    def writeConnectionLost(self):
        pass


@implementer(IPushProducer)
class Producer:
    paused = stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


class Tunnel:
    """An agent and a proxy TunnelProtocol joined by an iosim pump."""

    def __init__(self, agent_accepts=None, proxy_accepts=None, **options):
        options = {"initial_window": WINDOW, "max_frame_payload": 4096, **options}
        self.clock = Clock()
        self.accepted = []

        def accept(kind, metadata):
            protocol = HalfCloser()
            self.accepted.append((kind, metadata, protocol))
            return protocol

        self.agent = TunnelProtocol(
            self.clock, initiator=True, accept_stream=agent_accepts or accept, **options
        )
        self.proxy = TunnelProtocol(
            self.clock, initiator=False, accept_stream=proxy_accepts or accept, **options
        )
        self.pump = iosim.connect(
            self.proxy,
            iosim.makeFakeServer(self.proxy),
            self.agent,
            iosim.makeFakeClient(self.agent),
            clock=self.clock,
        )

    def open(self, opener, protocol=None, kind="kube", metadata=None):
        protocol = protocol or Recorder()
        opened = opener.open_stream(kind, metadata or {"cluster": "c1"}, protocol)
        self.pump.flush()
        return protocol, opened


class StreamLifecycleTests(SynchronousTestCase):
    def test_open_accept_and_data_both_ways(self):
        tunnel = Tunnel()
        client, opened = tunnel.open(tunnel.proxy, metadata={"user": "alice"})
        self.assertIs(self.successResultOf(opened), client)
        [(kind, metadata, server)] = tunnel.accepted
        self.assertEqual((kind, metadata), ("kube", {"user": "alice"}))
        peer = server.transport.getPeer()
        self.assertEqual((peer.kind, peer.metadata), ("kube", {"user": "alice"}))
        big = os.urandom(1024 * 1024)
        client.transport.write(big)
        server.transport.writeSequence([b"hello ", b"proxy"])
        tunnel.pump.flush()
        self.assertEqual(bytes(server.data), big)
        self.assertEqual(bytes(client.data), b"hello proxy")
        self.assertEqual(tunnel.agent.stream_count, 1)

    def test_reject_with_reason(self):
        def refuse(kind, metadata):
            raise StreamRejected("cluster not served here")

        tunnel = Tunnel(agent_accepts=refuse)
        client, opened = tunnel.open(tunnel.proxy)
        failure = self.failureResultOf(opened, StreamRejected)
        self.assertEqual(str(failure.value), "cluster not served here")
        self.assertIsNone(client.transport)
        self.assertEqual(tunnel.proxy.stream_count, 0)

    def test_accept_callback_crash_fails_closed(self):
        def broken(kind, metadata):
            raise KeyError("bug")

        tunnel = Tunnel(agent_accepts=broken)
        _, opened = tunnel.open(tunnel.proxy)
        self.failureResultOf(opened, StreamRejected)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_agent_opens_auth_stream(self):
        tunnel = Tunnel()
        client, opened = tunnel.open(tunnel.agent, kind="auth", metadata={})
        self.successResultOf(opened)
        self.assertEqual(tunnel.accepted[0][0], "auth")
        self.assertEqual(client.transport.getPeer().stream_id % 2, 1)

    def test_half_close(self):
        """FIN reaches a half-closeable protocol, which can still answer."""
        tunnel = Tunnel()
        client, _ = tunnel.open(tunnel.proxy)
        server = tunnel.accepted[0][2]
        client.transport.write(b"request")
        client.transport.loseWriteConnection()
        tunnel.pump.flush()
        self.assertTrue(server.read_closed)
        self.assertIsNone(server.lost)
        server.transport.write(b"response")
        server.transport.loseConnection()
        tunnel.pump.flush()
        self.assertEqual(bytes(client.data), b"response")
        client.lost.trap(ConnectionDone)
        server.lost.trap(ConnectionDone)
        self.assertEqual((tunnel.agent.stream_count, tunnel.proxy.stream_count), (0, 0))

    def test_fin_closes_a_protocol_that_cannot_half_close(self):
        tunnel = Tunnel(agent_accepts=lambda kind, metadata: recorder)
        recorder = Recorder()
        client, _ = tunnel.open(tunnel.proxy)
        client.transport.loseConnection()
        tunnel.pump.flush()
        recorder.lost.trap(ConnectionDone)
        client.lost.trap(ConnectionDone)

    def test_reset(self):
        tunnel = Tunnel()
        client, _ = tunnel.open(tunnel.proxy)
        server = tunnel.accepted[0][2]
        producer = Producer()
        server.transport.registerProducer(producer, True)
        client.transport.abortConnection()
        client.lost.trap(ConnectionAborted)
        tunnel.pump.flush()
        server.lost.trap(ConnectionLost)
        self.assertTrue(producer.stopped)
        self.assertEqual(tunnel.agent.stream_count, 0)

    def test_cancel_pending_open(self):
        tunnel = Tunnel()
        opened = tunnel.proxy.open_stream("kube", {}, Recorder())
        opened.cancel()
        self.failureResultOf(opened, defer.CancelledError)
        tunnel.pump.flush()
        self.assertEqual(tunnel.proxy.stream_count, 0)
        self.assertEqual(tunnel.agent.stream_count, 0)


class FlowControlTests(SynchronousTestCase):
    def test_slow_reader_stalls_only_its_stream(self):
        tunnel = Tunnel()
        slow_client, _ = tunnel.open(tunnel.proxy)
        fast_client, _ = tunnel.open(tunnel.proxy)
        slow_server, fast_server = (accepted[2] for accepted in tunnel.accepted)
        slow_server.transport.pauseProducing()
        slow_producer, fast_producer = Producer(), Producer()
        slow_client.transport.registerProducer(slow_producer, True)
        fast_client.transport.registerProducer(fast_producer, True)
        payload = os.urandom(1024 * 1024)
        slow_client.transport.write(payload)
        fast_client.transport.write(payload)
        self.assertTrue(slow_producer.paused)
        for _ in range(100):
            tunnel.pump.flush()
        self.assertEqual(bytes(fast_server.data), payload)
        self.assertFalse(fast_producer.paused)
        self.assertEqual(slow_server.data, b"")
        self.assertTrue(slow_producer.paused)
        held = sum(map(len, slow_server.transport._inbox))
        self.assertEqual(held, WINDOW)
        slow_server.transport.resumeProducing()
        tunnel.pump.flush()
        self.assertEqual(bytes(slow_server.data), payload)
        self.assertFalse(slow_producer.paused)

    def test_connection_back_pressure_pauses_every_stream(self):
        tunnel = Tunnel()
        producers = []
        for _ in range(2):
            client, _ = tunnel.open(tunnel.agent)
            producers.append(Producer())
            client.transport.registerProducer(producers[-1], True)
        tunnel.agent.pauseProducing()
        self.assertEqual([p.paused for p in producers], [True, True])
        tunnel.agent.resumeProducing()
        self.assertEqual([p.paused for p in producers], [False, False])

    def test_a_producer_registered_on_a_paused_tunnel_is_paused_by_its_first_write(self):
        tunnel = Tunnel()
        client, _ = tunnel.open(tunnel.agent)
        tunnel.agent.pauseProducing()
        producer = NotYetStarted()
        client.transport.registerProducer(producer, True)  # as twisted.web does before startProducing
        self.assertFalse(producer.paused)
        producer.started = True
        client.transport.write(b"body")
        self.assertTrue(producer.paused)
        tunnel.agent.resumeProducing()
        self.assertFalse(producer.paused)


class WriteBatchingTests(SynchronousTestCase):
    """Full-record writes wait for the end of the reactor turn and leave as
    one DATA frame; small ones leave at once; order, FIN, abort and
    back-pressure are as if every write had gone at once."""

    def setUp(self):
        self.clock = Clock()
        self.accepted = []
        self.tunnel = TunnelProtocol(
            self.clock, initiator=False, accept_stream=lambda kind, metadata: self.accepted.append(HalfCloser())
            or self.accepted[-1],
        )
        self.wire = StringTransport()
        self.tunnel.makeConnection(self.wire)
        self.peer = mux.Multiplexer(initiator=True, initial_window=WINDOW, max_frame_payload=WINDOW)
        self.stream_id = self.peer.open_stream("kube", {})
        self.tunnel.dataReceived(self.peer.data_to_send())
        [self.stream] = self.accepted
        self.sent()

    def sent(self):
        out = FrameDecoder(2**24).feed(self.wire.value())
        self.wire.clear()
        return [f for f in out if not isinstance(f, (frames.Hello, frames.Accept))]

    def test_full_records_of_one_turn_leave_as_one_frame(self):
        for _ in range(3):
            self.stream.transport.write(b"r" * COALESCE_FROM)
        self.assertEqual(self.sent(), [])
        self.clock.advance(0)
        [sent] = self.sent()
        self.assertEqual(sent, frames.Data(self.stream_id, b"r" * 3 * COALESCE_FROM))

    def test_small_write_leaves_at_once(self):
        self.stream.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.sent(), [frames.Data(self.stream_id, b"GET / HTTP/1.1\r\n\r\n")])

    def test_small_write_after_a_held_one_keeps_its_place(self):
        self.stream.transport.write(b"r" * COALESCE_FROM)
        self.stream.transport.write(b"tail")
        self.assertEqual(self.sent(), [])
        self.clock.advance(0)
        self.assertEqual(self.sent(), [frames.Data(self.stream_id, b"r" * COALESCE_FROM + b"tail")])

    def test_fin_follows_held_data(self):
        self.stream.transport.write(b"r" * COALESCE_FROM)
        self.stream.transport.loseWriteConnection()
        sent = self.sent()
        self.assertEqual(b"".join(f.data for f in sent), b"r" * COALESCE_FROM)
        self.assertEqual([f.fin for f in sent], [False] * (len(sent) - 1) + [True])

    def test_abort_drops_held_data(self):
        self.stream.transport.write(b"r" * COALESCE_FROM)
        self.stream.transport.abortConnection()
        self.clock.advance(0)
        self.assertEqual(self.sent(), [frames.Reset(self.stream_id, "aborted")])

    def test_producer_pauses_when_held_data_outgrows_the_window(self):
        producer = Producer()
        self.stream.transport.registerProducer(producer, True)
        for _ in range(WINDOW // COALESCE_FROM):
            self.stream.transport.write(b"r" * COALESCE_FROM)
        self.assertFalse(producer.paused)
        self.stream.transport.write(b"r" * COALESCE_FROM)
        self.assertTrue(producer.paused)
        self.clock.advance(0)
        self.assertEqual(sum(len(f.data) for f in self.sent()), WINDOW)
        self.assertTrue(producer.paused)
        self.tunnel.dataReceived(frames.encode(frames.WindowUpdate(self.stream_id, WINDOW)))
        self.assertFalse(producer.paused)
        self.assertEqual(self.sent(), [frames.Data(self.stream_id, b"r" * COALESCE_FROM)])


class NotYetStarted(Producer):
    """Like twisted.web's FileBodyProducer: cannot be paused before it starts."""

    started = False

    def pauseProducing(self):
        if not self.started:
            raise AttributeError("no task to pause yet")
        super().pauseProducing()


class KeepaliveTests(SynchronousTestCase):
    def test_pings_keep_a_quiet_tunnel_alive(self):
        tunnel = Tunnel(keepalive_interval=15, dead_peer_timeout=45)
        client, _ = tunnel.open(tunnel.proxy)
        for _ in range(30):
            tunnel.clock.advance(10)
            tunnel.pump.flush()
        self.assertIsNone(client.lost)
        self.assertFalse(tunnel.proxy.closed.called)

    def test_silent_peer_is_dropped(self):
        tunnel = Tunnel(keepalive_interval=15, dead_peer_timeout=45)
        client, _ = tunnel.open(tunnel.proxy)
        pending = tunnel.proxy.open_stream("kube", {}, Recorder())
        tunnel.clock.advance(15)
        self.assertIn(b"\x07\x00", tunnel.pump.serverIO.getOutBuffer())
        tunnel.clock.advance(30)
        client.lost.trap(ConnectionLost)
        self.failureResultOf(pending, TunnelClosed)
        self.assertTrue(tunnel.pump.serverIO.disconnecting)
        tunnel.pump.flush()
        self.assertIsNone(self.successResultOf(tunnel.proxy.closed))


class ShutdownTests(SynchronousTestCase):
    def test_go_away_drains_then_closes(self):
        tunnel = Tunnel()
        client, _ = tunnel.open(tunnel.proxy)
        drained = tunnel.proxy.go_away()
        tunnel.pump.flush()
        _, refused = tunnel.open(tunnel.agent)
        self.failureResultOf(refused, TunnelClosed)
        self.failureResultOf(tunnel.proxy.open_stream("kube", {}, Recorder()), TunnelClosed)
        client.transport.write(b"still flowing")
        tunnel.pump.flush()
        self.assertEqual(bytes(tunnel.accepted[0][2].data), b"still flowing")
        self.assertNoResult(drained)
        client.transport.loseConnection()
        tunnel.accepted[0][2].transport.loseConnection()
        tunnel.pump.flush()
        self.successResultOf(drained)
        self.successResultOf(tunnel.agent.closed)

    def test_peer_vanishes_mid_stream(self):
        tunnel = Tunnel()
        client, _ = tunnel.open(tunnel.proxy)
        pending = tunnel.proxy.open_stream("kube", {}, Recorder())
        tunnel.proxy.connectionLost(Failure(ConnectionLost("cable cut")))
        client.lost.trap(ConnectionLost)
        self.failureResultOf(pending, TunnelClosed)
        self.successResultOf(tunnel.proxy.closed)
        self.failureResultOf(tunnel.proxy.open_stream("kube", {}, Recorder()), TunnelClosed)

    def test_garbage_closes_only_that_connection(self):
        tunnel = Tunnel()
        client, _ = tunnel.open(tunnel.proxy)
        tunnel.proxy.dataReceived(b"\xffnot a frame at all")
        client.lost.trap(ConnectionLost)
        self.assertTrue(tunnel.pump.serverIO.disconnecting)
        tunnel.pump.flush()
        self.successResultOf(tunnel.proxy.closed)
        self.successResultOf(tunnel.agent.closed)


@implementer(IHalfCloseableProtocol)
class Sink(Protocol):
    """Echoes a sha256 of everything it received, then closes."""

    def connectionMade(self):
        self.digest = hashlib.sha256()

    def dataReceived(self, data):
        self.digest.update(data)

    def readConnectionLost(self):
        self.transport.write(self.digest.hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class Sender(Protocol):
    def __init__(self, payload):
        self.payload = payload
        self.answer = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        for start in range(0, len(self.payload), 65536):
            self.transport.write(self.payload[start : start + 65536])
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.answer += data

    def connectionLost(self, reason):
        self.done.callback(self.answer)


@attrs.frozen
class StreamEndpoints:
    """Agent.usingEndpointFactory's factory: every URI goes over a tunnel stream."""

    tunnel: TunnelProtocol

    def endpointForURI(self, uri):
        return self.tunnel.endpoint("kube", {})


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        kind = request.transport.getPeer().kind
        return b"hello over " + kind.encode()


class LoopbackTests(TestCase):
    """Real TCP on 127.0.0.1 with the global reactor."""

    timeout = 120

    @defer.inlineCallbacks
    def tunnel(self, accept_stream):
        from twisted.internet import reactor

        agent_side = defer.Deferred()
        server = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(
                lambda: TunnelProtocol(reactor, initiator=True, accept_stream=accept_stream)
            )
        )
        self.addCleanup(server.stopListening)
        proxy = yield TCP4ClientEndpoint(reactor, "127.0.0.1", server.getHost().port).connect(
            Factory.forProtocol(
                lambda: TunnelProtocol(reactor, initiator=False, accept_stream=agent_side.callback)
            )
        )

        def close():
            proxy.transport.loseConnection()
            return proxy.closed

        self.addCleanup(close)
        return proxy

    @defer.inlineCallbacks
    def test_fifty_megabytes_over_concurrent_streams(self):
        proxy = yield self.tunnel(lambda kind, metadata: Sink())
        payloads = [os.urandom(10 * 1024 * 1024) for _ in range(5)]
        senders = [Sender(payload) for payload in payloads]
        for sender in senders:
            yield proxy.open_stream("kube", {}, sender)
        answers = yield defer.gatherResults([s.done for s in senders])
        self.assertEqual(
            answers, [hashlib.sha256(p).hexdigest().encode() for p in payloads]
        )

    @defer.inlineCallbacks
    def test_http_agent_over_endpoint(self):
        from twisted.internet import reactor

        site = Site(Hello(), timeout=None)
        proxy = yield self.tunnel(lambda kind, metadata: site.buildProtocol(None))
        agent = Agent.usingEndpointFactory(reactor, StreamEndpoints(proxy))
        response = yield agent.request(b"GET", b"http://cluster/version")
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b"hello over kube"))
