"""``LoginLimiter``'s rules with their state in the backend, for Auth
servers that share one (etcd): a user locked out through one is locked out
through all, and a client network's attempts are counted across all.

Each attempt is a key with an ``expires`` (its window), so the backend's TTL
forgets them and nothing grows without bound: at most ``LoginRules.attempts_per_network``
attempt keys per network and ``max_failures`` failure keys per user are live.
An attempt costs a range read, a put and a get. Servers checking at the same
moment may each let the last allowed attempt through, so a network may get
up to one extra attempt per Auth server; the user lockout itself is exact once
written. Names go into keys hex-encoded, so no user name or address can reach
into another's keys.
"""
from __future__ import annotations

import os

from teleport_py.auth.ratelimit import LoginRules, Throttled, client_network

PREFIX = "/login_limits/"


def _name(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").hex()


class SharedLoginLimiter:
    """``LoginRules`` with their state in a backend other Auth servers share."""

    def __init__(self, clock, backend, rules: LoginRules = LoginRules()):
        self._clock = clock
        self._backend = backend
        self.rules = rules

    def _unique(self, now: float) -> str:
        # Time first, so keys sort by age; the random part keeps two
        # servers' attempts in the same microsecond apart.
        return f"{now:020.6f}-{os.urandom(6).hex()}"

    async def attempt(self, username: str, address: str) -> Throttled | None:
        now = self._clock.seconds()
        network = client_network(address)
        attempts = f"{PREFIX}attempts/{_name(network)}/"
        recent = await self._backend.get_range(attempts, limit=self.rules.attempts_per_network)
        if len(recent) >= self.rules.attempts_per_network:
            return await self._refuse("client_network", network, min(item.expires for item in recent))
        await self._backend.put(attempts + self._unique(now), b"", expires=now + self.rules.network_window)
        locked = await self._backend.get(f"{PREFIX}lockouts/{_name(username)}")
        if locked is not None:
            return await self._refuse("user", username, locked.expires)
        return None

    async def _refuse(self, limit: str, key: str, until: float) -> Throttled:
        # The first refusal of an episode (on any server) is the one audited.
        first = await self._backend.create(f"{PREFIX}episodes/{limit}/{_name(key)}", b"", expires=until)
        return Throttled(limit=limit, key=key, until=until, first=first is not None)

    async def failed(self, username: str) -> None:
        now = self._clock.seconds()
        failures = f"{PREFIX}failures/{_name(username)}/"
        await self._backend.put(failures + self._unique(now), b"", expires=now + self.rules.failure_window)
        if len(await self._backend.get_range(failures, limit=self.rules.max_failures)) >= self.rules.max_failures:
            await self._backend.put(f"{PREFIX}lockouts/{_name(username)}", b"", expires=now + self.rules.lockout)
            await self._backend.delete_range(failures)

    async def succeeded(self, username: str) -> None:
        await self._backend.delete_range(f"{PREFIX}failures/{_name(username)}/")
