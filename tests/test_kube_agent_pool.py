"""The agent pool on in-memory tunnels and a fake clock: it learns every
proxy from the one it reaches, keeps one tunnel to each, finds the proxies
behind a load balancer by which one answered, drops proxies that left the
list, and redials with jittered backoff."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.config import Address
from teleport_py.identityfile import IdentityFile
from teleport_py.kube.agent_pool import DEPARTED_FOR, AgentPool, AuthOverTunnels, DiscoveryError, parse_discovery
from teleport_py.tunnel import StreamRejected, TunnelClosed, TunnelProtocol
from tests.support.pki import HOST_CA, USER_CA, host_pair


class FakeProxy:
    """One proxy: accepts tunnels (while up), records announces, can send a discovery list."""

    def __init__(self, network: "Network", name: str, addr: str) -> None:
        self.network = network
        self.name = name
        self.addr = addr
        self.up = True
        self.tunnels: list[TunnelProtocol] = []
        self.announces: list[dict] = []

    def accept(self, kind, metadata):
        if kind != "announce":
            raise StreamRejected("unexpected")
        self.announces.append(metadata)
        if self.network.listed is not None:  # as a real proxy: the list after every announce
            self.network.clock.callLater(0, self.discover, *self.network.listed)
        return Protocol()

    def connect(self, factory):
        self.network.dials.append((self.network.clock.seconds(), self.name))
        if not self.up:
            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(None)
        server = TunnelProtocol(self.network.clock, initiator=False, accept_stream=self.accept)
        self.network.pumps.append(
            iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)))
        self.tunnels.append(server)
        server.closed.addCallback(lambda _: self.tunnels.remove(server))
        self.network.reached[client] = self.name
        return succeed(client)

    def live(self) -> list[TunnelProtocol]:
        return [t for t in self.tunnels if t.transport is not None and not t.transport.disconnected]

    def discover(self, *proxies: "FakeProxy") -> None:
        metadata = {"proxies": [{"name": p.name, "addr": p.addr} for p in proxies]}
        for tunnel in self.live():
            tunnel.open_stream("discovery", metadata, Protocol())

    def crash(self) -> None:
        self.up = False
        for tunnel in list(self.tunnels):
            tunnel.transport.loseConnection()


class Unreachable:
    def connect(self, factory):
        return fail(ConnectionRefusedError())


class Balancer:
    """A load balancer in front of proxies: the next one in ``order`` per connection."""

    def __init__(self, order: list[FakeProxy]) -> None:
        self.order = order
        self.count = 0

    def connect(self, factory):
        proxy = self.order[self.count % len(self.order)]
        self.count += 1
        return proxy.connect(factory)


class _Endpoint:
    def __init__(self, target) -> None:
        self.target = target

    def connect(self, factory):
        return self.target.connect(factory)

    def use(self, identity) -> None:
        pass


class Network:
    def __init__(self) -> None:
        self.clock = Clock()
        self.pumps: list = []
        self.dials: list[tuple[float, str]] = []
        #: The agent side of each tunnel -> the proxy it reached (what the certificate says in real life).
        self.reached: dict = {}
        self.addresses: dict[tuple[str, int], object] = {}
        #: What Auth lists (proxies send it after each announce), None: nothing yet.
        self.listed: list | None = None

    def proxy(self, name: str, addr: str) -> FakeProxy:
        proxy = FakeProxy(self, name, addr)
        host, port = addr.split(":")
        self.addresses.setdefault((host, int(port)), proxy)
        return proxy

    def endpoint_for(self, reactor, host, port, identity):
        return _Endpoint(self.addresses[(host, port)])

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            for pump in self.pumps:
                pump.flush()
            self.clock.advance(0)

    def pool(self, address: str, clusters=({"name": "c1", "labels": {}},)) -> AgentPool:
        host, port = address.split(":")
        pool = AgentPool(
            self.clock, Address(host, int(port)), identity=None, clusters=list(clusters),
            accept_stream=lambda kind, metadata: Protocol(), random=lambda: 0.0,
            endpoint_for=self.endpoint_for, proxy_of=self.reached.get,
        )
        return pool


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network()

    def start(self, address: str) -> AgentPool:
        pool = self.net.pool(address)
        pool.start()
        self.addCleanup(self._stop, pool)
        self.net.settle()
        return pool

    def _stop(self, pool):
        pool.stop()
        self.net.settle()

    def test_learns_every_proxy_from_the_first_and_holds_one_tunnel_each(self):
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        pool = self.start("a:3080")
        self.assertEqual((len(a.live()), pool.proxies), (1, {}))
        # The first announce carries no clusters (it only tells us who answered); the second does.
        self.assertEqual([m["clusters"] for m in a.announces], [[], [{"name": "c1", "labels": {}}]])
        a.discover(a, b)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": True})
        self.assertEqual((len(a.live()), len(b.live())), (1, 1))
        self.assertEqual(b.announces[-1], {"clusters": [{"name": "c1", "labels": {}}]})
        self.assertEqual(len(pool.tunnels), 2)
        # Announcing again reaches both proxies.
        pool.announce([])
        self.net.settle()
        self.assertEqual((a.announces[-1], b.announces[-1]), ({"clusters": []}, {"clusters": []}))

    def test_behind_a_load_balancer_a_second_tunnel_to_the_same_proxy_is_closed_and_dialled_again(self):
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        lb = Balancer([a, a, a, b])
        self.net.addresses[("lb", 3080)] = lb
        pool = self.start("lb:3080")
        a.discover(_Listed("proxy-a", "lb:3080"), _Listed("proxy-b", "lb:3080"))
        self.net.settle()
        # The second dial landed on proxy-a again: that tunnel was closed, one kept.
        self.assertEqual((len(a.live()), len(b.live())), (1, 0))
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": False})
        # Backoff: the next dial 1 s later (lands on a again), then 2 s after that (b).
        self.net.clock.advance(1)
        self.net.settle()
        self.assertEqual((len(a.live()), len(b.live())), (1, 0))
        self.net.clock.advance(2)
        self.net.settle()
        self.assertEqual((len(a.live()), len(b.live())), (1, 1))
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": True})
        self.assertEqual([t for t, _ in self.net.dials], [0, 0, 1, 3])
        # Once every proxy is held, nothing more is dialled.
        self.net.clock.advance(60)
        self.net.settle()
        self.assertEqual(len(self.net.dials), 4)

    def test_a_proxy_that_left_the_list_loses_its_tunnel(self):
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        pool = self.start("a:3080")
        a.discover(a, b)
        self.net.settle()
        self.assertEqual(len(b.live()), 1)
        # proxy-b's heartbeat expired: every proxy's list now leaves it out.
        a.discover(a)
        b.discover(a)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True})
        self.assertEqual((len(a.live()), len(b.live())), (1, 0))
        self.net.clock.advance(60)
        self.net.settle()
        self.assertEqual(len(b.live()), 0)

    def test_a_proxy_saying_goodbye_is_dropped_at_once(self):
        """A proxy stopping cleanly sends its list without itself: its tunnel
        closes now, though another proxy's list (older than the goodbye)
        still names it, and it is not dialled again until a later list names
        it or DEPARTED_FOR passes."""
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        pool = self.start("a:3080")
        a.discover(a, b)
        self.net.settle()
        self.assertEqual(len(b.live()), 1)
        b.discover(a)
        b.up = False  # it stops accepting right after
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True})
        self.assertEqual((len(a.live()), len(b.live())), (1, 0))
        dials = len(self.net.dials)
        self.net.clock.advance(DEPARTED_FOR - 1)
        self.net.settle()
        self.assertEqual(len(self.net.dials), dials)
        # Restarted: proxy-a's next list names it again, and it is dialled at once.
        b.up = True
        a.discover(a, b)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": True})
        self.assertEqual(len(b.live()), 1)

    def test_a_proxy_is_dialled_at_the_tunnel_address_its_heartbeat_gives(self):
        """proxy_service.tunnel_public_addr: the list's address, not the given one, is dialled."""
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "tunnel-b.example.com:3024")
        asked = []
        endpoint_for = self.net.endpoint_for
        self.net.endpoint_for = lambda reactor, host, port, identity: (
            asked.append((host, port)), endpoint_for(reactor, host, port, identity))[1]
        pool = self.start("a:3080")
        a.discover(a, b)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": True})
        self.assertEqual(asked, [("a", 3080), ("tunnel-b.example.com", 3024)])

    def test_a_goodbye_is_forgotten_after_departed_for(self):
        """A list that still names a proxy DEPARTED_FOR after its goodbye
        comes from a live heartbeat: the proxy is dialled again."""
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        pool = self.start("a:3080")
        a.discover(a, b)
        self.net.settle()
        b.discover(a)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True})
        self.net.clock.advance(DEPARTED_FOR)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": True})
        self.assertEqual(len(b.live()), 1)

    def test_a_restarted_proxy_is_dialled_again_with_backoff(self):
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        pool = self.start("a:3080")
        a.discover(a, b)
        self.net.settle()
        dials = len(self.net.dials)
        b.crash()
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": False})
        # Redials: b's address (refused) twice, then the given address once
        # (proxy-a, already held: closed), then b again...
        for _ in range(60):
            self.net.clock.advance(0.5)
            self.net.settle(3)
        redials = self.net.dials[dials:]
        gaps = [round(t2 - t1, 2) for (t1, _), (t2, _) in zip(redials, redials[1:])]
        self.assertEqual(gaps[:4], [2.0, 4.0, 8.0, 8.0])
        self.assertEqual([name for _, name in redials[:4]], ["proxy-b", "proxy-b", "proxy-a", "proxy-b"])
        b.up = True
        for _ in range(32):  # two dials at the cap at most
            self.net.clock.advance(0.5)
            self.net.settle(3)
        self.assertEqual(pool.proxies, {"proxy-a": True, "proxy-b": True})
        # The tunnel to proxy-a was never dropped.
        self.assertEqual(len(a.live()), 1)

    def test_with_no_tunnel_up_the_given_address_is_dialled_first(self):
        """The only proxy heartbeats an address this agent cannot reach (a
        wildcard listen address named by its nodename): after the proxy
        restarts, the first redial goes to the given address, which worked."""
        a = self.net.proxy("proxy-a", "a:3080")
        self.net.addresses[("proxy-a-node", 3080)] = Unreachable()
        pool = self.start("a:3080")
        a.discover(_Listed("proxy-a", "proxy-a-node:3080"))
        self.net.settle()
        a.crash()
        a.up = True
        self.net.settle()
        self.assertFalse(pool.up)
        self.net.clock.advance(1)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-a": True})

    def test_when_every_listed_proxy_is_gone_a_new_one_at_the_given_address_is_kept(self):
        old, new = self.net.proxy("proxy-old", "old:3080"), self.net.proxy("proxy-new", "new:3080")
        lb = Balancer([old])
        self.net.addresses[("lb", 3080)] = lb
        pool = self.start("lb:3080")
        old.discover(_Listed("proxy-old", "lb:3080"))
        self.net.settle()
        # The old proxy is replaced by a new one behind the balancer, which no list names yet.
        old.crash()
        lb.order = [new]
        for _ in range(20):
            self.net.clock.advance(0.5)
            self.net.settle(3)
        self.assertTrue(pool.up)
        self.assertEqual(len(new.live()), 1)
        new.discover(new)
        self.net.settle()
        self.assertEqual(pool.proxies, {"proxy-new": True})

    def test_stop_closes_every_tunnel_and_dials_no_more(self):
        a, b = self.net.proxy("proxy-a", "a:3080"), self.net.proxy("proxy-b", "b:3080")
        pool = self.net.pool("a:3080")
        pool.start()
        self.net.settle()
        a.discover(a, b)
        self.net.settle()
        stopped = pool.stop()
        self.net.settle()
        self.assertEqual((len(a.live()), len(b.live())), (0, 0))
        self.assertTrue(stopped.called)
        dials = len(self.net.dials)
        self.net.clock.advance(100)
        self.net.settle()
        self.assertEqual(len(self.net.dials), dials)


