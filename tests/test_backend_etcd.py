"""What the etcd backend adds to the shared suite (tests.test_backend): two
backends on one prefix, prefixes kept apart, a watch that resumes after etcd
restarts without missing or repeating an event, compaction answered by a
re-read, TLS client certificates, the watch stream's decoder, and two
backends on one prefix driven at random against one dict."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from teleport_py.backend import DELETE, PUT, BackendUnavailableError
from teleport_py.backend.etcd import WATCH_LAG_LIMIT, EnvelopeError, EtcdBackend, decode_value, encode_value
from teleport_py.backend.etcd_gateway import READ_RETRY_DELAYS, EtcdError, EtcdUnavailable, Gateway
from teleport_py.backend.etcd_watch import WatchDecoder, WatchStreamError
from tests.support.backend import ClockedReactor, async_test
from tests.support.etcd import EtcdServer, shared_etcd, unique_prefix
from tests.support.procs import wait_until


class TwoBackendsTests(TestCase):
    @async_test
    async def setUp(self):
        server = await shared_etcd()
        self.url = server.url
        self.prefix = unique_prefix()
        self.first = await EtcdBackend.open(reactor, [self.url], self.prefix)
        self.addCleanup(self.first.close)
        self.second = await EtcdBackend.open(reactor, [self.url], self.prefix)
        self.addCleanup(self.second.close)

    @async_test
    async def test_each_sees_the_others_writes_and_events(self):
        events = []
        self.second.watch("/roles/", events.append)
        stored = await self.first.put("/roles/a", b"1")
        self.assertEqual(await self.second.get("/roles/a"), stored)
        await wait_until(lambda: events, 10)
        self.assertEqual([(event.type, event.item) for event in events], [(PUT, stored)])

    @async_test
    async def test_create_races_across_backends_have_one_winner(self):
        results = await gatherResults([
            backend.create("/cas/root", name)
            for _ in range(3)
            for backend, name in ((self.first, b"first"), (self.second, b"second"))
        ])
        winners = [result for result in results if result is not None]
        self.assertEqual(len(winners), 1)
        self.assertEqual(await self.first.get("/cas/root"), winners[0])

    @async_test
    async def test_prefixes_are_apart(self):
        other = await EtcdBackend.open(reactor, [self.url], unique_prefix())
        self.addCleanup(other.close)
        seen = []
        other.watch("", seen.append)
        await self.first.put("/a", b"1")
        self.assertEqual(await other.get_range(""), [])
        await other.put("/b", b"2")
        self.assertEqual([item.key for item in await self.first.get_range("")], ["/a"])
        self.assertEqual([event.item.key for event in seen], ["/b"])

    def test_envelope(self):
        self.assertEqual(decode_value(encode_value(b"x", 12.5, 3)), (b"x", 12.5, 3))
        self.assertEqual(decode_value(encode_value(b"", None, 0)), (b"", None, 0))
        self.assertRaises(EnvelopeError, decode_value, b"plain value")


class ResumeTests(TestCase):
    """A private etcd that is killed and restarted on the same data."""

    @async_test
    async def setUp(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.server = await EtcdServer(reactor, workdir).start()
        self.addCleanup(self.server.stop)
        self.prefix = unique_prefix()
        # The watcher's reconnect waits on this clock, so the test decides
        # when it resumes: after the writer has written what it must not miss.
        self.clock = Clock()
        self.watcher = await EtcdBackend.open(ClockedReactor(self.clock), [self.server.url], self.prefix)
        self.addCleanup(self.watcher.close)
        self.events = []
        self.watcher.watch("/", self.events.append)

    async def restart_etcd(self):
        await self.server.kill9()
        await self.server.start()
        self.writer = await EtcdBackend.open(reactor, [self.server.url], self.prefix)
        self.addCleanup(self.writer.close)

    async def resume_watcher(self):
        # Past any retry delay (at most RETRY_CAP): the watch reconnects.
        for _ in range(20):
            self.clock.advance(5)

    @async_test
    async def test_no_event_missed_or_repeated_across_a_restart(self):
        before = await self.watcher.put("/a", b"before")
        self.assertEqual([event.item for event in self.events], [before])
        await self.restart_etcd()
        during = [await self.writer.put(f"/b{n}", b"while the watch was down") for n in range(5)]
        deleted = await self.writer.delete("/a")
        self.assertTrue(deleted)
        await self.resume_watcher()
        await wait_until(lambda: len(self.events) >= 7, 20)
        after = await self.watcher.put("/c", b"after")
        self.assertEqual([event.type for event in self.events], [PUT] * 6 + [DELETE, PUT])
        self.assertEqual([event.item for event in self.events if event.type == PUT], [before, *during, after])
        self.assertEqual(self.events[6].item.value, b"before")
        revisions = [event.item.revision for event in self.events]
        self.assertEqual(revisions, sorted(set(revisions)))

    @async_test
    async def test_compaction_while_down_is_answered_by_a_reread(self):
        await self.watcher.put("/a", b"1")
        await self.restart_etcd()
        changed = await self.writer.put("/a", b"2")
        added = await self.writer.put("/b", b"3")
        await self.writer.put("/b", b"4")
        gateway = Gateway(reactor, [self.server.url])
        self.addCleanup(gateway.close)
        current = await gateway.call("kv/range", {"key": "AA==", "count_only": True})
        await gateway.call("kv/compaction", {"revision": current["header"]["revision"], "physical": True})
        await self.resume_watcher()
        await wait_until(lambda: len(self.events) >= 3, 20)
        self.assertEqual([(event.type, event.item.key, event.item.value) for event in self.events[1:]],
                         [(PUT, "/a", b"2"), (PUT, "/b", b"4")])
        self.assertEqual(self.events[1].item, changed)
        self.assertNotEqual(self.events[2].item.revision, added.revision)
        later = await self.watcher.put("/c", b"5")
        self.assertEqual(self.events[-1].item, later)


class LaggingWatchTests(TestCase):
    @async_test
    async def test_a_write_whose_event_is_late_fails_and_the_watch_reopens(self):
        server = await shared_etcd()
        clock = Clock()
        backend = await EtcdBackend.open(ClockedReactor(clock), [server.url], unique_prefix())
        self.addCleanup(backend.close)
        events = []
        backend.watch("/", events.append)
        # The watch connection stops being read, as a half-open one would.
        await wait_until(lambda: backend._store.watch._stream is not None, 10)
        backend._store.watch._stream.transport.pauseProducing()
        writing = backend.put("/a", b"1")
        while not writing.called:
            clock.advance(WATCH_LAG_LIMIT)
            await deferLater(reactor, 0.05)
        with self.assertRaises(EtcdError):
            await writing
        self.assertEqual(events, [])
        # Reopened after its retry delay, it delivers the write's event once.
        while not events:
            clock.advance(5)
            await deferLater(reactor, 0.05)
        later = await backend.put("/b", b"2")
        self.assertEqual([(event.type, event.item.key) for event in events], [(PUT, "/a"), (PUT, "/b")])
        self.assertEqual(events[1].item, later)


class TLSTests(TestCase):
    @async_test
    async def setUp(self):
        self.server = await shared_etcd(tls=True)

    @async_test
    async def test_client_certificate_accepted(self):
        backend = await EtcdBackend.open(reactor, [self.server.url], unique_prefix(), tls=self.server.client_tls)
        self.addCleanup(backend.close)
        stored = await backend.put("/ca/user", b"secret")
        self.assertEqual(await backend.get("/ca/user"), stored)

    @async_test
    async def test_certificate_from_another_ca_refused(self):
        with self.assertRaises(EtcdUnavailable) as caught:
            await EtcdBackend.open(reactor, [self.server.url], unique_prefix(), tls=self.server.other_client_tls)
        self.assertIn("bad certificate", str(caught.exception))

    @async_test
    async def test_plain_http_to_a_tls_member_refused(self):
        with self.assertRaises(EtcdUnavailable):
            await EtcdBackend.open(reactor, [self.server.url.replace("https:", "http:")], unique_prefix())

    def test_https_without_certificates_is_a_configuration_error(self):
        self.assertRaises(ValueError, Gateway, reactor, [self.server.url])


class _FlakyEtcd(Resource):
    """Answers etcd's "leader changed" (code 14) ``failures`` times, then an empty range."""

    isLeaf = True

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures
        self.calls = 0

    def render_POST(self, request):
        self.calls += 1
        if self.calls <= self.failures:
            request.setResponseCode(503)
            return json.dumps({"error": "etcdserver: leader changed", "code": 14,
                               "message": "etcdserver: leader changed"}).encode()
        return json.dumps({"header": {"revision": "7"}}).encode()


