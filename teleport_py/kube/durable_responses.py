"""No byte of a response reaches kubectl before its audit event is durable.

Every request's ``kube.request`` event (``StreamContext.audit``) is emitted
before the first byte of its response is written, refusals included, and a
stream (watch, exec) is audited when it starts. So one rule on a tunnel
stream's writes covers both front ends (kube/http1.py, kube/http2.py) and
every way a response is made: a write waits until every event emitted so
far is on the agent's disk (kube/event_spool.py commits them in groups:
events emitted while one ``fsync`` runs share the next). A request that got
an answer therefore has its event even if the agent is killed right after.

Writes keep their order; a write made while earlier ones wait goes after
them. While more than `MAX_HELD` bytes wait, the stream's producer (an API
server connection) is paused. Closing waits for what is held; aborting
drops it.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import directlyProvides, implementer, providedBy

#: Bytes held for durability beyond which the stream's producer is paused.
MAX_HELD = 256 << 10


@implementer(IPushProducer)
class _Pauses:
    """The stream's producer, paused while the transport or the held bytes
    ask for it, and resumed only when neither does."""

    def __init__(self, producer) -> None:
        self.producer = producer
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons:
            self.producer.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self.producer.resumeProducing()

    def pauseProducing(self) -> None:
        self.pause("transport")

    def resumeProducing(self) -> None:
        self.resume("transport")

    def stopProducing(self) -> None:
        self.producer.stopProducing()


class DurableResponses(ProtocolWrapper):
    """A kube stream's front end whose writes wait for ``durable()``: ``None``
    when every audit event emitted so far is on disk, else a Deferred that
    fires once they are (never failing: a spool that cannot write retries,
    and the response waits, failing closed)."""

    def __init__(self, wrapped: Protocol, durable: Callable[[], Deferred | None]) -> None:
        super().__init__(None, wrapped)
        self._durable = durable
        #: Writes in order, each with what it waits for (None: only its predecessors).
        self._held: deque[tuple[bytes, Deferred | None]] = deque()
        self._held_size = 0
        self._closing = False
        self._lost = False
        self._pauses: _Pauses | None = None

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.wrappedProtocol.makeConnection(self)

    def connectionLost(self, reason) -> None:
        self._lost = True
        self._held.clear()
        self._held_size = 0
        self.wrappedProtocol.connectionLost(reason)

    # -- writes ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self._lost:
            return
        waits = self._durable()
        if waits is None and not self._held:
            self.transport.write(data)
            return
        self._held.append((data, waits))
        self._held_size += len(data)
        if self._held_size > MAX_HELD and self._pauses is not None:
            self._pauses.pause("held")
        if waits is not None:
            waits.addCallback(self._release)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def _release(self, _=None) -> None:
        """Write, in order, every held write whose events are now durable."""
        out = []
        while self._held and (self._held[0][1] is None or self._held[0][1].called):
            data, _ = self._held.popleft()
            self._held_size -= len(data)
            out.append(data)
        if out and not self._lost:
            self.transport.write(b"".join(out))
        if self._held_size <= MAX_HELD and self._pauses is not None:
            self._pauses.resume("held")
        if self._closing and not self._held and not self._lost:
            self.transport.loseConnection()

    def loseConnection(self) -> None:
        self.disconnecting = 1
        if self._held:
            self._closing = True
            return
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._held.clear()
        self._held_size = 0
        self.transport.abortConnection()

    # -- the producer writing to kubectl -----------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        if not streaming:
            self.transport.registerProducer(producer, streaming)
            return
        self._pauses = _Pauses(producer)
        if self._held_size > MAX_HELD:
            self._pauses.pause("held")
        self.transport.registerProducer(self._pauses, True)

    def unregisterProducer(self) -> None:
        """A producer paused for held bytes is resumed before it is let go:
        no one else would (an API server connection goes back to its pool)."""
        pauses, self._pauses = self._pauses, None
        if pauses is not None:
            pauses.resume("held")
        self.transport.unregisterProducer()
