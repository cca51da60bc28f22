"""The proxy's own answers on the kube path, in the protocol kubectl's
handshake chose (HTTP/1.1 or HTTP/2), and the refused-stream hand-over."""
from __future__ import annotations

import json

import h2.config
import h2.connection
import h2.events
from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.proxy.kube import H2StatusAnswer, StatusAnswer, _KubectlEnd, status_answer
from teleport_py.tunnel import StreamRejected


class _TLS(StringTransport):
    """What the answers read of a TLS transport: the protocol ALPN chose."""

    def __init__(self, alpn: bytes | None):
        super().__init__()
        self.negotiatedProtocol = alpn


class _Kubectl:
    """A real HTTP/2 client state machine, as client-go drives one."""

    def __init__(self):
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()

    def request(self, path: bytes = b"/api/v1/pods", end_stream: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", b"GET"), (b":path", path), (b":scheme", b"https"),
                                         (b":authority", b"kube")], end_stream=end_stream)
        return stream_id

    def bytes_out(self) -> bytes:
        return self.h2.data_to_send()

    def answers(self, data: bytes) -> tuple[dict, list]:
        """``{stream_id: (status, body)}`` and the other events."""
        heads, bodies, others = {}, {}, []
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                heads[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
            else:
                others.append(event)
        return {sid: (int(heads[sid][b":status"]), json.loads(bodies[sid])) for sid in heads}, others


class StatusAnswerTests(SynchronousTestCase):
    def test_protocol_follows_alpn(self):
        self.assertIsInstance(status_answer(_TLS(b"h2"), 503, "x"), H2StatusAnswer)
        self.assertIsInstance(status_answer(_TLS(b"http/1.1"), 503, "x"), StatusAnswer)
        self.assertIsInstance(status_answer(_TLS(None), 503, "x"), StatusAnswer)

    def test_http2_every_request_gets_the_status_then_goaway(self):
        transport, kubectl = _TLS(b"h2"), _Kubectl()
        answer = status_answer(transport, 503, 'kubernetes cluster "k8s" is offline')
        answer.makeConnection(transport)
        first, second = kubectl.request(), kubectl.request(b"/api/v1/namespaces")
        answer.dataReceived(kubectl.bytes_out())
        answers, others = kubectl.answers(transport.value())
        self.assertEqual(set(answers), {first, second})
        code, status = answers[first]
        self.assertEqual((code, status["kind"], status["code"], status["reason"]), (503, "Status", 503, "ServiceUnavailable"))
        self.assertEqual(status["message"], 'kubernetes cluster "k8s" is offline')
        [goaway] = [e for e in others if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (0, second))
        self.assertTrue(transport.disconnecting)

    def test_http2_waits_for_a_request(self):
        transport, kubectl = _TLS(b"h2"), _Kubectl()
        answer = status_answer(transport, 403, "no cluster")
        answer.makeConnection(transport)
        answer.dataReceived(kubectl.bytes_out())  # preface and settings only
        self.assertFalse(transport.disconnecting)
        kubectl.request()
        answer.dataReceived(kubectl.bytes_out())
        answers, _ = kubectl.answers(transport.value())
        self.assertEqual(answers[1][0], 403)
        self.assertTrue(transport.disconnecting)

    def test_http2_request_with_a_body_is_answered_early(self):
        transport, kubectl = _TLS(b"h2"), _Kubectl()
        answer = status_answer(transport, 503, "offline")
        answer.makeConnection(transport)
        kubectl.request(end_stream=False)
        answer.dataReceived(kubectl.bytes_out())
        answers, _ = kubectl.answers(transport.value())
        self.assertEqual(answers[1][0], 503)

    def test_http2_garbage_is_goaway_and_close(self):
        transport = _TLS(b"h2")
        answer = status_answer(transport, 503, "offline")
        answer.makeConnection(transport)
        answer.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        answer.dataReceived(b"more after the end")  # ignored, never raises

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=6))
    def test_http2_fuzz_after_the_preface_never_raises(self, chunks):
        transport, kubectl = _TLS(b"h2"), _Kubectl()
        answer = status_answer(transport, 503, "offline")
        answer.makeConnection(transport)
        answer.dataReceived(kubectl.bytes_out())
        for chunk in chunks:
            answer.dataReceived(chunk)

    def test_http11_answer(self):
        transport = _TLS(b"http/1.1")
        answer = status_answer(transport, 503, "offline")
        answer.makeConnection(transport)
        answer.dataReceived(b"GET /api HTTP/1.1\r\nHost: k\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), head)
        self.assertEqual(json.loads(body)["message"], "offline")
        self.assertTrue(transport.disconnecting)


class RefusedStreamTests(SynchronousTestCase):
    """The agent refused the stream: kubectl's held bytes get the 503."""

    def refused(self, alpn: bytes, sent: list[bytes]) -> _TLS:
        opened = Deferred()
        end = _KubectlEnd(lambda peer: opened)
        end.peer = _KubectlEnd(lambda peer: Deferred())  # never connected
        transport = _TLS(alpn)
        end.makeConnection(transport)
        for data in sent:
            end.dataReceived(data)
        opened.errback(Failure(StreamRejected("kubernetes cluster not served here")))
        return transport, end

    def test_http2(self):
        kubectl = _Kubectl()
        kubectl.request()
        transport, _ = self.refused(b"h2", [kubectl.bytes_out()])
        answers, _ = kubectl.answers(transport.value())
        self.assertEqual(answers[1][0], 503)
        self.assertIn("could not take the connection", answers[1][1]["message"])
        self.assertEqual(transport.producerState, "producing")

    def test_http2_request_after_the_refusal(self):
        kubectl = _Kubectl()
        transport, end = self.refused(b"h2", [])
        self.assertFalse(transport.disconnecting)
        kubectl.request()
        end.dataReceived(kubectl.bytes_out())
        answers, _ = kubectl.answers(transport.value())
        self.assertEqual(answers[1][0], 503)
        self.assertTrue(transport.disconnecting)

    def test_http11(self):
        transport, _ = self.refused(b"http/1.1", [b"GET /api HTTP/1.1\r\nHost: k\r\n\r\n"])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(transport.disconnecting)