class UnavailableTests(TestCase):
    """etcd's "unavailable" during an election: a read is tried again until
    a leader answers; a write is not (it may have applied), and the error is
    a BackendUnavailableError, which Auth answers with 503 "try again"."""

    async def gateway(self, failures: int) -> tuple[Gateway, _FlakyEtcd]:
        etcd = _FlakyEtcd(failures)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(etcd))
        self.addCleanup(port.stopListening)
        gateway = Gateway(reactor, [f"http://127.0.0.1:{port.getHost().port}"])
        self.addCleanup(gateway.close)
        return gateway, etcd

    async def test_a_read_is_retried_through_an_election(self):
        gateway, etcd = await self.gateway(failures=3)
        answer = await gateway.call("kv/range", {"key": "a2V5"}, read=True)
        self.assertEqual(answer["header"]["revision"], "7")
        self.assertEqual(etcd.calls, 4)

    async def test_a_read_gives_up_after_the_retries(self):
        gateway, etcd = await self.gateway(failures=100)
        with self.assertRaises(BackendUnavailableError) as caught:
            await gateway.call("kv/range", {"key": "a2V5"}, read=True)
        self.assertIn("leader changed (code 14)", str(caught.exception))
        self.assertEqual(etcd.calls, len(READ_RETRY_DELAYS) + 1)

    async def test_a_write_is_not_retried(self):
        gateway, etcd = await self.gateway(failures=1)
        with self.assertRaises(EtcdUnavailable):
            await gateway.call("kv/txn", {"compare": [], "success": []})
        self.assertEqual(etcd.calls, 1)


