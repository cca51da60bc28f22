"""Retry delays: doubling from a first delay up to a cap, each shortened at random.

Every client that retries against a peer it lost (the agent's tunnel to the
proxy, the spools' uploads to Auth) waits this long, so that agents cut off
together do not all come back in the same instant.
"""
from __future__ import annotations

import random as _random
from typing import Callable

#: The share of a delay taken off at random, at most.
JITTER = 0.25


def backoff_delay(attempt: int, random: Callable[[], float] = _random.random, *,
                  first: float = 1.0, cap: float = 8.0) -> float:
    """Before retry ``attempt`` (0 for the first): ``first``, twice that,
    four times, ... seconds up to ``cap``, each shortened by up to a quarter."""
    base = min(first * 2.0 ** min(attempt, 64), cap)
    return base * (1 - JITTER * random())
