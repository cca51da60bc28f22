"""Login throttling: per client network (IPv4 address, IPv6 /64), per user
lockout, each throttling episode audited once."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py import events
from teleport_py.auth.errors import AccessDenied, LimitExceeded
from teleport_py.auth.ratelimit import PRUNE_EVERY, UNKNOWN_NETWORK, LoginLimiter, client_network
from teleport_py.auth.server import AuthServer
from teleport_py.auth.shared_ratelimit import SharedLoginLimiter
from teleport_py.backend import MemoryBackend
from tests.support.auth_callers import PROXY, public_pem


class ClientNetworkTests(SynchronousTestCase):
    def test_ipv4_counts_by_address_whatever_the_port(self):
        self.assertEqual(client_network("192.0.2.7:40001"), "192.0.2.7")
        self.assertEqual(client_network("192.0.2.7:40002"), "192.0.2.7")
        self.assertEqual(client_network("192.0.2.7"), "192.0.2.7")

    def test_ipv6_counts_by_slash_64(self):
        a = client_network("[2001:db8:1:2::1]:40001")
        self.assertEqual(a, "2001:db8:1:2::/64")
        self.assertEqual(client_network("[2001:db8:1:2:ffff:ffff:ffff:ffff]:9"), a)
        self.assertEqual(client_network("2001:db8:1:2::99"), a)
        self.assertNotEqual(client_network("[2001:db8:1:3::1]:1"), a)
        self.assertEqual(client_network("[fe80::1%eth0]:1"), "fe80::/64")

    def test_ipv4_mapped_ipv6_is_its_ipv4_address(self):
        self.assertEqual(client_network("[::ffff:192.0.2.7]:5"), "192.0.2.7")

    def test_unparseable_addresses_share_one_bucket(self):
        for address in ("", "garbage", "[::1", "1.2.3.4:5:6:7:8:9:10:11", "host.example:1"):
            self.assertEqual(client_network(address), UNKNOWN_NETWORK, address)

    @given(st.text(max_size=80))
    def test_any_text_gives_a_key(self, address):
        self.assertIsInstance(client_network(address), str)


class LoginLimiterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.limiter = LoginLimiter(self.clock)

    def test_fresh_connections_from_one_address_are_throttled(self):
        results = [self.limiter.attempt(f"user{i}", f"192.0.2.7:{40000 + i}") for i in range(25)]
        self.assertEqual(results[:20], [None] * 20)
        self.assertTrue(all(r is not None and r.limit == "client_network" and r.key == "192.0.2.7" for r in results[20:]))
        self.assertEqual([r.first for r in results[20:]], [True, False, False, False, False])
        self.assertIsNone(self.limiter.attempt("user", "192.0.2.8:1"), "another address has its own budget")
        self.clock.advance(self.limiter.rules.network_window)
        self.assertIsNone(self.limiter.attempt("user", "192.0.2.7:2"))

    def test_one_ipv6_slash_64_shares_a_budget(self):
        for i in range(20):
            self.assertIsNone(self.limiter.attempt(f"u{i}", f"[2001:db8:0:1::{i + 1:x}]:443"))
        refused = self.limiter.attempt("u", "[2001:db8:0:1:abcd::1]:443")
        self.assertEqual((refused.limit, refused.key), ("client_network", "2001:db8:0:1::/64"))
        self.assertIsNone(self.limiter.attempt("u", "[2001:db8:0:2::1]:443"))

    def test_user_lockout_is_kept(self):
        for i in range(self.limiter.rules.max_failures):
            self.assertIsNone(self.limiter.attempt("alice", f"192.0.2.{i}:1"))
            self.limiter.failed("alice")
        refused = self.limiter.attempt("alice", "198.51.100.1:1")
        self.assertEqual((refused.limit, refused.key, refused.first), ("user", "alice", True))
        self.assertFalse(self.limiter.attempt("alice", "198.51.100.2:1").first)
        self.clock.advance(self.limiter.rules.lockout)
        self.assertIsNone(self.limiter.attempt("alice", "198.51.100.3:1"))

    def test_a_new_episode_is_reported_again(self):
        for _ in range(21):
            self.limiter.attempt("u", "192.0.2.7:1")
        self.clock.advance(self.limiter.rules.network_window)
        for _ in range(20):
            self.assertIsNone(self.limiter.attempt("u", "192.0.2.7:1"))
        self.assertTrue(self.limiter.attempt("u", "192.0.2.7:1").first)

    def test_memory_stays_bounded_under_a_spray(self):
        for i in range(3 * PRUNE_EVERY):
            self.limiter.attempt(f"user{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:1")
            self.limiter.failed(f"user{i}")
            self.clock.advance(1.0)
        horizon = max(self.limiter.rules.failure_window, self.limiter.rules.network_window)
        self.assertLessEqual(len(self.limiter._failures), horizon + PRUNE_EVERY)
        self.assertLessEqual(len(self.limiter._attempts), self.limiter.rules.network_window + PRUNE_EVERY)


class ThrottledLoginAuditTests(TestCase):
    async def test_throttling_is_audited_once_per_episode(self):
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        auth = await AuthServer.initialize(reactor, backend, "example")
        answers = []
        for i in range(25):
            try:
                await auth.user_certificates.login(PROXY, f"user{i}", "wrong password!!", public_pem(), client_addr=f"192.0.2.7:{40000 + i}")
            except (AccessDenied, LimitExceeded) as e:
                answers.append(type(e))
        self.assertEqual(answers, [AccessDenied] * 20 + [LimitExceeded] * 5)
        now = datetime.now(timezone.utc)
        found = await auth.audit.search(now - timedelta(minutes=5), now + timedelta(minutes=5),
                                        [events.LOGIN_THROTTLED, events.USER_LOGIN])
        throttled = [e for e in found if e["event"] == events.LOGIN_THROTTLED]
        self.assertEqual(len(throttled), 1)
        self.assertEqual((throttled[0]["limit"], throttled[0]["key"], throttled[0]["user"], throttled[0]["addr_remote"]),
                         ("client_network", "192.0.2.7", "user20", "192.0.2.7:40020"))
        self.assertEqual(throttled[0]["code"], "TLT00W")
        self.assertEqual(len([e for e in found if e["event"] == events.USER_LOGIN]), 20)


class SharedLimitsTests(TestCase):
    """Two Auth servers on one backend (as on etcd) share lockouts and each
    network's attempt budget; a throttling episode is audited once in all."""

    async def servers(self):
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        first = await AuthServer.initialize(reactor, backend, "example", shared_backend=True)
        second = await AuthServer.initialize(reactor, backend, "example", shared_backend=True)
        self.assertIsInstance(first.user_certificates.limiter, SharedLoginLimiter)
        return first, second, backend

    async def answer(self, auth, user, address, password="wrong password!!"):
        try:
            await auth.user_certificates.login(PROXY, user, password, public_pem(), client_addr=address)
        except (AccessDenied, LimitExceeded) as e:
            return type(e)
        return "ok"

    async def test_a_lockout_through_one_holds_through_the_other(self):
        first, second, _ = await self.servers()
        servers = [first, second]
        for i in range(5):
            self.assertEqual(await self.answer(servers[i % 2], "alice", f"192.0.2.{i}:1"), AccessDenied)
        # Five failures split over two servers lock alice on both.
        for auth in servers:
            self.assertEqual(await self.answer(auth, "alice", "198.51.100.1:1"), LimitExceeded)
        self.assertEqual(await self.answer(first, "bob", "198.51.100.1:1"), AccessDenied)

    async def test_a_network_budget_is_counted_across_servers(self):
        first, second, _ = await self.servers()
        answers = [await self.answer((first, second)[i % 2], f"user{i}", f"192.0.2.7:{40000 + i}") for i in range(25)]
        self.assertEqual(answers, [AccessDenied] * 20 + [LimitExceeded] * 5)
        now = datetime.now(timezone.utc)
        found = await first.audit.search(now - timedelta(minutes=5), now + timedelta(minutes=5), [events.LOGIN_THROTTLED])
        self.assertEqual(len(found), 1)
