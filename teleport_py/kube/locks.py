"""The locks in force, as the agent knows them: polled from Auth every
``POLL_INTERVAL`` seconds (``GET /v1/locks``), so a lock reaches every
agent within seconds. A request from a locked user is refused with the
lock's message, and each change is told to ``on_change`` (the stream
acceptor ends the locked users' live connections).

When Auth cannot be reached the last list known stays in force (Teleport's
default ``best_effort`` locking mode); malformed entries are skipped and
logged, never read as "no locks"."""
from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from teleport_py.pki import UserIdentity
from teleport_py.resources import ValidationError, resource_from_dict
from teleport_py.resources.lock import Lock

log = Logger()

POLL_INTERVAL = 2.0
#: At most this many locks are kept; more is a malformed answer.
MAX_LOCKS = 10_000


class LockWatch:
    def __init__(self, reactor, fetch: Callable[[], Awaitable[list]], *, interval: float = POLL_INTERVAL) -> None:
        self._reactor = reactor
        self._fetch = fetch
        self._interval = interval
        self._call = None
        self._running = False
        self.locks: tuple[Lock, ...] = ()
        self.on_change: Callable[[], None] = lambda: None

    def lock_for(self, identity: UserIdentity) -> Lock | None:
        """The first lock targeting the user or one of the certificate's roles."""
        for lock in self.locks:
            if lock.targets(identity.username, identity.roles):
                return lock
        return None

    def start(self) -> None:
        self._running = True
        self._poll()

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _poll(self) -> None:
        self._call = None
        d = Deferred.fromCoroutine(self.refresh())
        d.addErrback(lambda f: log.warn("reading locks from auth failed, the last known stay in force error={error}",
                                        error=f.getErrorMessage()))
        d.addBoth(lambda _: self._schedule())

    def _schedule(self) -> None:
        if self._running:
            self._call = self._reactor.callLater(self._interval, self._poll)

    async def refresh(self) -> None:
        items = await self._fetch()
        if not isinstance(items, list) or len(items) > MAX_LOCKS:
            raise ValueError("malformed lock list")
        locks = []
        for item in items:
            try:
                lock = resource_from_dict(item)
            except ValidationError as e:
                log.warn("skipping a malformed lock error={error}", error=str(e))
                continue
            if isinstance(lock, Lock):
                locks.append(lock)
        locks_now = tuple(sorted(locks, key=lambda lock: lock.name))
        if locks_now != self.locks:
            self.locks = locks_now
            self.on_change()
