"""Login throttling: lock a user name after repeated failures, and limit how
fast one client address may try at all.

Teleport locks a user for a while after max failed attempts; we do the same
and answer locked and unknown users exactly like wrong passwords, so the
limiter reveals nothing about which users exist.
"""
from __future__ import annotations

from collections import deque


class LoginLimiter:
    def __init__(
        self,
        clock,
        *,
        max_failures: int = 5,
        failure_window: float = 600.0,
        lockout: float = 1200.0,
        attempts_per_address: int = 20,
        address_window: float = 60.0,
    ):
        self._clock = clock
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.lockout = lockout
        self.attempts_per_address = attempts_per_address
        self.address_window = address_window
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._attempts: dict[str, deque[float]] = {}

    @staticmethod
    def _trim(times: deque[float], horizon: float) -> None:
        while times and times[0] <= horizon:
            times.popleft()

    def allow(self, username: str, address: str) -> bool:
        """Record an attempt; False when the address or the user is throttled."""
        now = self._clock.seconds()
        attempts = self._attempts.setdefault(address, deque())
        self._trim(attempts, now - self.address_window)
        if len(attempts) >= self.attempts_per_address:
            return False
        attempts.append(now)
        until = self._locked_until.get(username)
        if until is not None:
            if now < until:
                return False
            del self._locked_until[username]
        return True

    def failed(self, username: str) -> None:
        now = self._clock.seconds()
        failures = self._failures.setdefault(username, deque())
        self._trim(failures, now - self.failure_window)
        failures.append(now)
        if len(failures) >= self.max_failures:
            self._locked_until[username] = now + self.lockout
            failures.clear()

    def succeeded(self, username: str) -> None:
        self._failures.pop(username, None)

    def prune(self) -> None:
        """Forget stale entries so memory stays bounded under a spray attack."""
        now = self._clock.seconds()
        for table, horizon in ((self._failures, now - self.failure_window), (self._attempts, now - self.address_window)):
            for key in [k for k, times in table.items() if not times or times[-1] <= horizon]:
                del table[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]