def _line(result: dict) -> bytes:
    return json.dumps({"result": result}).encode() + b"\n"


class WatchDecoderTests(TestCase):
    def test_fragments_are_joined(self):
        decoder = WatchDecoder()
        first = {"header": {"revision": "9"}, "fragment": True, "events": [{"kv": {"mod_revision": "9"}}]}
        last = {"header": {"revision": "9"}, "events": [{"kv": {"mod_revision": "9", "key": "eA=="}}]}
        self.assertEqual(decoder.feed(_line(first)), [])
        [response] = decoder.feed(_line(last))
        self.assertEqual(len(response.events), 2)
        self.assertEqual(response.revision, 9)

    def test_lines_are_bounded(self):
        decoder = WatchDecoder(max_line=100)
        self.assertRaises(WatchStreamError, decoder.feed, b"x" * 101)

    def test_fragments_are_bounded(self):
        decoder = WatchDecoder(max_response=300)
        fragment = _line({"fragment": True, "events": [{"kv": {"value": "A" * 150}}]})
        decoder.feed(fragment)
        self.assertRaises(WatchStreamError, decoder.feed, fragment)

    def test_errors_and_compaction(self):
        self.assertRaises(WatchStreamError, WatchDecoder().feed, b'{"error": {"message": "no leader"}}\n')
        [cancelled] = WatchDecoder().feed(_line({"canceled": True, "compact_revision": "40"}))
        self.assertEqual((cancelled.canceled, cancelled.compact_revision), (True, 40))

    @given(st.binary(max_size=300))
    def test_any_bytes_decode_or_fail_cleanly(self, data):
        try:
            WatchDecoder().feed(data + b"\n")
        except WatchStreamError:
            pass

    @given(st.lists(st.integers(1, 50), max_size=10))
    def test_chunking_does_not_matter(self, cuts):
        stream = b"".join(_line({"header": {"revision": str(n)}, "events": [{"kv": {"mod_revision": str(n)}}]})
                          for n in range(1, 6))
        decoder, responses, start = WatchDecoder(), [], 0
        for cut in cuts + [len(stream)]:
            responses += decoder.feed(stream[start:start + cut])
            start += cut
        responses += decoder.feed(stream[start:])
        self.assertEqual([response.revision for response in responses], [1, 2, 3, 4, 5])


