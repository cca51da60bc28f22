"""teleport_py.lifecycle: children started in order and stopped in reverse
within shutdown_timeout; listeners drain; start-up failures are one line."""
from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from teleport_py.config import ConfigError
from teleport_py.lifecycle import Listener, RoleService, StartError, Step, finish_http
from teleport_py.quiet import connect_protocol


class Recorder:
    def __init__(self):
        self.calls: list[str] = []

    def step(self, name: str, stop_result=None) -> Step:
        return Step(name, start=lambda: self.calls.append(f"start {name}"),
                    stop=lambda: (self.calls.append(f"stop {name}"), stop_result)[1])


class Role(RoleService):
    role = name = "test"

    def __init__(self, clock, children, fail_with=None):
        super().__init__(clock, shutdown_timeout=10)
        self.children = children
        self.fail_with = fail_with

    async def compose(self):
        for child in self.children:
            await self.start_child(child)
        if self.fail_with is not None:
            raise self.fail_with


class RoleServiceTests(SynchronousTestCase):
    def test_started_in_order_stopped_in_reverse(self):
        clock, rec = Clock(), Recorder()
        role = Role(clock, [rec.step("a"), rec.step("b"), rec.step("c")])
        role.startService()
        self.assertIs(self.successResultOf(role.ready), role)
        stopped = role.stopService()
        self.successResultOf(stopped)
        self.assertEqual(rec.calls, ["start a", "start b", "start c", "stop c", "stop b", "stop a"])

    def test_a_child_that_does_not_stop_is_left_at_the_deadline(self):
        """shutdown_timeout bounds the whole stop: a hung child is cut off
        (plus one second) and the ones before it still stop."""
        clock, rec = Clock(), Recorder()
        hung = defer.Deferred()
        role = Role(clock, [rec.step("a"), rec.step("hung", stop_result=hung)])
        role.startService()
        stopped = role.stopService()
        self.assertNoResult(stopped)
        clock.advance(10.5)
        self.assertNoResult(stopped)
        clock.advance(0.6)
        self.successResultOf(stopped)
        self.assertEqual(rec.calls[-2:], ["stop hung", "stop a"])
        self.flushLoggedErrors()

    def test_a_child_waited_for_is_started_before_the_next(self):
        clock, rec = Clock(), Recorder()
        slow = Step("slow")
        slow.ready = defer.Deferred()
        role = Role(clock, [rec.step("a"), slow, rec.step("b")])
        role.startService()
        self.assertEqual(rec.calls, ["start a"])
        slow.ready.callback(None)
        self.assertEqual(rec.calls, ["start a", "start b"])
        self.successResultOf(role.ready)

    def test_stopped_while_starting_stops_what_started(self):
        clock, rec = Clock(), Recorder()
        slow = Step("slow")
        slow.ready = defer.Deferred()
        role = Role(clock, [rec.step("a"), slow, rec.step("b")])
        role.startService()
        self.successResultOf(role.stopService())
        self.assertEqual(rec.calls, ["start a", "stop a"])
        self.failureResultOf(role.ready, defer.CancelledError)

    def failed_start_log(self, error):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock, rec = Clock(), Recorder()
        role = Role(clock, [rec.step("a")], fail_with=error)
        role.startService()
        self.failureResultOf(role.ready, type(error))
        return [e for e in events if "failed to start" in e.get("log_format", "")]

    def test_a_start_error_is_one_line_without_traceback(self):
        for error, expected in [
            (StartError("kubernetes_service.kubeconfig_file: cannot read /x"), "kubeconfig_file: cannot read /x"),
            (ConfigError("teleport.shutdown_timeout", "must be more than 0s"), "teleport.shutdown_timeout"),
        ]:
            (event,) = self.failed_start_log(error)
            self.assertNotIn("log_failure", event)
            self.assertIn(expected, event["reason"])

    def test_a_bug_keeps_its_traceback(self):
        (event,) = self.failed_start_log(ZeroDivisionError("bug"))
        self.assertIn("log_failure", event)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_a_nested_role_failure_is_logged_once(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        inner = Role(clock, [], fail_with=StartError("port taken"))
        inner.name = "inner"
        outer = Role(clock, [inner])
        outer.startService()
        self.failureResultOf(outer.ready, StartError)
        self.assertEqual(len([e for e in events if "failed to start" in e.get("log_format", "")]), 1)


class SlowResource(resource.Resource):
    """Answers after ``delay`` seconds (None: never, until the test says)."""

    isLeaf = True

    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.pending = []

    def render_GET(self, request):
        self.pending.append(request)
        if self.delay is not None:
            reactor.callLater(self.delay, self.answer, request)
        return server.NOT_DONE_YET

    def answer(self, request):
        if not request.finished and not request._disconnected:
            request.write(b"done")
            request.finish()


class Client(Protocol):
    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(None)


class ListenerDrainTests(TestCase):
    """A real listening port on the real reactor."""

    async def listen(self, delay):
        slow = SlowResource(delay)
        site = server.Site(slow)
        channels = {}

        class Tracking(WrappingFactory):
            def buildProtocol(self, addr):
                wrapper = super().buildProtocol(addr)
                channels[wrapper] = wrapper.wrappedProtocol
                return wrapper

        listener = Listener(reactor, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Tracking(site),
                            setting="test.listen_addr", address="127.0.0.1:0",
                            finish=lambda connection: finish_http(channels.get(connection)))
        listener.startService()
        port = await listener.ready
        self.addCleanup(lambda: listener.port.stopListening() if listener.running else None)
        return listener, slow, port.getHost().port

    async def connect(self, port, request=b""):
        client = Client()
        await connect_protocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        if request:
            client.transport.write(request)
        return client

    async def test_in_flight_requests_finish_idle_connections_close(self):
        listener, slow, port = await self.listen(delay=0.5)
        idle = await self.connect(port)
        busy = await self.connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while not slow.pending:
            await defer.Deferred(lambda d: None).addTimeout(0.01, reactor).addErrback(lambda f: None)
        started = reactor.seconds()
        stopping = listener.stop_by(reactor.seconds() + 5)
        await idle.closed  # idle: closed at once
        self.assertLess(reactor.seconds() - started, 0.4)
        await stopping
        self.assertGreaterEqual(reactor.seconds() - started, 0.4)  # waited for the response
        await busy.closed
        self.assertIn(b"200 OK", busy.received)
        self.assertTrue(busy.received.endswith(b"done") or b"done" in busy.received)
        with self.assertRaises(Exception):
            await self.connect(port)  # no longer accepting

    async def test_requests_still_running_at_the_deadline_are_cut(self):
        listener, slow, port = await self.listen(delay=None)
        busy = await self.connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while not slow.pending:
            await defer.Deferred(lambda d: None).addTimeout(0.01, reactor).addErrback(lambda f: None)
        started = reactor.seconds()
        await listener.stop_by(reactor.seconds() + 0.3)
        await busy.closed
        self.assertLess(reactor.seconds() - started, 2.0)
        self.assertEqual(busy.received, b"")

    async def test_a_taken_port_is_a_start_error_naming_the_setting(self):
        listener, _, port = await self.listen(delay=0)
        second = Listener(reactor, TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"), WrappingFactory(server.Site(resource.Resource())),
                          setting="auth_service.listen_addr", address=f"127.0.0.1:{port}")
        second.startService()
        with self.assertRaises(StartError) as e:
            await second.ready
        self.assertIn(f"auth_service.listen_addr 127.0.0.1:{port}", str(e.exception))
        self.assertIn("in use", str(e.exception))
        await listener.stop_by(reactor.seconds())
