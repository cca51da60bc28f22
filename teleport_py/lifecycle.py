"""How every role starts and stops: one order, declared once.

A role (``teleport-auth``, ``teleport-proxy``, ``teleport-kube``, and the
all-in-one ``teleport`` that holds them) is a ``RoleService``: a
MultiService whose ``compose()`` adds its children one after another, each
started and, if it starts asynchronously (a listener, a join), awaited
before the next. Stopping runs the same list backwards, each child awaited,
all within one deadline: ``teleport.shutdown_timeout`` after the stop began.
A child that can drain (``Drainable.stop_by(deadline)``: a listener stops
accepting and lets open connections finish) gets that deadline and cuts what
is left when it passes; any other child is simply stopped.

Start-up failures a person fixes (``StartError`` and the config's and
kubeconfig's own errors) are logged as one line naming the cause and the
setting or flag to change; anything else is a bug and keeps its traceback.
Under twistd the reactor then stops and the process exits 1 (``run_under_twistd``).
SIGTERM and SIGINT stop the reactor, which drains the services as above,
and twistd exits 0; a second signal cuts the drain short.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Callable, NoReturn

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleport_py.config import DEFAULT_SHUTDOWN_TIMEOUT, ConfigError

log = Logger()

#: How often a drain looks whether the last connections have closed.
DRAIN_POLL = 0.05


class StartError(Exception):
    """A start-up failure a person fixes: the message is the one line logged,
    naming the cause and the setting or flag to change."""


def start_failure_line(failure: Failure) -> str | None:
    """The one line for a failure a person fixes; None for a bug."""
    if failure.check(StartError, ConfigError):
        return str(failure.value)
    if failure.check(CannotListenError):
        error = failure.value
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return f"cannot listen on {error.interface or '0.0.0.0'}:{error.port}: {reason}"
    return None


async def wait_until(reactor, done: Callable[[], bool], deadline: float, interval: float = DRAIN_POLL) -> bool:
    """Poll ``done`` until it is true (True) or ``deadline`` passes (False)."""
    while not done():
        remaining = deadline - reactor.seconds()
        if remaining <= 0:
            return False
        await deferLater(reactor, min(interval, remaining), lambda: None)
    return True


class Drainable(service.Service):
    """A child that finishes in-flight work before it stops, until a deadline.
    ``stop_by`` calls ``stopping()`` first (no longer running)."""

    def stop_by(self, deadline: float) -> Deferred:
        raise NotImplementedError

    def stopping(self) -> None:
        service.Service.stopService(self)

    def stopService(self) -> Deferred:
        return self.stop_by(self.reactor.seconds())


class Step(service.Service):
    """A child made of two callables: ``start()`` and ``stop()`` (which may
    return a Deferred). For collaborators that are not services themselves."""

    def __init__(self, name: str, start: Callable[[], object] | None = None, stop: Callable[[], object] | None = None):
        self.name = name
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self):
        super().stopService()
        if self._stop is not None:
            return maybeDeferred(self._stop)
        return None


class Listener(Drainable):
    """One server endpoint. ``ready`` fires once it listens. On stop it stops
    accepting, asks every open connection to finish (``finish(connection)``,
    e.g. close an idle HTTP connection) and waits for those ``waited_for``
    to close; at the deadline it aborts the ones still open.

    ``factory`` must be a WrappingFactory (TLSMemoryBIOFactory is one): its
    ``protocols`` are the open connections. ``setting`` names the config key
    of the address, for the one-line error when the port is taken."""

    def __init__(self, reactor, endpoint, factory, *, setting: str, address: str,
                 finish: Callable[[object], None] = lambda connection: None,
                 waited_for: Callable[[object], bool] = lambda connection: True):
        self.name = setting
        self.reactor = reactor
        self.endpoint = endpoint
        self.factory = factory
        self.setting = setting
        self.address = address
        self.finish = finish
        self.waited_for = waited_for
        self.port = None
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        self.endpoint.listen(self.factory).addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port) -> None:
        self.port = port
        self.ready.callback(port)

    def _cannot_listen(self, failure: Failure) -> None:
        if failure.check(CannotListenError):
            error = failure.value.socketError
            reason = getattr(error, "strerror", None) or str(error)
            failure = Failure(StartError(f"{self.setting} {self.address}: {reason}"))
        self.ready.errback(failure)

    def connections(self) -> list:
        return list(self.factory.protocols)

    def stop_by(self, deadline: float) -> Deferred:
        self.stopping()
        return Deferred.fromCoroutine(self._drain(deadline))

    async def _drain(self, deadline: float) -> None:
        if self.port is not None:
            await self.port.stopListening()
        for connection in self.connections():
            self.finish(connection)
        drained = await wait_until(
            self.reactor, lambda: not any(self.waited_for(c) for c in self.connections()), deadline)
        if not drained:
            log.info("{setting}: shutdown_timeout reached, closing {count} open connection(s)",
                     setting=self.setting, count=sum(1 for c in self.connections() if self.waited_for(c)))
        for connection in self.connections():
            if self.waited_for(connection):
                connection.abortConnection()


def finish_http(protocol) -> None:
    """Close an idle twisted.web connection now, a busy one after its
    responses. Site builds a protocol that picks HTTP/1.1 or h2 and keeps
    the HTTPChannel as ``_channel``; h2 channels are left to the deadline."""
    channel = getattr(protocol, "_channel", protocol)
    if not hasattr(channel, "requests") or not hasattr(channel, "persistent"):
        return
    if not channel.requests:
        channel.loseConnection()
    else:
        channel.persistent = False


class RoleService(service.MultiService):
    """A role: ``compose()`` adds children in start order with ``start_child``;
    stopping is that order reversed, within ``shutdown_timeout``. ``ready``
    fires with this service once every child is up, or fails with the
    reason it could not start (whoever started it handles that)."""

    log = Logger()
    #: "auth", "proxy", ... in log lines.
    role = "teleport"

    def __init__(self, reactor, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT):
        super().__init__()
        self.reactor = reactor
        self.shutdown_timeout = shutdown_timeout
        self.ready: Deferred = Deferred()
        self._starting: Deferred | None = None

    async def compose(self) -> None:
        raise NotImplementedError

    async def start_child(self, child: service.IService):
        """Start ``child`` now (after the ones before it) and wait until it is
        up; a child added before the start (the all-in-one's roles) is started."""
        if child.parent is self:
            child.startService()
        else:
            child.setServiceParent(self)
        ready = getattr(child, "ready", None)
        if isinstance(ready, Deferred):
            await observe(ready)
        return child

    def startService(self) -> None:
        service.Service.startService(self)
        self._starting = Deferred.fromCoroutine(self.compose())
        self._starting.addCallbacks(self._started, self._failed)

    def _started(self, _) -> None:
        self.ready.callback(self)

    def _failed(self, failure: Failure) -> None:
        stopped_while_starting = failure.check(CancelledError) and not self.running
        if not stopped_while_starting and not getattr(failure.value, "_teleport_reported", False):
            line = start_failure_line(failure)
            if line is not None:
                self.log.error("{role} service failed to start: {reason}", role=self.role, reason=line)
            else:
                self.log.failure("{role} service failed to start", failure, role=self.role)
            try:
                failure.value._teleport_reported = True  # a parent role logs it no second time
            except AttributeError:
                pass
        self.ready.errback(failure)

    def stopService(self) -> Deferred:
        return self.stop_by(self.reactor.seconds() + self.shutdown_timeout)

    def stop_by(self, deadline: float) -> Deferred:
        if not self.running:
            return succeed(None)
        service.Service.stopService(self)
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        return Deferred.fromCoroutine(self._stop_children(deadline))

    async def _stop_children(self, deadline: float) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            if isinstance(child, (Drainable, RoleService)):
                stopping = child.stop_by(deadline)
            else:
                stopping = maybeDeferred(child.stopService)
            # Whatever a child does, it gets no longer than the role's deadline (plus a moment to abort).
            stopping.addTimeout(max(0.0, deadline - self.reactor.seconds()) + 1.0, self.reactor)
            try:
                await stopping
            except Exception:
                self.log.failure("{role}: stopping {child} failed", role=self.role, child=child.name)


def observe(d: Deferred) -> Deferred:
    """A new Deferred with d's result; d keeps a success for its other
    waiters, and a failure is handed on (not left unhandled in d)."""
    observed: Deferred = Deferred()

    def relay(result):
        if isinstance(result, Failure):
            observed.errback(result)
            return None
        observed.callback(result)
        return result

    d.addBoth(relay)
    return observed


def run_under_twistd(role: RoleService) -> RoleService:
    """What twistd needs beyond the service: exit 1 when it cannot start, and
    SIGTERM/SIGINT as a drain (stop the reactor, exit 0) rather than
    twistd's default of re-raising the signal at exit. Only for services made
    by twistd (the plugins' makeService without a reactor), never in tests."""
    reactor = role.reactor

    def failed(failure) -> None:
        atexit.register(_exit_failed)
        # Before the reactor runs (a bad kubeconfig fails at once) stopping it
        # must wait until it runs, or the process would stay up doing nothing.
        reactor.callWhenRunning(reactor.stop)

    role.ready.addErrback(failed)
    reactor.callWhenRunning(_install_signal_handlers, reactor, role)
    return role


def _install_signal_handlers(reactor, role: RoleService) -> None:
    """Replaces the reactor's own SIGTERM/SIGINT handlers (installed as it
    started): a first signal stops the reactor, which drains the services;
    a second one cuts the drain short."""
    signals: list[int] = []

    def received(number, frame) -> None:
        signals.append(number)
        name = signal.Signals(number).name
        if len(signals) == 1:
            log.info("received {signal}: stopping within shutdown_timeout={timeout}s",
                     signal=name, timeout=role.shutdown_timeout)
            reactor.callFromThread(reactor.stop)
        else:
            log.info("received {signal} again: stopping now", signal=name)
            reactor.callFromThread(_exit_now)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, received)


def refuse(line: str) -> NoReturn:
    """A start-up error found before any service exists (the config file,
    the flags): one line on stderr, exit 1."""
    sys.stderr.write(f"ERROR: {line}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