class _Listed:
    def __init__(self, name, addr):
        self.name, self.addr = name, addr


class DiscoveryParsingTests(SynchronousTestCase):
    def test_valid(self):
        parsed = parse_discovery({"proxies": [{"name": "p1", "addr": "h:3080"}, {"name": "p2", "addr": "[::1]:4"}]})
        self.assertEqual(parsed, {"p1": Address("h", 3080), "p2": Address("::1", 4)})

    def test_invalid(self):
        for metadata in ({}, {"proxies": {}}, {"proxies": [{"name": "p"}]}, {"proxies": [{"name": "", "addr": "h:1"}]},
                         {"proxies": [{"name": "p", "addr": 5}]}, {"proxies": [{"name": "p", "addr": "h:1", "x": 1}]},
                         {"proxies": [{"name": f"p{i}", "addr": "h:1"} for i in range(300)]}):
            with self.assertRaises(DiscoveryError, msg=repr(metadata)):
                parse_discovery(metadata)


class NotAProxyTests(SynchronousTestCase):
    def test_a_peer_that_is_not_a_proxy_of_the_cluster_is_closed_and_dialled_again(self):
        net = Network()
        a = net.proxy("proxy-a", "a:3080")
        pool = AgentPool(net.clock, Address("a", 3080), identity=None, clusters=[{"name": "c1", "labels": {}}],
                         accept_stream=lambda kind, metadata: Protocol(), random=lambda: 0.0,
                         endpoint_for=net.endpoint_for, proxy_of=lambda tunnel: None)
        pool.start()
        net.settle()
        # Only the identifying announce (no clusters) reached it, and the tunnel is closed.
        self.assertEqual(a.announces, [{"clusters": []}])
        self.assertEqual((len(a.live()), pool.up), (0, False))
        net.clock.advance(1)
        net.settle()
        self.assertEqual(len(net.dials), 2)
        pool.stop()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_entry = st.fixed_dictionaries({"name": st.text(max_size=30) | _json, "addr": st.text(max_size=30) | _json})


