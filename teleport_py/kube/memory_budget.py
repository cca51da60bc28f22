"""The agent-wide memory budget for bodies it must hold whole.

Most of what the agent relays streams through in pieces, but two things
are held whole: a LIST response filtered by role (the whole JSON is parsed,
filtered and encoded again, on a worker thread) and a request body whose
object name decides authorization. One of them is bounded on its own, yet
twenty at once could exhaust the agent's memory. Each holds a ``Claim`` on
one ``MemoryBudget`` (``kubernetes_service.buffer_memory_limit``) and grows
it before it stores a byte; past the budget the request is refused with a
429 Status (kubectl retries it after ``Retry-After``), never an out-of-memory
process. A body that could not fit even alone is refused as too large.

Sans-IO and single-threaded: claims are taken and released on the reactor
thread; a worker thread only uses memory already claimed.
"""
from __future__ import annotations

#: Memory a filtered LIST needs per byte of its (inflated) body: the body
#: itself, plus the parsed objects and the re-encoded body while it is
#: filtered. Measured with tracemalloc on 19-26 MiB ConfigMap lists: parse
#: and re-encode peak at 3.0x (large items) to 6.6x (100,000 small ones)
#: the body, so 8x covers the body and the worst case measured.
LIST_BYTE_COST = 8

DEFAULT_LIMIT = 1 << 30


class OverBudget(Exception):
    """The budget is spent by other requests: refuse this one, to be retried."""


class TooLarge(Exception):
    """This body alone would spend more than the whole budget."""


class MemoryBudget:
    """``limit`` bytes shared by every claim of one agent."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        if limit <= 0:
            raise ValueError("a memory budget needs a positive limit")
        self.limit = limit
        self.used = 0

    def claim(self) -> "Claim":
        return Claim(self)

    def describe(self) -> str:
        return f"{self.used >> 20} MiB of {self.limit >> 20} MiB in use"


class Claim:
    """One request's share of a budget: grows as its body arrives and is
    released once, whatever way the request ends."""

    def __init__(self, budget: MemoryBudget):
        self._budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise ``TooLarge``/``OverBudget`` holding nothing more."""
        budget = self._budget
        if self.held + size > budget.limit:
            raise TooLarge(f"needs more than the agent's buffer memory limit of {budget.limit >> 20} MiB")
        if budget.used + size > budget.limit:
            raise OverBudget(f"the agent's buffer memory is spent ({budget.describe()})")
        budget.used += size
        self.held += size

    def release(self) -> None:
        self._budget.used -= self.held
        self.held = 0