KEYS = st.text(alphabet="ab/%\u00e9", min_size=1, max_size=3)
TTLS = st.none() | st.sampled_from([0.5, 2.0])


class _TwoServers(RuleBasedStateMachine):
    """Two EtcdBackends on one prefix (two Auth servers), each call made
    through either at random, checked against one dict: any server answers
    any call with the same result."""

    url: str

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        clocked = ClockedReactor(self.clock)
        prefix = unique_prefix("two")
        self.backends = [self._call(EtcdBackend.open, clocked, [self.url], prefix) for _ in range(2)]
        self.model: dict[str, tuple[bytes, float | None]] = {}

    @staticmethod
    def _call(function, *args, **kwargs):
        return blockingCallFromThread(reactor, function, *args, **kwargs)

    def _live(self):
        now = self._call(self.clock.seconds)
        return {key: value for key, (value, expires) in self.model.items() if expires is None or expires > now}

    def _write(self, through, method, key, value, ttl, allowed, *extra):
        expires = None if ttl is None else self._call(self.clock.seconds) + ttl
        result = self._call(getattr(self.backends[through], method), key, *extra, value, expires)
        assert (result is not None) == allowed, (method, key, result)
        if allowed:
            assert (result.key, result.value, result.expires) == (key, value, expires)
            self.model[key] = (value, expires)

    @rule(through=st.integers(0, 1), key=KEYS, value=st.binary(max_size=2), ttl=TTLS)
    def put(self, through, key, value, ttl):
        self._write(through, "put", key, value, ttl, True)

    @rule(through=st.integers(0, 1), key=KEYS, value=st.binary(max_size=2), ttl=TTLS)
    def create(self, through, key, value, ttl):
        self._write(through, "create", key, value, ttl, key not in self._live())

    @rule(through=st.integers(0, 1), key=KEYS, value=st.binary(max_size=2), ttl=TTLS)
    def update(self, through, key, value, ttl):
        self._write(through, "update", key, value, ttl, key in self._live())

    @rule(through=st.integers(0, 1), key=KEYS, value=st.binary(max_size=2))
    def compare_and_swap(self, through, key, value):
        current = self._live().get(key)
        expected = current if current is not None else b"absent"
        self._write(through, "compare_and_swap", key, value, None, current is not None, expected)

    @rule(through=st.integers(0, 1), key=KEYS)
    def delete(self, through, key):
        live = key in self._live()
        assert self._call(self.backends[through].delete, key) == live
        if live:
            del self.model[key]

    @rule(seconds=st.sampled_from([0.5, 1.0]))
    def advance(self, seconds):
        self._call(self.clock.advance, seconds)

    @invariant()
    def both_read_the_model(self):
        live = self._live()
        expected = [(key, live[key]) for key in sorted(live)]
        for backend in self.backends:
            assert [(item.key, item.value) for item in self._call(backend.get_range, "")] == expected

    def teardown(self):
        for backend in self.backends:
            self._call(backend.close)


class TwoServersModelTests(TestCase):
    @async_test
    async def test_two_backends_on_one_prefix_agree_with_a_dict(self):
        server = await shared_etcd()
        machine = type("TwoServers", (_TwoServers,), {"url": server.url})
        options = settings(max_examples=25, stateful_step_count=20, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
        await deferToThread(run_state_machine_as_test, machine, settings=options)