class DiscoveryFuzzTests(SynchronousTestCase):
    @given(st.dictionaries(st.sampled_from(["proxies", "other"]), st.lists(_entry | _json, max_size=5) | _json))
    def test_any_metadata_parses_or_is_refused_with_discovery_error(self, metadata):
        try:
            parsed = parse_discovery(metadata)
        except DiscoveryError:
            return
        self.assertTrue(all(isinstance(name, str) and name and isinstance(addr, Address)
                            for name, addr in parsed.items()))


class _AuthTunnel:
    """A tunnel whose `auth` streams open, or are refused."""

    def __init__(self, name: str, refuse: bool = False) -> None:
        self.name, self.refuse, self.opened = name, refuse, 0

    def endpoint(self, kind, metadata):
        tunnel = self

        class _Endpoint:
            def connect(self, factory):
                tunnel.opened += 1
                if tunnel.refuse:
                    return fail(StreamRejected("tunnel is going away"))
                return succeed(tunnel.name)

        return _Endpoint()


class _UpTunnels:
    """What AuthOverTunnels sees of the pool."""

    up_tunnels: list = []


class AuthOverTunnelsTests(SynchronousTestCase):
    def setUp(self):
        cert, key = host_pair("agent-1", "kube")
        self.pool = _UpTunnels()
        self.auth = AuthOverTunnels(self.pool, IdentityFile(cert, key, (USER_CA.certificate,), (HOST_CA.certificate,)))

    def connect(self):
        return self.successResultOf(self.auth.connect(None))

    def test_connections_take_the_up_tunnels_in_turn_and_skip_one_that_refuses(self):
        a, b, c = _AuthTunnel("a"), _AuthTunnel("b", refuse=True), _AuthTunnel("c")
        self.pool.up_tunnels = [a, b, c]
        self.assertEqual([self.connect() for _ in range(4)], ["a", "c", "c", "a"])

    def test_no_tunnel_or_none_taking_the_stream_fails_the_connection(self):
        self.pool.up_tunnels = []
        self.failureResultOf(self.auth.connect(None), TunnelClosed)
        self.pool.up_tunnels = [_AuthTunnel("a", refuse=True)]
        self.failureResultOf(self.auth.connect(None), TunnelClosed)


