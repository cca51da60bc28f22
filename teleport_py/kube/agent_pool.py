"""The agent pool: one reverse tunnel to each proxy of the cluster
(Teleport's agent pool), so kubectl through any proxy reaches this agent.

The agent is given one proxy address (``teleport.proxy_server``, perhaps a
load balancer). The proxy it reaches sends it the cluster's proxies (a
``discovery`` stream: every proxy whose heartbeat Auth holds, each with the
address agents dial for a tunnel); the pool then keeps one tunnel per proxy
in that list: one slot (a ``TunnelClient``, which redials with jittered
backoff) per proxy. A slot dials the address of a proxy no tunnel holds yet
(as that proxy's heartbeat gives it), or the given address: when no proxy
is missing, every other dial while no tunnel is up (starting with it), and
after two dials in a row to listed addresses gave no tunnel to keep.

Which proxy a tunnel reached is read from the proxy's verified host
certificate, never from what was dialled: behind a load balancer a slot may
land on a proxy another slot already holds, or on one the list does not
name (yet); that tunnel is closed and the slot dials again with backoff,
until every listed proxy is held. A proxy that left
the list (its heartbeat expired) loses its slot; a tunnel never closes
because of a list while it is the last one.

A proxy stopping cleanly sends a list without itself (a live proxy's own
list always names it): the pool drops that proxy at once, even from the
other proxies' lists (which may predate its goodbye), until a list received
later names it again or ``DEPARTED_FOR`` passes (by then a list naming it
comes from a live heartbeat). Its tunnel closes like any unlisted one
(GOAWAY: streams through it finish).
"""
from __future__ import annotations

import random as _random
from typing import Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.config import Address, ConfigError, parse_address
from teleport_py.identityfile import IdentityFile
from teleport_py.kube.tunnel_client import MetadataOnly, TunnelClient, proxy_endpoint
from teleport_py.pki import (
    AUTH_SERVER_NAME,
    HostIdentity,
    IdentityError,
    client_tls_options,
    identity_from_certificate,
    peer_certificate,
)
from teleport_py.tunnel import StreamRejected, TunnelClosed

log = Logger()

DISCOVERY_KIND = "discovery"
#: More proxies than this in one discovery list is refused (the metadata is bounded at 64 KiB anyway).
MAX_PROXIES = 256
#: How long a proxy that said goodbye stays dropped unless a newer list names it (the heartbeat TTL).
DEPARTED_FOR = 30.0


class DiscoveryError(ValueError):
    """A discovery stream's metadata is not ``{"proxies": [{"name", "addr"}]}``."""


def parse_discovery(metadata: dict) -> dict[str, Address]:
    """Proxy host id -> the address to dial for a tunnel to it."""
    proxies = metadata.get("proxies")
    if not isinstance(proxies, list) or len(proxies) > MAX_PROXIES:
        raise DiscoveryError(f"proxies: must be a list of at most {MAX_PROXIES}")
    parsed = {}
    for i, entry in enumerate(proxies):
        if not isinstance(entry, dict) or set(entry) != {"name", "addr"}:
            raise DiscoveryError(f"proxies[{i}]: must be an object with name and addr")
        name = entry["name"]
        if not isinstance(name, str) or not name or len(name) > 253:
            raise DiscoveryError(f"proxies[{i}].name: must be a non-empty string")
        try:
            parsed[name] = parse_address(entry["addr"], f"proxies[{i}].addr", 3080)
        except ConfigError as e:
            raise DiscoveryError(str(e)) from None
    return parsed


class _SlotEndpoint:
    """A slot's endpoint: which address it dials is decided at each dial."""

    def __init__(self, pool: "AgentPool") -> None:
        self._pool = pool
        #: The proxy this slot is trying to reach (None: the given address).
        self.target: str | None = None
        #: Dials in a row that gave no tunnel to keep (not connected, or not a proxy we want).
        self.failures = 0

    def connect(self, factory):
        self.target, address = self._pool._choose(self)
        d = self._pool._endpoint(address).connect(factory)

        def failed(failure):
            self.failures += 1
            return failure

        return d.addErrback(failed)


