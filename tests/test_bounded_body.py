"""teleport_py.bounded_body: an answer read whole up to a limit, the
connection abandoned as soon as the limit is passed."""
from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from teleport_py.bounded_body import BodyTooLarge, read_bounded


class Response:
    """A twisted.web response whose body arrives in ``chunks``, then ends
    (unless the reader gave up first)."""

    length = None  # no Content-Length: read to the end

    def __init__(self, chunks):
        self.chunks = chunks
        self.transport = StringTransport()
        self.delivered = 0

    def deliverBody(self, protocol):
        protocol.makeConnection(self.transport)
        for chunk in self.chunks:
            if self.transport.disconnecting:
                return
            self.delivered += len(chunk)
            protocol.dataReceived(chunk)
        protocol.connectionLost(Failure(ResponseDone()))


def _run(response, limit):
    return Deferred.fromCoroutine(read_bounded(response, limit))


class ReadBoundedTests(SynchronousTestCase):
    @given(st.lists(st.binary(max_size=50), max_size=10), st.integers(0, 600))
    def test_whole_answers_up_to_the_limit_and_refusal_past_it(self, chunks, limit):
        response = Response(chunks)
        body = b"".join(chunks)
        d = _run(response, limit)
        if len(body) <= limit:
            self.assertEqual(self.successResultOf(d), body)
            self.assertFalse(response.transport.disconnecting)
        else:
            self.assertEqual(self.failureResultOf(d, BodyTooLarge).value.limit, limit)
            # Abandoned at the chunk that passed the limit: nothing after it was read.
            self.assertTrue(response.transport.disconnecting)
            self.assertLessEqual(response.delivered, limit + max(len(c) for c in chunks))

    def test_an_endless_answer_costs_at_most_the_limit(self):
        class Endless(Response):
            def deliverBody(self, protocol):
                protocol.makeConnection(self.transport)
                while not self.transport.disconnecting:
                    self.delivered += 1 << 16
                    protocol.dataReceived(b"x" * (1 << 16))

        response = Endless([])
        self.failureResultOf(_run(response, 1 << 20), BodyTooLarge)
        self.assertEqual(response.delivered, (1 << 20) + (1 << 16))
