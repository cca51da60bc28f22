"""The proxy's heartbeat and what it tells agents about the other proxies
(Teleport's proxy heartbeat and discovery requests).

Every ``interval`` the proxy heartbeats itself to Auth (a ``proxy``
resource: its host id, the address agents dial for a tunnel, its public
address) and reads back every proxy whose heartbeat is live. Each agent
tunnel gets that list in a ``discovery`` stream when the agent announces
itself, and again whenever the list changes, so an agent that reached one
proxy (perhaps through a load balancer) learns all of them and keeps a
tunnel to each (``kube.agent_pool``). The list rides the tunnel whose proxy
the agent verified, and comes from Auth over mutual TLS.

A proxy stopping cleanly says goodbye: Auth drops its record at once, and
its agents get the last list without it, which agents read as this proxy
leaving (a live proxy's own list always names it: it heartbeats before it
reads). A crash still relies on the record's TTL.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, ensureDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from teleport_py.tunnel import StreamRejected, TunnelClosed

log = Logger()

HEARTBEAT_INTERVAL = 10.0
#: The goodbye's call to Auth gets this long; the drain that follows it needs the rest of the deadline.
GOODBYE_TIMEOUT = 5.0
DISCOVERY_KIND = "discovery"


class Hangup(Protocol):
    """A stream that carries only its metadata (announce, discovery): closed at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


def proxy_resource(host_id: str, hostname: str, tunnel_addr: str, public_addr: str) -> dict:
    return {
        "kind": "proxy",
        "version": "v2",
        "metadata": {"name": host_id},
        "spec": {"hostname": hostname, "tunnel_addr": tunnel_addr, "public_addr": public_addr,
                 "version": "teleport_py"},
    }


def _listed(item) -> dict | None:
    """``{"name", "addr"}`` of one proxy resource from Auth; None for anything else (skipped)."""
    try:
        name, addr = item["metadata"]["name"], item["spec"]["tunnel_addr"]
    except (KeyError, TypeError):
        return None
    return {"name": name, "addr": addr} if isinstance(name, str) and isinstance(addr, str) else None


class ProxyDiscovery:
    def __init__(self, reactor, auth_client, resource: dict, tunnels: Callable[[], Iterable],
                 interval: float = HEARTBEAT_INTERVAL) -> None:
        self._reactor = reactor
        self._auth = auth_client
        self._resource = resource
        self._tunnels = tunnels
        self._interval = interval
        self._loop = LoopingCall(self._beat)
        self._loop.clock = reactor
        self._beating: Deferred | None = None
        #: The last list read from Auth (``{"proxies": [{"name", "addr"}]}``), None before the first.
        self.metadata: dict | None = None

    def start(self) -> None:
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: log.failure("proxy heartbeat loop stopped", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._beating is not None:
            self._beating.cancel()

    async def goodbye(self) -> None:
        """Stop heartbeating; at the same time ask Auth to drop our record
        now and tell every agent tunnel the last list without us (told even
        when Auth cannot be reached: the record then expires with its TTL).
        Waits, at most GOODBYE_TIMEOUT, until both are done, so agents have
        the list before the port drains and their tunnels are cut."""
        self.stop()
        name = self._resource["metadata"]["name"]
        calls = [ensureDeferred(self._auth.proxy_goodbye()).addErrback(self._goodbye_failed)]
        if self.metadata is not None:
            self.metadata = {"proxies": [p for p in self.metadata["proxies"] if p["name"] != name]}
            calls += [self.send(tunnel) for tunnel in list(self._tunnels())]
        try:
            await DeferredList(calls, consumeErrors=True).addTimeout(GOODBYE_TIMEOUT, self._reactor)
        except TimeoutError:
            log.warn("proxy goodbye not finished within {timeout}s (Auth or agents slow to answer)",
                     timeout=GOODBYE_TIMEOUT)
        log.info("proxy {name} said goodbye to Auth and its agents", name=name)

    @staticmethod
    def _goodbye_failed(failure) -> None:
        log.warn("proxy goodbye to Auth failed (the heartbeat expires instead): {error}",
                 error=failure.getErrorMessage())

    def send(self, tunnel) -> Deferred:
        """Tell one agent tunnel the proxies we know (nothing before the
        first answer from Auth); fires once the agent took the list or
        could not."""
        if self.metadata is None:
            return succeed(None)
        opened = tunnel.open_stream(DISCOVERY_KIND, self.metadata, Hangup())
        return opened.addErrback(self._not_sent)

    @staticmethod
    def _not_sent(failure) -> None:
        # An agent older than the pool refuses the stream; a closing tunnel cannot take it.
        failure.trap(StreamRejected, TunnelClosed)
        log.debug("discovery not delivered: {reason}", reason=failure.getErrorMessage())

    def _beat(self) -> Deferred:
        self._beating = Deferred.fromCoroutine(self._beat_and_list())
        self._beating.addBoth(self._beaten)
        return self._beating

    def _beaten(self, result):
        self._beating = None
        return result

    async def _beat_and_list(self) -> None:
        try:
            await self._auth.heartbeat_proxy(self._resource)
            items = await self._auth.list_proxies()
        except CancelledError:
            return
        except Exception as e:
            if not self._loop.running:
                return  # stopped (or said goodbye) meanwhile: the HTTP client reports the cancel wrapped
            log.warn("proxy heartbeat failed: {error}", error=e)
            return
        metadata = {"proxies": sorted(filter(None, map(_listed, items)), key=lambda p: p["name"])}
        if metadata != self.metadata:
            self.metadata = metadata
            log.info("proxies in the cluster: {names}", names=[p["name"] for p in metadata["proxies"]])
            for tunnel in list(self._tunnels()):
                self.send(tunnel)
