"""kube.connection_watch: Teleport's session limits, the timer that enforces
them and the stream wrapper the agent's acceptor puts on every kube stream,
on a Clock with in-memory transports."""
from datetime import timedelta

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.acceptor import StreamAcceptor
from teleport_py.kube.authorize import RoleCache
from teleport_py.kube.connection_watch import (
    CERT_EXPIRED,
    CLOSE_GRACE,
    IDLE,
    ClusterDefaults,
    ClusterDefaultsCache,
    ConnectionWatch,
    SessionLimits,
    WatchedStream,
    session_limits,
)
from teleport_py.kube.context import KubeCluster
from teleport_py.kube.http1 import KubeConnection
from teleport_py.resources.role import Role, RoleOptions
from tests.test_kube_forwarder import NOW, USER_CA, FakeRoles, credentials, user_cert_pem
from tests.test_kube_forwarder import role as kube_role


def role(idle: float = 0.0, disconnect: bool = False) -> Role:
    return Role("r", options=RoleOptions(client_idle_timeout=idle, disconnect_expired_cert=disconnect))


class SessionLimitsTests(SynchronousTestCase):
    def test_roles_only_tighten_the_cluster_defaults(self):
        lenient = ClusterDefaults(client_idle_timeout=0.0, disconnect_expired_cert=False)
        self.assertEqual(session_limits([role(), role()], lenient), SessionLimits(False, 0.0))
        self.assertEqual(session_limits([role(), role(disconnect=True)], lenient), SessionLimits(True, 0.0))
        self.assertEqual(session_limits([role(idle=600), role(idle=300)], lenient), SessionLimits(False, 300.0))
        strict = ClusterDefaults(client_idle_timeout=120.0, disconnect_expired_cert=True)
        self.assertEqual(session_limits([role(idle=600, disconnect=False)], strict), SessionLimits(True, 120.0))
        self.assertEqual(session_limits([role(idle=60)], strict), SessionLimits(True, 60.0))

    def test_defaults_disconnect_at_expiry_without_idle_timeout(self):
        self.assertEqual(session_limits([], ClusterDefaults()), SessionLimits(True, 0.0))


class ConnectionWatchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.ended = []

    def watch(self, expires=None, idle=0.0):
        return ConnectionWatch(self.clock, self.ended.append, expires=expires, idle_timeout=idle)

    def test_ends_when_the_certificate_expires_however_busy(self):
        watch = self.watch(expires=1030, idle=10)
        for _ in range(29):
            self.clock.advance(1)
            watch.activity()  # keeps it from being idle, not from expiring
        self.assertEqual(self.ended, [])
        self.clock.advance(1)
        self.assertEqual(self.ended, [CERT_EXPIRED])
        self.clock.advance(100)
        self.assertEqual(self.ended, [CERT_EXPIRED])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_already_expired_certificate_ends_at_once(self):
        self.watch(expires=900)
        self.clock.advance(0)
        self.assertEqual(self.ended, [CERT_EXPIRED])

    def test_idle_means_no_activity_for_the_whole_timeout(self):
        watch = self.watch(idle=10)
        for _ in range(5):
            self.clock.advance(9)
            watch.activity()
        self.assertEqual(self.ended, [])
        self.clock.advance(9.9)
        self.assertEqual(self.ended, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ended, [IDLE])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_limits_schedule_nothing(self):
        self.watch()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_both(self):
        watch = self.watch(expires=2000, idle=10)
        watch.stop()
        self.clock.advance(5000)
        self.assertEqual(self.ended, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Inner(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class WatchedStreamTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.inner = Inner()
        self.ended = []
        self.limits = defer.Deferred()
        self.stream = WatchedStream(self.clock, self.inner, expires=1100, limits=lambda: self.limits,
                                    ended=self.ended.append)
        self.transport = StringTransport()
        self.stream.makeConnection(self.transport)

    def test_bytes_either_way_pass_and_count_as_activity(self):
        self.limits.callback(SessionLimits(disconnect_expired_cert=False, client_idle_timeout=30))
        for _ in range(5):
            self.clock.advance(20)
            self.stream.dataReceived(b"in")
            self.clock.advance(20)
            self.inner.transport.write(b"out")
        self.assertEqual((self.inner.received, self.transport.value()), (b"in" * 5, b"out" * 5))
        self.assertEqual(self.ended, [])
        self.clock.advance(30)
        self.assertEqual(self.ended, [IDLE])
        self.assertTrue(self.transport.disconnecting)

    def test_at_expiry_the_stream_is_closed_then_aborted_if_it_lingers(self):
        self.limits.callback(SessionLimits(disconnect_expired_cert=True, client_idle_timeout=0))
        self.clock.advance(99)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.ended, [CERT_EXPIRED])
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(getattr(self.transport, "disconnected", False))
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(self.transport.disconnected)  # StringTransport's mark of abortConnection

    def test_limits_unknown_still_end_it_at_expiry(self):
        self.limits.errback(RuntimeError("auth unreachable"))
        self.clock.advance(100)
        self.assertEqual(self.ended, [CERT_EXPIRED])
        self.flushLoggedErrors()

    def test_without_disconnect_expired_cert_it_outlives_the_certificate(self):
        self.limits.callback(SessionLimits(disconnect_expired_cert=False, client_idle_timeout=0))
        self.clock.advance(10_000)
        self.assertEqual(self.ended, [])

    def test_a_closed_stream_leaves_no_timer(self):
        self.limits.callback(SessionLimits(disconnect_expired_cert=True, client_idle_timeout=60))
        self.stream.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.inner.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_limits_arriving_after_the_end_start_nothing(self):
        self.stream.connectionLost(Failure(ConnectionDone()))
        self.limits.callback(SessionLimits(disconnect_expired_cert=True, client_idle_timeout=60))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ClusterDefaultsCacheTests(SynchronousTestCase):
    def test_read_from_ping_kept_for_the_ttl_and_malformed_fields_are_defaults(self):
        clock, answers = Clock(), []

        async def ping():
            answers.append(1)
            return {"cluster_name": "x", "client_idle_timeout": 900, "disconnect_expired_cert": False}

        cache = ClusterDefaultsCache(clock, ping, ttl=60)
        first = self.successResultOf(defer.Deferred.fromCoroutine(cache()))
        self.assertEqual(first, ClusterDefaults(client_idle_timeout=900.0, disconnect_expired_cert=False))
        self.successResultOf(defer.Deferred.fromCoroutine(cache()))
        self.assertEqual(len(answers), 1)
        clock.advance(60)
        self.successResultOf(defer.Deferred.fromCoroutine(cache()))
        self.assertEqual(len(answers), 2)

        async def old_auth():
            return {"cluster_name": "x", "client_idle_timeout": "soon", "disconnect_expired_cert": "no"}

        self.assertEqual(self.successResultOf(defer.Deferred.fromCoroutine(ClusterDefaultsCache(clock, old_auth)())),
                         ClusterDefaults())


class AcceptorTests(SynchronousTestCase):
    """The agent's acceptor watches every stream and audits how it ended."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.audit = []
        strict = attrs.evolve(kube_role(), options=RoleOptions(client_idle_timeout=120))

        async def defaults():
            return ClusterDefaults(client_idle_timeout=0.0, disconnect_expired_cert=True)

        cluster = KubeCluster("c1", {"env": "dev"}, credentials(1))
        self.acceptor = StreamAcceptor(self.clock, clusters={"c1": cluster}, user_cas=[USER_CA.certificate],
                                       roles=RoleCache(self.clock, FakeRoles(strict).fetch), emit=self.audit.append,
                                       cluster_defaults=defaults)

    def accept(self, expires):
        stream = self.acceptor.accept_stream({"user_cert": user_cert_pem(expires=expires), "kube_cluster": "c1",
                                              "client_addr": "192.0.2.1:5000"})
        self.assertIsInstance(stream, WatchedStream)
        self.assertIsInstance(stream.wrappedProtocol, KubeConnection)
        transport = StringTransport()
        stream.makeConnection(transport)
        return transport

    def test_a_stream_ends_when_its_certificate_expires_and_it_is_audited(self):
        transport = self.accept(NOW + timedelta(seconds=90))
        self.clock.advance(89)
        self.assertEqual(self.audit, [])
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        (event,) = self.audit
        self.assertEqual((event["event"], event["code"], event["reason"], event["user"], event["kube_cluster"],
                          event["addr_remote"]),
                         ("client.disconnect", "T3006I", CERT_EXPIRED, "alice", "c1", "192.0.2.1:5000"))

    def test_a_role_tightens_the_idle_timeout(self):
        transport = self.accept(NOW + timedelta(hours=1))
        self.clock.advance(120)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.audit[0]["reason"], IDLE)
