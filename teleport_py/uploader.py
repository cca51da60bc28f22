"""Uploads in the background, retried with capped, jittered backoff.

The agent's spools keep what Auth must get (audit events, session
recordings) on disk and hand it over from here: ``upload_once()`` sends
everything waiting and fails if any of it did not arrive; the
``Uploader`` decides when it runs. Nothing is lost by a failure, only
retried: first after ``interval`` seconds, then twice as long each time up
to ``max_backoff``, and up to a quarter sooner at random
(``teleport_py.backoff``), so agents that lost Auth together do not come
back in step.
"""
from __future__ import annotations

import random as _random
from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from teleport_py.backoff import backoff_delay

log = Logger()


class Uploader:
    """``soon(delay)`` asks for an upload ``delay`` seconds from now.

    One runs at a time; asked for while one runs, the next follows it (after
    the delay asked for). With ``periodic`` an upload also runs every
    ``interval`` seconds while none is asked for. ``stop()`` ends it: an
    upload in progress finishes, nothing more starts.
    """

    def __init__(
        self,
        reactor,
        upload_once: Callable[[], Awaitable],
        *,
        what: str,
        interval: float,
        max_backoff: float,
        periodic: bool = False,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._reactor = reactor
        self._upload_once = upload_once
        self._what = what
        self._interval = interval
        self._max_backoff = max_backoff
        self._periodic = periodic
        self._random = random
        #: Uploads failed in a row.
        self._failures = 0
        self._scheduled = None
        self._uploading = False
        #: The delay asked for while an upload ran: the next one follows it.
        self._again: float | None = None
        self._stopped = False

    def soon(self, delay: float = 0.0) -> None:
        if self._stopped:
            return
        if self._uploading:
            self._again = delay if self._again is None else min(self._again, delay)
        elif self._scheduled is None:
            self._scheduled = self._reactor.callLater(delay, self._start)

    def _start(self) -> None:
        self._scheduled = None
        self._uploading, self._again = True, None
        Deferred.fromCoroutine(self._run()).addCallbacks(self._uploaded, self._failed)

    async def _run(self) -> None:
        await self._upload_once()

    def _uploaded(self, _) -> None:
        self._uploading = False
        self._failures = 0
        if self._again is not None:
            self.soon(self._again)
        elif self._periodic:
            self.soon(self._interval)

    def _failed(self, failure) -> None:
        self._uploading = False
        delay = backoff_delay(self._failures, self._random, first=self._interval, cap=self._max_backoff)
        self._failures += 1
        log.warn("{what} upload failed, retrying in {delay:.1f}s: {error}", what=self._what, delay=delay,
                 error=failure.getErrorMessage())
        self.soon(delay)

    def stop(self) -> None:
        self._stopped = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
