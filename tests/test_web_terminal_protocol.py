"""teleport_py.web.terminal_protocol: the web terminal's handshakes and the
messages a browser may send (sans-IO; hypothesis over splits and garbage)."""
from __future__ import annotations

import base64
import json
import os
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import TestCase

from teleport_py.websocket import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, encode_close, encode_frame
from teleport_py.web.terminal_protocol import (
    AGENT_SUBPROTOCOLS, MAX_BROWSER_MESSAGE, AgentMessages, BrowserMessages, ExecTarget, Refused, Switched,
    TerminalProtocolError, UpgradeAnswer, accept_key, browser_upgrade_key, exec_request, parse_resize,
    resize_payload, status_message, switching_protocols,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()


def masked(opcode, payload, fin=True):
    return encode_frame(opcode, payload, mask=os.urandom(4), fin=fin)


def headers(**overrides):
    values = {b"upgrade": b"websocket", b"connection": b"keep-alive, Upgrade", b"sec-websocket-version": b"13",
              b"sec-websocket-protocol": b"v5.channel.k8s.io", b"sec-websocket-key": KEY.encode()}
    values.update({k.replace("_", "-").encode(): v for k, v in overrides.items()})
    return lambda name: values.get(name)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


class HandshakeTests(TestCase):
    def test_rfc6455_accept_key(self):
        self.assertEqual(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_browser_upgrade(self):
        self.assertEqual(browser_upgrade_key(headers()), KEY)
        self.assertIn(f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode(), switching_protocols(KEY))
        self.assertIn(b"Sec-WebSocket-Protocol: v5.channel.k8s.io", switching_protocols(KEY))

    def test_browser_upgrade_refused(self):
        for bad in (dict(upgrade=None), dict(connection=b"close"), dict(sec_websocket_version=b"8"),
                    dict(sec_websocket_protocol=b"v4.channel.k8s.io"), dict(sec_websocket_key=b"short"),
                    dict(sec_websocket_key=None)):
            with self.assertRaises(TerminalProtocolError, msg=bad):
                browser_upgrade_key(headers(**bad))

    def test_exec_target(self):
        target = ExecTarget("default", "pod-1.a", "app", ("sh", "-c", "echo a&b=c"))
        url = urlsplit(target.path())
        self.assertEqual(url.path, "/api/v1/namespaces/default/pods/pod-1.a/exec")
        self.assertEqual(parse_qs(url.query), {"command": ["sh", "-c", "echo a&b=c"], "container": ["app"],
                                               "stdin": ["true"], "stdout": ["true"], "tty": ["true"]})
        request = exec_request(target, KEY)
        self.assertTrue(request.startswith(b"GET /api/v1/namespaces/default/pods/pod-1.a/exec?command=sh&"))
        self.assertIn(b"Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n", request)

    def test_exec_target_refused(self):
        for args in (("Default", "p", "c", ("sh",)), ("ns", "../x", "c", ("sh",)), ("ns", "p", "C_1", ("sh",)),
                     ("ns", "p", "c", ()), ("ns", "p", "c", ("",)), ("ns", "p", "c", ("a\x00",)),
                     ("ns", "p", "c", ("x",) * 65), ("ns", "p", "c", ("x" * 9000,)), ("n" * 64, "p", "c", ("sh",))):
            with self.assertRaises(TerminalProtocolError, msg=args):
                ExecTarget(*args)

    @given(st.lists(st.text(min_size=1, max_size=30).filter(lambda a: "\x00" not in a), min_size=1, max_size=5))
    def test_any_command_round_trips(self, command):
        query = parse_qs(urlsplit(ExecTarget("ns", "pod", "", tuple(command)).path()).query)
        self.assertEqual(query["command"], command)


def answer_101(key, protocol="v5.channel.k8s.io"):
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n").encode()


class UpgradeAnswerTests(TestCase):
    @given(st.lists(st.integers(min_value=0), max_size=6))
    def test_switched_whatever_the_splits(self, cuts):
        first = encode_frame(OP_BINARY, b"\x01hello", mask=None)
        answer = UpgradeAnswer(KEY)
        decided = None
        for piece in split(answer_101(KEY) + first, cuts):
            if decided is None:
                decided = answer.feed(piece)
            else:
                decided = Switched(decided.protocol, decided.rest + piece)
        self.assertEqual(decided, Switched("v5.channel.k8s.io", first))

    def test_v4_is_accepted(self):
        self.assertEqual(UpgradeAnswer(KEY).feed(answer_101(KEY, "v4.channel.k8s.io")).protocol, AGENT_SUBPROTOCOLS[1])

    def test_a_refusal_carries_the_status_message(self):
        body = json.dumps({"kind": "Status", "message": 'user "vic" may not exec into pod "p"'}).encode()
        head = f"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.assertEqual(UpgradeAnswer(KEY).feed(head.encode() + body), Refused(403, 'user "vic" may not exec into pod "p"'))

    def test_a_refusal_without_json(self):
        head = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad"
        self.assertEqual(UpgradeAnswer(KEY).feed(head), Refused(502, "the Kubernetes service answered HTTP 502"))

    def test_closed_before_answering(self):
        answer = UpgradeAnswer(KEY)
        self.assertIsNone(answer.feed(b"HTTP/1.1 10"))
        self.assertEqual(answer.connection_lost().status, 502)

    def test_wrong_accept_or_protocol(self):
        with self.assertRaises(TerminalProtocolError):
            UpgradeAnswer(KEY).feed(answer_101(base64.b64encode(b"another key 1234").decode()))
        with self.assertRaises(TerminalProtocolError):
            UpgradeAnswer(KEY).feed(answer_101(KEY, "channel.k8s.io"))

    def test_a_head_too_large(self):
        with self.assertRaises(TerminalProtocolError):
            UpgradeAnswer(KEY).feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000)

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_garbage_raises_only_the_documented_error(self, data):
        try:
            UpgradeAnswer(KEY).feed(data)
        except TerminalProtocolError:
            pass


class BrowserMessagesTests(TestCase):
    def test_stdin_resize_close_and_controls(self):
        data = (masked(OP_BINARY, b"\x00ls\r") + masked(OP_PING, b"p")
                + masked(OP_BINARY, b'\x04{"width": 120, "HEIGHT": 40, "extra": 1}')
                + masked(OP_BINARY, b"\xff\x00") + masked(OP_CLOSE, encode_close(1000)))
        out = BrowserMessages().feed(data)
        self.assertEqual([(m.opcode, m.payload) for m in out], [
            (OP_BINARY, b"\x00ls\r"), (OP_PING, b"p"), (OP_BINARY, resize_payload(120, 40)),
            (OP_BINARY, b"\xff\x00"), (OP_CLOSE, encode_close(1000))])
        self.assertEqual(resize_payload(120, 40), b'\x04{"Width": 120, "Height": 40}')

    def test_fragmented_stdin(self):
        out = BrowserMessages().feed(masked(OP_BINARY, b"\x00ab", fin=False) + masked(0, b"cd"))
        self.assertEqual([m.payload for m in out], [b"\x00abcd"])

    def test_refused(self):
        for data in (masked(OP_TEXT, b"\x00ls"), masked(OP_BINARY, b""), masked(OP_BINARY, b"\x01out"),
                     masked(OP_BINARY, b"\x03{}"), masked(OP_BINARY, b"\xff\x01"),
                     masked(OP_BINARY, b'\x04{"Width": -1, "Height": 2}'), masked(OP_BINARY, b'\x04{"Width": 1.5}'),
                     masked(OP_BINARY, b"\x04[]"), masked(OP_BINARY, b"\x04" + b" " * 5000),
                     encode_frame(OP_BINARY, b"\x00ls", mask=None),  # a browser must mask
                     masked(OP_BINARY, b"\x00" + b"x" * MAX_BROWSER_MESSAGE),
                     masked(OP_CLOSE, b"\x03\xe8\xff")):
            with self.assertRaises(TerminalProtocolError, msg=data[:12]):
                BrowserMessages().feed(data)

    def test_a_message_too_large_in_fragments(self):
        messages = BrowserMessages()
        messages.feed(masked(OP_BINARY, b"\x00" + b"x" * 40000, fin=False))
        with self.assertRaises(TerminalProtocolError):
            messages.feed(masked(0, b"x" * 40000))

    @given(st.lists(st.sampled_from([b"\x00typed", b'\x04{"Width":80,"Height":24}', b"\xff\x00"]), max_size=8),
           st.lists(st.integers(min_value=0), max_size=8))
    def test_splits_do_not_change_messages(self, payloads, cuts):
        data = b"".join(masked(OP_BINARY, p) for p in payloads)
        messages, out = BrowserMessages(), []
        for piece in split(data, cuts):
            out += messages.feed(piece)
        self.assertEqual([m.payload for m in out],
                         [resize_payload(80, 24) if p[0] == 4 else p for p in payloads])

    @settings(max_examples=300)
    @given(st.binary(max_size=200))
    def test_garbage_raises_only_the_documented_error(self, data):
        try:
            BrowserMessages().feed(data)
        except TerminalProtocolError:
            pass

    @given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
    def test_resize_round_trip(self, width, height):
        self.assertEqual(parse_resize(resize_payload(width, height)[1:]), (width, height))


class AgentMessagesTests(TestCase):
    def test_output_and_status(self):
        data = encode_frame(OP_BINARY, b"\x01hi", mask=None) + encode_frame(OP_BINARY, status_message("no", 403),
                                                                             mask=None)
        out = AgentMessages().feed(data)
        self.assertEqual(out[0].payload, b"\x01hi")
        self.assertEqual(json.loads(out[1].payload[1:])["message"], "no")

    def test_refused(self):
        for data in (encode_frame(OP_TEXT, b"x", mask=None), masked(OP_BINARY, b"\x01x")):
            with self.assertRaises(TerminalProtocolError):
                AgentMessages().feed(data)
