"""When a kubectl connection must end though it is still open: at the expiry
of the user's certificate (``disconnect_expired_cert``) and after
``client_idle_timeout`` without a byte either way, as Teleport's role options
and cluster defaults say.

A certificate is checked when a connection starts, but a watch, an exec
session, a port-forward or an HTTP/2 connection carrying many requests can
outlive it by hours; ``ConnectionWatch`` ends them at the moment it expires.
Which limits apply is ``session_limits``: Teleport's rule, where a role can
only tighten the cluster's defaults (``AdjustDisconnectExpiredCert``,
``AdjustClientIdleTimeout``).
"""
from __future__ import annotations

from typing import Awaitable, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import directlyProvides, providedBy

from teleport_py.resources.role import Role

log = Logger()

CERT_EXPIRED = "client certificate expired"
IDLE = "client idle timeout"
#: After asking a stream to close, how long before it is aborted.
CLOSE_GRACE = 5.0


@attrs.frozen
class ClusterDefaults:
    """``auth_service.client_idle_timeout`` and ``auth_service.disconnect_expired_cert``."""

    #: Seconds; 0: no idle timeout unless a role sets one.
    client_idle_timeout: float = 0.0
    disconnect_expired_cert: bool = True


class ClusterDefaultsCache:
    """The cluster's defaults as Auth's ping says (``fetch`` returns its
    JSON), kept ``ttl`` seconds; fields missing or malformed (an older
    Auth) read as the defaults of ``ClusterDefaults``."""

    def __init__(self, reactor, fetch: Callable[[], Awaitable[dict]], ttl: float = 60.0):
        self._reactor = reactor
        self._fetch = fetch
        self._ttl = ttl
        self._cached: tuple[float, ClusterDefaults] | None = None

    async def __call__(self) -> ClusterDefaults:
        now = self._reactor.seconds()
        if self._cached is None or self._cached[0] <= now:
            self._cached = (now + self._ttl, _defaults_from_ping(await self._fetch()))
        return self._cached[1]


def _defaults_from_ping(ping) -> ClusterDefaults:
    fallback = ClusterDefaults()
    ping = ping if isinstance(ping, dict) else {}
    idle, disconnect = ping.get("client_idle_timeout"), ping.get("disconnect_expired_cert")
    return ClusterDefaults(
        client_idle_timeout=float(idle) if isinstance(idle, (int, float)) and not isinstance(idle, bool) and idle >= 0
        else fallback.client_idle_timeout,
        disconnect_expired_cert=disconnect if isinstance(disconnect, bool) else fallback.disconnect_expired_cert,
    )


@attrs.frozen
class SessionLimits:
    disconnect_expired_cert: bool
    #: Seconds; 0: none.
    client_idle_timeout: float


def session_limits(roles: Iterable[Role], defaults: ClusterDefaults) -> SessionLimits:
    """Any role asking to disconnect at expiry wins; the shortest idle timeout set anywhere wins."""
    disconnect = defaults.disconnect_expired_cert
    idle = defaults.client_idle_timeout
    for role in roles:
        disconnect = disconnect or role.options.disconnect_expired_cert
        role_idle = role.options.client_idle_timeout
        if role_idle and (not idle or role_idle < idle):
            idle = role_idle
    return SessionLimits(disconnect, idle)


class ConnectionWatch:
    """Calls ``end(reason)`` once: at ``expires`` (reactor seconds, or None)
    or when ``idle_timeout`` seconds (0: never) pass without ``activity()``.
    ``activity`` only notes the time, so it costs nothing per byte; the
    timer looks again when the idle time could be up."""

    def __init__(self, reactor, end: Callable[[str], None], *, expires: float | None, idle_timeout: float):
        self._reactor = reactor
        self._end = end
        self._idle_timeout = idle_timeout
        self._last = reactor.seconds()
        self._expiry = self._idle = None
        if expires is not None:
            self._expiry = reactor.callLater(max(0.0, expires - self._last), self._fire, CERT_EXPIRED)
        if idle_timeout:
            self._idle = reactor.callLater(idle_timeout, self._check_idle)

    def activity(self) -> None:
        self._last = self._reactor.seconds()

    def _check_idle(self) -> None:
        idle_until = self._last + self._idle_timeout
        if self._reactor.seconds() >= idle_until:
            self._idle = None
            self._fire(IDLE)
        else:
            self._idle = self._reactor.callLater(idle_until - self._reactor.seconds(), self._check_idle)

    def _fire(self, reason: str) -> None:
        if self._expiry is not None and reason == CERT_EXPIRED:
            self._expiry = None
        self.stop()
        self._end(reason)

    def stop(self) -> None:
        """The connection ended: no more calls."""
        for call in (self._expiry, self._idle):
            if call is not None and call.active():
                call.cancel()
        self._expiry = self._idle = None


class WatchedStream(ProtocolWrapper):
    """One kube tunnel stream's front end (HTTP/1.1 or HTTP/2), wrapped so
    that it ends when its ``ConnectionWatch`` says: every byte either way is
    activity, and the limits come from ``limits()`` (the user's roles and the
    cluster's defaults, fetched once when the stream starts; if that fails,
    the certificate's expiry still applies). ``ended(reason)`` is told
    first (the audit event), then the stream is closed, and aborted if it
    has not closed within ``CLOSE_GRACE`` seconds."""

    def __init__(self, reactor, wrapped: Protocol, *, expires: float,
                 limits: Callable[[], Awaitable[SessionLimits]], ended: Callable[[str], None]):
        super().__init__(None, wrapped)
        self._reactor = reactor
        self._expires = expires
        self._limits = limits
        self._ended = ended
        self._watch: ConnectionWatch | None = None
        self._abort = None
        self._lost = False

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.wrappedProtocol.makeConnection(self)
        Deferred.fromCoroutine(self._arm()).addErrback(lambda f: log.failure("watching a kube stream failed", f))

    async def _arm(self) -> None:
        try:
            limits = await self._limits()
        except Exception as e:
            log.warn("session limits unknown, the certificate's expiry applies error={error}", error=e)
            limits = SessionLimits(disconnect_expired_cert=True, client_idle_timeout=0.0)
        if self._lost:
            return
        self._watch = ConnectionWatch(
            self._reactor, self._end, idle_timeout=limits.client_idle_timeout,
            expires=self._expires if limits.disconnect_expired_cert else None,
        )

    def end(self, reason: str) -> None:
        """End the stream now for ``reason`` (a lock), as an expiry would."""
        if self._lost or self._abort is not None:
            return
        if self._watch is not None:
            self._watch.stop()
        self._end(reason)

    def _end(self, reason: str) -> None:
        self._ended(reason)
        self.transport.loseConnection()
        self._abort = self._reactor.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._watch is not None:
            self._watch.activity()
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        if self._watch is not None:
            self._watch.activity()
        self.transport.write(data)

    def writeSequence(self, data) -> None:
        if self._watch is not None:
            self._watch.activity()
        self.transport.writeSequence(data)

    def connectionLost(self, reason) -> None:
        self._lost = True
        if self._watch is not None:
            self._watch.stop()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self.wrappedProtocol.connectionLost(reason)