class _Slot:
    def __init__(self, pool: "AgentPool") -> None:
        self.endpoint = _SlotEndpoint(pool)
        self.client = TunnelClient(
            pool._reactor, self.endpoint, clusters=pool._clusters,
            accept_stream=lambda kind, metadata: pool._accept(self, kind, metadata),
            random=pool._random, on_up=pool._on_up,
            identify=lambda tunnel: pool._identify(self, tunnel),
            on_lost=lambda: pool._lost(self),
        )
        #: The proxy (host id) this slot's tunnel reached, once verified.
        self.proxy: str | None = None


class AgentPool:
    """What the Kubernetes service sees of its tunnels: ``start``/``stop``/
    ``abort``, ``announce`` to every proxy, ``up`` (a proxy accepted our
    announce), ``up_tunnels`` (for calls to Auth), ``tunnels``."""

    def __init__(
        self,
        reactor,
        address: Address,
        identity: IdentityFile,
        *,
        clusters: Sequence[dict],
        accept_stream: Callable[[str, dict], Protocol],
        on_up: Callable[[], object] = lambda: None,
        random: Callable[[], float] = _random.random,
        endpoint_for=proxy_endpoint,
        proxy_of: Callable[[object], str | None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._address = address
        self._identity = identity
        self._clusters = [dict(c) for c in clusters]
        self._accept_stream = accept_stream
        self._on_up = on_up
        self._random = random
        self._endpoint_for = endpoint_for
        self._proxy_of = proxy_of or self._verified_proxy
        self._endpoints: dict[Address, object] = {}
        self._slots: list[_Slot] = []
        #: The latest discovery list from each proxy we hold (sender host id -> its list).
        self._lists: dict[str, dict[str, Address]] = {}
        #: The last list we had when the last proxy we held was lost (used while we hold none).
        self._last_list: dict[str, Address] = {}
        #: Proxies that said goodbye (their own list left them out) -> when.
        self._departed: dict[str, float] = {}
        self._departed_expiry = None
        self._stopped = True
        self._listed: list[str] = []

    # -- what the Kubernetes service uses --------------------------------------

    @property
    def up(self) -> bool:
        return any(slot.client.up for slot in self._slots)

    @property
    def up_tunnels(self) -> list:
        """The tunnels a proxy accepted our announce on (for streams to Auth)."""
        return [slot.client.tunnel for slot in self._slots if slot.client.up and slot.client.tunnel is not None]

    @property
    def tunnels(self) -> list:
        return [slot.client.tunnel for slot in self._slots if slot.client.tunnel is not None]

    @property
    def proxies(self) -> dict[str, bool]:
        """The proxies we want a tunnel to -> whether one is up (diagnostics and tests)."""
        held = {slot.proxy for slot in self._slots if slot.client.up}
        return {name: name in held for name in sorted(self._wanted())}

    def start(self) -> None:
        self._stopped = False
        self._expire_departed_later()
        self._reconcile()

    def stop(self):
        """GOAWAY on every tunnel; fires when all are closed."""
        self._stopped = True
        self._cancel_departed_expiry()
        return DeferredList([slot.client.stop() for slot in self._slots])

    def abort(self) -> None:
        self._stopped = True
        self._cancel_departed_expiry()
        for slot in self._slots:
            slot.client.abort()

    def announce(self, clusters: Sequence[dict]) -> None:
        self._clusters = [dict(c) for c in clusters]
        for slot in self._slots:
            slot.client.announce(self._clusters)

    def use(self, identity: IdentityFile) -> None:
        """A renewed identity, presented from the next connection on."""
        self._identity = identity
        for endpoint in self._endpoints.values():
            endpoint.use(identity)

    def auth_endpoint_factory(self, identity: IdentityFile) -> "AuthOverTunnels":
        """For ``AuthClient.over_endpoints``: TLS to Auth inside an `auth` stream."""
        return AuthOverTunnels(self, identity)

    # -- slots -----------------------------------------------------------------

    def _endpoint(self, address: Address):
        if address not in self._endpoints:
            self._endpoints[address] = self._endpoint_for(
                self._reactor, address.connect_host(), address.port, self._identity)
        return self._endpoints[address]

    def _wanted(self) -> dict[str, Address]:
        """What the proxies we hold list (together, less those that said
        goodbye), else the last list we had."""
        if not self._lists:
            return dict(self._last_list)
        now = self._reactor.seconds()
        wanted: dict[str, Address] = {}
        for listed in self._lists.values():
            wanted.update(listed)
        for name, when in self._departed.items():
            if now - when < DEPARTED_FOR:
                wanted.pop(name, None)
        return wanted

    def _choose(self, endpoint: _SlotEndpoint) -> tuple[str | None, Address]:
        """A proxy no slot holds or is dialling for, at its listed address;
        the given address (which worked before) when no proxy is missing;
        while no tunnel is up, every other dial (after a restart of the only
        proxy, the first redial goes where it went before, whatever address
        that proxy heartbeats); else after two fruitless listed-address dials
        in a row (a listed address may not be reachable from here)."""
        wanted = self._wanted()
        busy = {slot.proxy for slot in self._slots} | {
            slot.endpoint.target for slot in self._slots if slot.endpoint is not endpoint and slot.proxy is None}
        missing = sorted(name for name in wanted if name not in busy)
        if not missing:
            given = True
        elif self.up:
            given = endpoint.failures % 3 == 2  # after two fruitless dials to listed addresses
        else:
            given = endpoint.failures % 2 == 0  # the given address first, then in turn
        if given:
            return None, self._address
        return missing[0], wanted[missing[0]]

    def _identify(self, slot: _Slot, tunnel) -> bool:
        kept = self._keep(slot, tunnel)
        slot.endpoint.failures = 0 if kept else slot.endpoint.failures + 1
        return kept

    def _keep(self, slot: _Slot, tunnel) -> bool:
        name = self._proxy_of(tunnel)
        if name is None:
            log.warn("closing a tunnel to a peer that is not a proxy of our cluster")
            return False
        if any(other is not slot and other.proxy == name for other in self._slots):
            log.info("reached proxy {proxy} again (a load balancer?); dialling again", proxy=name)
            return False
        fresh = self._wanted() if self._lists else {}
        if fresh and name not in fresh:
            # Its heartbeat is not (or no longer) in Auth: dial again, with backoff, until it is.
            # (With no list from a proxy we hold, any proxy is kept: the old ones may all be gone.)
            log.info("reached proxy {proxy}, which the cluster's list does not name; dialling again", proxy=name)
            return False
        slot.proxy = name
        slot.endpoint.target = None
        log.info("reverse tunnel to proxy {proxy}", proxy=name)
        return True

    def _verified_proxy(self, tunnel) -> str | None:
        """The proxy's host id from its certificate, which TLS verified against our host CA."""
        cert = peer_certificate(tunnel.transport)
        if cert is None:
            return None
        try:
            identity = identity_from_certificate(cert, user_ca=None, host_ca=self._identity.host_cas[0])
        except IdentityError:
            return None
        if isinstance(identity, HostIdentity) and identity.system_role == "proxy":
            return identity.host_id
        return None

    def _accept(self, slot: _Slot, kind: str, metadata: dict):
        if kind != DISCOVERY_KIND:
            return self._accept_stream(kind, metadata)
        if slot.proxy is None:
            raise StreamRejected("discovery before the proxy was identified")
        try:
            listed = self._lists[slot.proxy] = parse_discovery(metadata)
        except DiscoveryError as e:
            raise StreamRejected(f"invalid discovery: {e}") from None
        for name in listed:
            self._departed.pop(name, None)  # back (a restart), or still there
        if slot.proxy not in listed:
            log.info("proxy {proxy} is stopping (its list leaves it out)", proxy=slot.proxy)
            self._departed[slot.proxy] = self._reactor.seconds()
            self._expire_departed_later()
        self._reactor.callLater(0, self._reconcile)
        return MetadataOnly()

    def _expire_departed_later(self) -> None:
        """A reconcile when the oldest goodbye has been kept for DEPARTED_FOR."""
        if self._departed and (self._departed_expiry is None or not self._departed_expiry.active()):
            due = min(self._departed.values()) + DEPARTED_FOR - self._reactor.seconds()
            self._departed_expiry = self._reactor.callLater(max(0.0, due), self._departed_expired)

    def _departed_expired(self) -> None:
        self._departed_expiry = None
        now = self._reactor.seconds()
        self._departed = {name: when for name, when in self._departed.items() if now - when < DEPARTED_FOR}
        self._expire_departed_later()
        self._reconcile()

    def _cancel_departed_expiry(self) -> None:
        if self._departed_expiry is not None and self._departed_expiry.active():
            self._departed_expiry.cancel()
        self._departed_expiry = None

    def _lost(self, slot: _Slot) -> None:
        if slot.proxy is not None and slot.proxy in self._lists:
            if len(self._lists) == 1:
                self._last_list = self._wanted()
            del self._lists[slot.proxy]  # nothing will refresh it now
        slot.proxy = None
        if not self._stopped:
            self._reactor.callLater(0, self._reconcile)

    def _reconcile(self) -> None:
        """One slot per listed proxy (at least one). A tunnel to a proxy the
        list does not name (it left, or we reached it before any list) is
        kept, besides those slots, only until a listed proxy's tunnel is up:
        the agent is never left without a tunnel because of a list."""
        if self._stopped:
            return
        wanted = self._wanted()
        if sorted(wanted) != self._listed:
            self._listed = sorted(wanted)
            log.info("proxies of the cluster: {proxies}", proxies=self._listed)
        unlisted = [s for s in self._slots if wanted and s.proxy is not None and s.proxy not in wanted]
        if any(s.client.up and s.proxy in wanted for s in self._slots):
            for slot in unlisted:
                log.info("proxy {proxy} is not in the cluster's list; closing its tunnel", proxy=slot.proxy)
                self._remove(slot)
            unlisted = []
        desired = max(1, len(wanted)) + len(unlisted)
        while len(self._slots) < desired:
            slot = _Slot(self)
            self._slots.append(slot)
            slot.client.start()
        for slot in [s for s in self._slots if s.proxy is None][: max(0, len(self._slots) - desired)]:
            self._remove(slot)
        # Endpoints only for addresses still dialled (lists change over time).
        keep = {self._address, *wanted.values()}
        for address in [a for a in self._endpoints if a not in keep]:
            del self._endpoints[address]

    def _remove(self, slot: _Slot) -> None:
        self._slots.remove(slot)
        slot.client.stop()


@implementer(IStreamClientEndpoint)
class AuthOverTunnels:
    """Opens an `auth` stream on a tunnel that is up (each connection the
    next in turn, so calls to Auth are spread over the proxies; when one
    cannot take the stream, the others) and speaks TLS with our host
    certificate through it, verifying Auth end to end."""

    def __init__(self, pool: AgentPool, identity: IdentityFile) -> None:
        self._pool = pool
        self._next = 0
        self.use(identity)

    def use(self, identity: IdentityFile) -> None:
        """Present this (renewed) identity on connections made from now on."""
        self._tls = client_tls_options(
            AUTH_SERVER_NAME,
            trusted_cas=identity.host_cas,
            certificate=identity.certificate,
            private_key=identity.private_key,
        )

    def endpointForURI(self, uri) -> IStreamClientEndpoint:
        return wrapClientTLS(self._tls, self)

    def connect(self, factory):
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory):
        tunnels = self._pool.up_tunnels
        if not tunnels:
            raise TunnelClosed("no tunnel to a proxy")
        start = self._next % len(tunnels)
        self._next += 1
        failure = None
        for tunnel in tunnels[start:] + tunnels[:start]:
            try:
                return await tunnel.endpoint("auth", {}).connect(factory)
            except (StreamRejected, TunnelClosed) as e:
                failure = e
        raise TunnelClosed(f"no proxy took the auth stream: {failure}")
