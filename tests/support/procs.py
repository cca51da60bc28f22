"""
Run real processes (servers, kubectl, tctl) from trial tests on the real reactor.

Long-lived processes write straight into a log file (no pipes), so trial's
dirty-reactor check does not see them between tests and a shared control plane
can outlive the test that started it; the log is what a failing test shows.
"""

import os
import re
import shutil
import socket
from collections import deque

import attr
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial import unittest

log = Logger()

LOG_TAIL_LINES = 40

# A test runner killed with SIGKILL must not leave servers behind.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


#: Every port free_port handed out in this test run. The kernel may give the
#: same free port to two bind(0) calls in a row (it did: a deployment's auth
#: and proxy were both configured on one port), so none is handed out twice.
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago and that
    no earlier call in this run returned."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def tcp_connections(pid: int, remote_port: int) -> int:
    """How many established TCP connections process ``pid`` holds to
    ``remote_port`` on this host (its socket inodes matched in /proc/net)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_address, state, inode = fields[2], fields[3], fields[9]
                if state == "01" and inode in inodes and int(remote_address.rsplit(":", 1)[1], 16) == remote_port:
                    count += 1
    return count


def running_under_ci():
    """CI=true turns every missing-tool skip into a failure."""
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name_or_path, path=None):
    """
    Find an executable, or stop the test: skip it on a developer machine,
    fail it under CI=true, where a missing tool means a broken CI image.
    """
    if os.sep in name_or_path:
        found = name_or_path if os.access(name_or_path, os.X_OK) else None
    else:
        found = shutil.which(name_or_path, path=path)
    if found:
        return found
    message = f"required tool {name_or_path!r} not found (searched {path or 'PATH'})"
    if running_under_ci():
        raise unittest.FailTest(message + "; under CI=true this is a failure, run scripts/test")
    raise unittest.SkipTest(message)


def default_reactor(reactor):
    """Helpers take a reactor for tests that bring their own; trial's global one otherwise."""
    if reactor is None:
        from twisted.internet import reactor
    return reactor


def _exit_code(reason):
    """Shell convention: the exit status, or minus the signal that killed it."""
    if reason.check(error.ProcessDone):
        return 0
    if reason.value.signal is not None:
        return -reason.value.signal
    return reason.value.exitCode


def _executable(args):
    program = args[0]
    if os.sep in program:
        return program
    return shutil.which(program) or program


class WaitTimeout(Exception):
    """A polled condition did not become true in time."""


class ProcessWaitError(Exception):
    """A managed process died or did not become ready in time; carries its log tail."""


@defer.inlineCallbacks
def wait_until(predicate, timeout, interval=0.1, reactor=None):
    """Poll ``predicate`` (may return a Deferred) until true; fails with ``WaitTimeout``."""
    reactor = default_reactor(reactor)
    deadline = reactor.seconds() + timeout
    while not (yield defer.maybeDeferred(predicate)):
        if reactor.seconds() >= deadline:
            raise WaitTimeout(f"condition not met after {timeout} seconds")
        yield deferLater(reactor, interval)


class SharedResult:
    """A result many callers can wait for, each with its own Deferred."""

    def __init__(self):
        self._waiting = []
        self.result = None
        self.fired = False

    def fire(self, result):
        self.fired, self.result = True, result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)

    def wait(self):
        if self.fired:
            return defer.succeed(self.result)
        d = defer.Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d


class _EndWatcher(protocol.ProcessProtocol):
    def __init__(self, on_end):
        self._on_end = on_end

    def processEnded(self, reason):
        self._on_end(_exit_code(reason))


