"""The agent's reverse-tunnel client: backoff schedule and announce on every connect."""
from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.tunnel_client import TunnelClient
from teleport_py.tunnel import StreamRejected, TunnelProtocol


class Unreachable:
    def __init__(self, clock):
        self.clock = clock
        self.attempts = []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        return fail(ConnectionRefusedError())


class Proxy:
    """An in-memory proxy: each connect() gets a fresh server-side tunnel over iosim."""

    def __init__(self, clock):
        self.clock = clock
        self.announces = []
        self.pumps = []

    def accept(self, kind, metadata):
        if kind != "announce":
            raise StreamRejected("unexpected")
        self.announces.append(metadata)
        return iosim.Protocol()

    def connect(self, factory):
        client = factory.buildProtocol(None)
        server = TunnelProtocol(self.clock, initiator=False, accept_stream=self.accept)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
        self.pumps.append(pump)
        d = Deferred()
        d.callback(client)
        return d

    def flush(self):
        for pump in self.pumps:
            pump.flush()


class BackoffTests(SynchronousTestCase):
    def test_reconnect_schedule_on_the_clock(self):
        clock = Clock()
        endpoint = Unreachable(clock)
        client = TunnelClient(clock, endpoint, clusters=[], accept_stream=None, random=lambda: 0.0)
        client.start()
        for _ in range(100):
            clock.advance(0.25)
        self.assertEqual(endpoint.attempts[:6], [0, 1, 3, 7, 15, 23])
        client.stop()
        attempts = len(endpoint.attempts)
        clock.advance(100)
        self.assertEqual(len(endpoint.attempts), attempts)

    def test_jittered_reconnects_stay_in_bounds(self):
        clock = Clock()
        endpoint = Unreachable(clock)
        client = TunnelClient(clock, endpoint, clusters=[], accept_stream=None, random=lambda: 1.0)
        client.start()
        for _ in range(200):
            clock.advance(0.25)
        gaps = [b - a for a, b in zip(endpoint.attempts, endpoint.attempts[1:])]
        self.assertEqual(gaps[:5], [0.75, 1.5, 3.0, 6.0, 6.0])
        client.stop()


class AnnounceTests(SynchronousTestCase):
    def test_announces_on_every_connect_and_resets_backoff(self):
        clock = Clock()
        proxy = Proxy(clock)
        clusters = [{"name": "c1", "labels": {"env": "dev"}}]
        client = TunnelClient(clock, proxy, clusters=clusters, accept_stream=lambda k, m: None, random=lambda: 0.0)
        client.start()
        proxy.flush()
        self.assertEqual(proxy.announces, [{"clusters": clusters}])
        self.assertIsNotNone(client.tunnel)
        # The proxy goes away: reconnect after 1 s (attempt counter was reset) and announce again.
        client.tunnel.transport.loseConnection()
        proxy.flush()
        self.assertIsNone(client.tunnel)
        clock.advance(1)
        proxy.flush()
        self.assertEqual(len(proxy.announces), 2)
        self.assertIsNotNone(client.tunnel)
        client.stop()
        proxy.flush()