class PoolStateMachine(RuleBasedStateMachine):
    """Any sequence of proxies crashing and restarting, lists changing and
    time passing, directly or behind a load balancer: the pool never keeps
    two tunnels to one proxy nor more slots than listed proxies, and once
    things settle it holds exactly one tunnel to each listed live proxy."""

    def __init__(self):
        super().__init__()
        self.net = Network()
        self.all = [self.net.proxy(f"proxy-{i}", f"p{i}:3080") for i in range(3)]
        self.listed = list(self.all[:2])
        self.pool = None

    @initialize(balanced=st.booleans())
    def start(self, balanced):
        address = "p0:3080"
        if balanced:
            self.net.addresses[("lb", 3080)] = Balancer(self.all)
            address = "lb:3080"
            self.addr = {p.name: "lb:3080" for p in self.all}
        else:
            self.addr = {p.name: p.addr for p in self.all}
        self.pool = self.net.pool(address)
        self.pool.start()
        self.net.settle()

    def _discover(self):
        listed = self.net.listed = [_Listed(p.name, self.addr[p.name]) for p in self.listed]
        for proxy in self.all:
            if proxy.up:
                proxy.discover(*listed)
        self.net.settle()

    @rule(data=st.data())
    def change_the_list(self, data):
        self.listed = data.draw(st.lists(st.sampled_from(self.all), min_size=1, max_size=3, unique=True))
        self._discover()

    @rule(i=st.integers(0, 2))
    def crash(self, i):
        if sum(p.up for p in self.all) > 1:
            self.all[i].crash()
            self.net.settle()

    @rule(i=st.integers(0, 2))
    def restart(self, i):
        self.all[i].up = True

    @rule(seconds=st.sampled_from([0.5, 1, 3, 8]))
    def wait(self, seconds):
        self.net.clock.advance(seconds)
        self.net.settle()

    @invariant()
    def never_two_tunnels_kept_to_one_proxy(self):
        if self.pool is None:
            return
        held = [slot.proxy for slot in self.pool._slots if slot.client.up]
        assert len(held) == len(set(held)), held
        wanted = self.pool._wanted()
        unlisted = [s for s in self.pool._slots if wanted and s.proxy is not None and s.proxy not in wanted]
        assert len(self.pool._slots) <= max(1, len(wanted)) + len(unlisted), self.pool._slots

    def teardown(self):
        if self.pool is None:
            return
        # Settle: every proxy up, every proxy telling the same list, time for the backoff to run out.
        for proxy in self.all:
            proxy.up = True
        self._discover()
        for _ in range(120):
            self.net.clock.advance(0.5)
            self.net.settle(3)
        self._discover()
        for _ in range(40):
            self.net.clock.advance(0.5)
            self.net.settle(3)
        expected = {p.name: True for p in self.listed}
        assert self.pool.proxies == expected, (self.pool.proxies, expected)
        for proxy in self.listed:
            assert len(proxy.live()) == 1, (proxy.name, len(proxy.live()))
        self.pool.stop()
        self.net.settle()


class PoolStateMachineTests(SynchronousTestCase):
    def test_any_sequence(self):
        run_state_machine_as_test(PoolStateMachine, settings=settings(
            max_examples=40, stateful_step_count=15, deadline=None))