class ManagedProcess:
    """
    A long-running child process for a test: spawned with its output in
    ``log_path``, waited on with timeouts that report the log, and stopped
    with SIGTERM, then SIGKILL after a grace period.
    """

    def __init__(self, args, log_path, env=None, cwd=None, reactor=None):
        self.args = [os.fspath(a) for a in args]
        self.log_path = os.fspath(log_path)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._reactor = default_reactor(reactor)
        self._transport = None
        self._end = SharedResult()

    def __repr__(self):
        return f"<ManagedProcess {self.args[0]} pid={self.pid}>"

    @property
    def pid(self):
        return self._transport.pid if self._transport else None

    @property
    def running(self):
        return self._transport is not None and not self._end.fired

    def start(self):
        """Spawn the process; returns self so ``ManagedProcess(...).start()`` reads well."""
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        argv = _DIE_WITH_PARENT + self.args
        with open(self.log_path, "ab") as out, open(os.devnull, "rb") as stdin:
            self._transport = self._reactor.spawnProcess(
                _EndWatcher(self._ended),
                _executable(argv),
                argv,
                env=self.env,
                path=self.cwd,
                childFDs={0: stdin.fileno(), 1: out.fileno(), 2: out.fileno()},
            )
        log.info("started {args} pid={pid} log={log_path}", args=self.args, pid=self.pid, log_path=self.log_path)
        return self

    def _ended(self, code):
        log.info("process {args} pid={pid} exited code={code}", args=self.args[0], pid=self.pid, code=code)
        self._end.fire(code)

    @property
    def exited(self):
        """A new Deferred firing with the exit code (negative: killed by that signal)."""
        return self._end.wait()

    def output(self):
        """Everything the process has written so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def log_tail(self, lines=LOG_TAIL_LINES):
        tail = deque(self.output().decode("utf-8", "replace").splitlines(), maxlen=lines)
        return "\n".join(tail)

    def _failure(self, what):
        return ProcessWaitError(f"{self.args[0]} {what}; last lines of {self.log_path}:\n{self.log_tail()}")

    def wait_for(self, predicate, timeout, interval=0.1):
        """
        Poll ``predicate`` (may return a Deferred) until it is true; fail with
        the log tail if the process exits first or ``timeout`` seconds pass.
        """

        def ready_unless_dead():
            if self._end.fired:
                raise self._failure(f"exited with code {self._end.result} while waiting")
            return predicate()

        def explain_timeout(failure):
            failure.trap(WaitTimeout)
            raise self._failure(f"not ready after {timeout} seconds")

        d = wait_until(ready_unless_dead, timeout, interval, reactor=self._reactor)
        return d.addErrback(explain_timeout)

    def wait_for_output(self, regex, timeout):
        """Wait until the log matches ``regex`` (bytes or str); fires with the match."""
        pattern = re.compile(regex.encode() if isinstance(regex, str) else regex, re.MULTILINE)
        found = []

        def matched():
            match = pattern.search(self.output())
            found[:] = [match]
            return match is not None

        return self.wait_for(matched, timeout).addCallback(lambda _: found[0])

    def wait_for_port(self, port, timeout, host="127.0.0.1"):
        """Wait until something accepts TCP connections on ``host:port``."""

        def connected(proto):
            proto.transport.abortConnection()
            return True

        def refused(failure):
            failure.trap(error.ConnectError, error.TimeoutError)
            return False

        def accepting():
            endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=max(timeout, 1))
            d = endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            return d.addCallbacks(connected, refused)

        return self.wait_for(accepting, timeout)

    def signal(self, name):
        """Send a signal if the process still runs (it may just have exited)."""
        if self.running:
            try:
                self._transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after ``grace`` seconds; fires with the exit code."""
        if self._transport is None:
            return defer.succeed(None)
        if not self.running:
            return self.exited
        self.signal("TERM")
        kill = self._reactor.callLater(grace, self.signal, "KILL")
        exited = self.exited

        def cancel_kill(code):
            if kill.active():
                kill.cancel()
            return code

        return exited.addBoth(cancel_kill)

    def kill9(self):
        """SIGKILL at once, as a crash would; fires with the exit code."""
        if self._transport is None:
            return defer.succeed(None)
        self.signal("KILL")
        return self.exited


_shared_services: dict = {}


def shared_service(reactor, key, make):
    """One service per reactor and ``key`` for the whole trial run: ``make()``
    builds it (with ``start()`` firing when ready and ``stop()``), started on
    first use and stopped at reactor shutdown; fires with what ``start()``
    fired with (or its failure, for every caller)."""
    reactor = default_reactor(reactor)
    key = (reactor, key)
    if key not in _shared_services:
        service = make()
        started = SharedResult()
        _shared_services[key] = started
        reactor.addSystemEventTrigger("before", "shutdown", service.stop)
        service.start().addBoth(started.fire)
    return _shared_services[key].wait()


@attr.frozen
class Result:
    """What a finished short command produced."""

    code: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self):
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self):
        return self.stderr.decode("utf-8", "replace")


class CommandTimeout(Exception):
    """A short command ran longer than its timeout and was killed."""


class _Collector(protocol.ProcessProtocol):
    def __init__(self, stdin, done):
        self._stdin = stdin
        self._done = done
        self._out = []
        self._err = []

    def connectionMade(self):
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self._out.append(data)

    def errReceived(self, data):
        self._err.append(data)

    def processEnded(self, reason):
        self._done(Result(_exit_code(reason), b"".join(self._out), b"".join(self._err)))


def run(args, env=None, stdin=b"", timeout=60.0, cwd=None, reactor=None):
    """
    Run a short command to completion without blocking the reactor; fires
    with a ``Result`` whatever the exit code, fails with ``CommandTimeout``.
    """
    reactor = default_reactor(reactor)
    args = [os.fspath(a) for a in args]
    finished = defer.Deferred()
    transport = reactor.spawnProcess(
        _Collector(stdin, finished.callback),
        _executable(args),
        args,
        env=dict(os.environ if env is None else env),
        path=cwd,
    )

    def kill():
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    timer = reactor.callLater(timeout, kill)

    def check(result):
        if timer.active():
            timer.cancel()
            return result
        raise CommandTimeout(f"{args} killed after {timeout} seconds; stderr: {result.err[-2000:]}")

    return finished.addCallback(check)


__all__ = [
    "CommandTimeout",
    "ManagedProcess",
    "ProcessWaitError",
    "Result",
    "free_port",
    "require_tool",
    "WaitTimeout",
    "run",
    "running_under_ci",
    "shared_service",
    "wait_until",
]
