"""A kube stream's writes wait until the audit events emitted before them are durable."""
from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.durable_responses import MAX_HELD, DurableResponses


class Producer:
    def __init__(self):
        self.paused = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        self.paused -= 1

    def stopProducing(self):
        pass


class DurableResponsesTests(SynchronousTestCase):
    def setUp(self):
        self.pending: list[Deferred] | None = None  # None: everything is durable
        self.front = Protocol()
        self.wrapper = DurableResponses(self.front, self.durable)
        self.transport = StringTransport()
        self.wrapper.makeConnection(self.transport)

    def durable(self):
        if self.pending is None:
            return None
        d = Deferred()
        self.pending.append(d)
        return d

    def test_writes_pass_when_everything_is_durable(self):
        self.front.transport.write(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(self.transport.value(), b"HTTP/1.1 200 OK\r\n")

    def test_a_write_waits_for_its_events_and_keeps_its_order(self):
        self.pending = []
        self.front.transport.write(b"head ")
        self.assertEqual(self.transport.value(), b"")
        # Newer events (another request's) are not durable when the next write comes.
        self.front.transport.write(b"other ")
        self.pending, waiting = None, self.pending
        self.front.transport.write(b"after")  # nothing pending now, but it may not overtake
        waiting[0].callback(None)
        self.assertEqual(self.transport.value(), b"head ")
        waiting[1].callback(None)
        self.assertEqual(self.transport.value(), b"head other after")
        self.front.transport.write(b"!")
        self.assertEqual(self.transport.value(), b"head other after!")

    def test_close_waits_for_held_bytes_abort_drops_them(self):
        self.pending = []
        self.front.transport.write(b"status")
        self.front.transport.loseConnection()
        self.assertFalse(self.transport.disconnecting)
        self.pending[0].callback(None)
        self.assertEqual(self.transport.value(), b"status")
        self.assertTrue(self.transport.disconnecting)

        other = StringTransport()
        wrapper = DurableResponses(Protocol(), self.durable)
        wrapper.makeConnection(other)
        wrapper.write(b"dropped")
        wrapper.abortConnection()
        self.pending[-1].callback(None)
        self.assertEqual(other.value(), b"")

    def test_producer_paused_while_too_much_is_held(self):
        producer = Producer()
        self.front.transport.registerProducer(producer, True)
        self.pending = []
        self.front.transport.write(b"x" * MAX_HELD)
        self.assertEqual(producer.paused, 0)
        self.front.transport.write(b"y")
        self.assertEqual(producer.paused, 1)
        self.transport.producer.pauseProducing()  # the transport's own pause is kept apart
        self.assertEqual(producer.paused, 1)
        self.pending.pop(0).callback(None)
        self.pending.pop(0).callback(None)
        self.assertEqual(producer.paused, 1)  # still paused by the transport
        self.transport.producer.resumeProducing()
        self.assertEqual(producer.paused, 0)

    def test_unregistering_resumes_a_producer_paused_for_held_bytes(self):
        producer = Producer()
        self.front.transport.registerProducer(producer, True)
        self.pending = []
        self.front.transport.write(b"x" * (MAX_HELD + 1))
        self.assertEqual(producer.paused, 1)
        self.front.transport.unregisterProducer()
        self.assertEqual(producer.paused, 0)
        self.assertIsNone(self.transport.producer)
