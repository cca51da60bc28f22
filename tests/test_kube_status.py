"""Kubernetes Status answers, built in one place for the proxy and the agent."""
import json

import h11
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube_status import KubeStatus, reason_phrase


class KubeStatusTests(SynchronousTestCase):
    def test_body_is_a_failure_status_with_the_api_servers_reason_for_the_code(self):
        body = json.loads(KubeStatus(403, "no", details={"name": "x", "group": "", "kind": "pods"}).body())
        self.assertEqual(body, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "no", "reason": "Forbidden", "code": 403,
                                "details": {"name": "x", "group": "", "kind": "pods"}})
        self.assertEqual(json.loads(KubeStatus(400, "bad").body())["reason"], "BadRequest")
        self.assertEqual(json.loads(KubeStatus(503, "off").body())["reason"], "ServiceUnavailable")
        self.assertEqual(json.loads(KubeStatus(502, "x", "BadGateway").body())["reason"], "BadGateway")

    def test_every_http11_answer_has_its_reason_phrase(self):
        response = KubeStatus(403, "no").h11_events()[0]
        self.assertEqual((response.status_code, response.reason), (403, b"Forbidden"))
        raw = KubeStatus(503, "offline").http11()
        self.assertTrue(raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(raw)
        response = client.next_event()
        self.assertEqual(dict(response.headers)[b"connection"], b"close")
        self.assertEqual(json.loads(client.next_event().data)["message"], "offline")
        self.assertEqual(reason_phrase(599), b"Unknown")

    def test_a_text_answer_is_the_message_as_text_plain(self):
        status = KubeStatus(403, "please select a user", text=True)
        body = status.body()
        self.assertEqual(body, b"please select a user\n")
        self.assertIn((b"content-type", b"text/plain; charset=utf-8"), status.headers(body))
        self.assertEqual(status.h2_headers(body)[0], (b":status", b"403"))
