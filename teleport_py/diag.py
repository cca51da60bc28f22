"""The diagnostic listener (``teleport.diag_addr``, as Teleport's): plain
HTTP for the kubelet's probes.

``GET /healthz`` answers 200 while the process serves at all (liveness);
``GET /readyz`` answers 200 ``ok`` when the role's readiness check finds
nothing missing, else 503 with the one line saying what is (readiness).
Nothing secret is served, so no TLS; the listener is bounded like every
other (a few connections, bounded heads, idle timeout).
"""
from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from teleport_py.config import Address, ConnectionLimits
from teleport_py.lifecycle import Listener, finish_http
from teleport_py.limits import limit_http

log = Logger()

#: Probes come from one kubelet; a few connections at once are plenty.
MAX_DIAG_CONNECTIONS = 16

#: ``None`` when ready, else why not (one line, shown to whoever probes).
ReadinessCheck = Callable[[], Awaitable["str | None"]]


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, readiness: ReadinessCheck) -> None:
        super().__init__()
        self.readiness = readiness

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if request.path == b"/healthz":
            return b"ok\n"
        if request.path != b"/readyz":
            request.setResponseCode(404)
            return b"not found: try /healthz or /readyz\n"
        Deferred.fromCoroutine(self._ready(request))
        return NOT_DONE_YET

    async def _ready(self, request) -> None:
        try:
            missing = await self.readiness()
        except Exception as e:  # a check that broke: not ready, and say so
            log.failure("readiness check failed")
            missing = f"readiness check failed: {e.__class__.__name__}"
        if request.channel is None:  # the prober hung up
            return
        if missing is not None:
            request.setResponseCode(503)
            request.write(f"not ready: {missing}\n".encode("utf-8"))
        else:
            request.write(b"ok\n")
        request.finish()


class _BoundedFactory(WrappingFactory):
    """At most MAX_DIAG_CONNECTIONS open; more are refused at once."""

    def buildProtocol(self, addr):
        if len(self.protocols) >= MAX_DIAG_CONNECTIONS:
            return None
        return super().buildProtocol(addr)


def diag_listener(reactor, address: Address, limits: ConnectionLimits, readiness: ReadinessCheck) -> Listener:
    """A Listener (a child service) serving the probes on ``address``."""
    site = Site(HealthResource(readiness), reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    limit_http(site, limits)
    factory = _BoundedFactory(site)
    factory.noisy = False
    return Listener(
        reactor, serverFromString(reactor, address.server_endpoint()), factory,
        setting="teleport.diag_addr", address=str(address),
        finish=lambda connection: finish_http(connection.wrappedProtocol),
    )
