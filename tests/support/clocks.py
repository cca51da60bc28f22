"""A reactor whose clock tests can move forward."""
from __future__ import annotations


class ShiftedClock:
    """The real reactor, with ``seconds()`` movable forward for expiry tests."""

    def __init__(self, real):
        self._real = real
        self.offset = 0.0

    def seconds(self):
        return self._real.seconds() + self.offset

    def __getattr__(self, name):
        return getattr(self._real, name)
