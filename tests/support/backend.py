"""Helpers the backend test modules share."""

from __future__ import annotations

import functools

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock


def async_test(function):
    @functools.wraps(function)
    def wrapper(self):
        return ensureDeferred(function(self))

    return wrapper


class ClockedReactor:
    """The real reactor for threads and triggers, a ``Clock`` for time: TTLs
    stay deterministic while SQLite still runs on its own thread."""

    def __init__(self, clock: Clock):
        self._clock = clock

    def seconds(self):
        return self._clock.seconds()

    def callLater(self, *args, **kwargs):
        return self._clock.callLater(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(reactor, name)
