"""Login throttling: lock a user name after repeated failures, and limit how
fast one client network may try at all.

Teleport locks a user for a while after max failed attempts; we do the same
and answer locked and unknown users exactly like wrong passwords, so the
limiter reveals nothing about which users exist.

Attempts are counted per client *network*, not per ``ip:port``: every new TCP
connection has a new port, so counting per connection let a password spray
over fresh connections go unthrottled. An IPv4 client is one address; an IPv6
client is its /64, the smallest block a site is usually given, so cycling
through the addresses of one's own /64 does not help either. The address is
the one the proxy's socket saw (``client_network``); nothing a client writes
in a request is ever read for it.
"""
from __future__ import annotations

import ipaddress
from collections import deque

import attr

#: The bucket for an address that cannot be parsed (or none at all): such
#: callers share one budget rather than each getting a fresh one.
UNKNOWN_NETWORK = "unknown"
#: Stale entries are dropped every this many attempts, so memory stays
#: bounded under a spray across many user names and networks.
PRUNE_EVERY = 1000


def client_network(address: str) -> str:
    """The network a login attempt is counted against: the IPv4 address, or the
    /64 of an IPv6 address (an IPv4-mapped one counts as its IPv4 address).
    ``address`` is ``ip``, ``ip:port`` or ``[ipv6]:port``."""
    host = address.strip()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return UNKNOWN_NETWORK
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@attr.s(frozen=True, auto_attribs=True)
class Throttled:
    """Why an attempt was refused: ``limit`` is ``client_network`` (too many
    attempts from ``key``, a network) or ``user`` (``key`` is locked out);
    refusals go on until ``until`` (clock seconds). ``first`` is true for the
    first refusal of this episode, the one that is audited."""

    limit: str
    key: str
    until: float
    first: bool


@attr.s(frozen=True, auto_attribs=True)
class LoginRules:
    """``max_failures`` within ``failure_window`` seconds lock a user name for
    ``lockout`` seconds; one client network may try ``attempts_per_network``
    times per ``network_window`` seconds."""

    max_failures: int = 5
    failure_window: float = 600.0
    lockout: float = 1200.0
    attempts_per_network: int = 20
    network_window: float = 60.0


class LoginLimiter:
    """``LoginRules`` with their state in this process's memory."""

    def __init__(self, clock, rules: LoginRules = LoginRules()):
        self._clock = clock
        self.rules = rules
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._attempts: dict[str, deque[float]] = {}
        #: (limit, key) -> when the episode whose first refusal was reported ends.
        self._episodes: dict[tuple[str, str], float] = {}
        self._since_prune = 0

    @staticmethod
    def _trim(times: deque[float], horizon: float) -> None:
        while times and times[0] <= horizon:
            times.popleft()

    def attempt(self, username: str, address: str) -> Throttled | None:
        """Record an attempt from ``address`` (as the proxy saw it) for
        ``username``; None when it may go ahead, else why it may not."""
        now = self._clock.seconds()
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune()
        network = client_network(address)
        attempts = self._attempts.setdefault(network, deque())
        self._trim(attempts, now - self.rules.network_window)
        if len(attempts) >= self.rules.attempts_per_network:
            return self._refuse("client_network", network, attempts[0] + self.rules.network_window, now)
        attempts.append(now)
        until = self._locked_until.get(username)
        if until is not None:
            if now < until:
                return self._refuse("user", username, until, now)
            del self._locked_until[username]
        return None

    def _refuse(self, limit: str, key: str, until: float, now: float) -> Throttled:
        reported = self._episodes.get((limit, key))
        first = reported is None or reported <= now
        if first:
            self._episodes[(limit, key)] = until
        return Throttled(limit=limit, key=key, until=until, first=first)

    def failed(self, username: str) -> None:
        now = self._clock.seconds()
        failures = self._failures.setdefault(username, deque())
        self._trim(failures, now - self.rules.failure_window)
        failures.append(now)
        if len(failures) >= self.rules.max_failures:
            self._locked_until[username] = now + self.rules.lockout
            failures.clear()

    def succeeded(self, username: str) -> None:
        self._failures.pop(username, None)

    def prune(self) -> None:
        """Forget stale entries so memory stays bounded under a spray attack."""
        now = self._clock.seconds()
        self._since_prune = 0
        for table, horizon in ((self._failures, now - self.rules.failure_window), (self._attempts, now - self.rules.network_window)):
            for key in [k for k, times in table.items() if not times or times[-1] <= horizon]:
                del table[key]
        for table in (self._locked_until, self._episodes):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
