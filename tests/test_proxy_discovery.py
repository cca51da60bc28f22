"""The proxy's heartbeat and discovery (teleport_py.proxy.discovery) on a
fake clock: it heartbeats itself, reads the proxy list back, tells every
tunnel when the list changes (only then), tells nothing while Auth cannot be
reached, and stopping cancels a call in flight. A goodbye drops our record
from Auth and tells every tunnel the list without us, even with Auth down,
and waits for neither longer than GOODBYE_TIMEOUT."""
from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.proxy.discovery import GOODBYE_TIMEOUT, ProxyDiscovery, proxy_resource
from teleport_py.tunnel import StreamRejected


def _listed(name: str, addr: str) -> dict:
    return proxy_resource(name, "node", addr, "lb:3080")


class FakeAuth:
    def __init__(self) -> None:
        self.beats: list[dict] = []
        self.proxies = [_listed("p1", "p1:3080")]
        self.down = False
        self.pending: Deferred | None = None
        self.goodbyes = 0
        self.goodbye_answer: Deferred | None = None

    def heartbeat_proxy(self, resource):
        if self.pending is not None:
            return self.pending
        if self.down:
            return fail(ConnectionRefusedError())
        self.beats.append(resource)
        return succeed({})

    async def proxy_goodbye(self):
        # A coroutine, as AuthClient.call is.
        if self.down:
            raise ConnectionRefusedError()
        self.goodbyes += 1
        if self.goodbye_answer is not None:
            await self.goodbye_answer
        self.proxies = [p for p in self.proxies if p["metadata"]["name"] != "p1"]
        return {}

    def list_proxies(self):
        return succeed(list(self.proxies))


class FakeTunnel:
    def __init__(self, refuse: bool = False) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.refuse = refuse

    def open_stream(self, kind, metadata, protocol):
        self.sent.append((kind, metadata))
        return fail(StreamRejected("unsupported stream kind")) if self.refuse else succeed(protocol)


class ProxyDiscoveryTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.auth = FakeAuth()
        self.tunnels = [FakeTunnel(), FakeTunnel(refuse=True)]
        self.me = proxy_resource("p1", "node", "p1:3080", "lb:3080")
        self.discovery = ProxyDiscovery(self.clock, self.auth, self.me, lambda: self.tunnels)

    def test_heartbeats_and_tells_every_tunnel_when_the_list_changes(self):
        self.discovery.start()
        self.assertEqual(self.auth.beats, [self.me])
        first = ("discovery", {"proxies": [{"name": "p1", "addr": "p1:3080"}]})
        self.assertEqual([t.sent for t in self.tunnels], [[first], [first]])
        self.clock.advance(10)  # same list: a heartbeat, nothing sent
        self.assertEqual((len(self.auth.beats), len(self.tunnels[0].sent)), (2, 1))
        self.auth.proxies += [_listed("p0", "p0:3080"), {"kind": "proxy"}, None]  # the malformed are skipped
        self.clock.advance(10)
        self.assertEqual(self.tunnels[0].sent[-1], ("discovery", {"proxies": [
            {"name": "p0", "addr": "p0:3080"}, {"name": "p1", "addr": "p1:3080"}]}))
        # A new tunnel (an agent announcing itself) gets the current list at once.
        late = FakeTunnel()
        self.discovery.send(late)
        self.assertEqual(len(late.sent[0][1]["proxies"]), 2)
        self.discovery.stop()

    def test_nothing_is_told_before_auth_answers_and_a_failure_keeps_the_last_list(self):
        self.auth.down = True
        self.discovery.start()
        early = FakeTunnel()
        self.discovery.send(early)
        self.assertEqual((early.sent, self.tunnels[0].sent), ([], []))
        self.auth.down = False
        self.clock.advance(10)
        self.assertEqual(len(self.tunnels[0].sent), 1)
        self.auth.down = True
        self.clock.advance(10)
        self.discovery.send(early)
        self.assertEqual(early.sent[0][1], {"proxies": [{"name": "p1", "addr": "p1:3080"}]})
        self.discovery.stop()

    def test_stop_cancels_the_call_in_flight(self):
        self.auth.pending = Deferred()
        self.discovery.start()
        self.discovery.stop()
        self.assertTrue(self.auth.pending.called)  # cancelled
        self.clock.advance(60)
        self.assertEqual(self.auth.beats, [])

    def _two_proxies_known(self):
        self.auth.proxies.append(_listed("p0", "p0:3080"))
        self.discovery.start()
        self.assertEqual(self.tunnels[0].sent[-1][1]["proxies"], [
            {"name": "p0", "addr": "p0:3080"}, {"name": "p1", "addr": "p1:3080"}])

    def test_goodbye_drops_our_record_and_tells_every_tunnel_the_list_without_us(self):
        self._two_proxies_known()
        done = Deferred.fromCoroutine(self.discovery.goodbye())
        self.assertEqual(self.auth.goodbyes, 1)
        self.assertEqual([p["metadata"]["name"] for p in self.auth.proxies], ["p0"])
        without_us = ("discovery", {"proxies": [{"name": "p0", "addr": "p0:3080"}]})
        self.assertEqual([t.sent[-1] for t in self.tunnels], [without_us, without_us])
        self.successResultOf(done)
        # No heartbeat after the goodbye (it would put the record back).
        beats = len(self.auth.beats)
        self.clock.advance(60)
        self.assertEqual(len(self.auth.beats), beats)
        # An agent announcing during the drain is told the list without us too.
        late = FakeTunnel()
        self.discovery.send(late)
        self.assertEqual(late.sent, [without_us])

    def test_goodbye_with_auth_down_still_tells_the_agents(self):
        self._two_proxies_known()
        self.auth.down = True
        self.successResultOf(Deferred.fromCoroutine(self.discovery.goodbye()))
        self.assertEqual(self.tunnels[0].sent[-1][1], {"proxies": [{"name": "p0", "addr": "p0:3080"}]})
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_goodbye_waits_for_auth_at_most_goodbye_timeout(self):
        self._two_proxies_known()
        self.auth.goodbye_answer = Deferred()
        done = Deferred.fromCoroutine(self.discovery.goodbye())
        self.assertNoResult(done)
        self.clock.advance(GOODBYE_TIMEOUT - 0.1)
        self.assertNoResult(done)
        self.clock.advance(0.2)
        self.successResultOf(done)
