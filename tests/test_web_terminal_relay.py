"""teleport_py.web.terminal_relay with in-memory transports and a clock:
the relay both ways, and every way a terminal ends (refused, idle, session
expiry, sign-out, bad browser bytes, the agent's exit status and close)."""
from __future__ import annotations

import json
import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from teleport_py.websocket import OP_BINARY, OP_CLOSE, FrameParser, encode_close, encode_frame, parse_close
from teleport_py.web.terminal_protocol import ExecTarget, Refused, Switched, accept_key
from teleport_py.web.terminal_relay import AgentExec, BrowserTerminal


def masked(opcode, payload):
    return encode_frame(opcode, payload, mask=os.urandom(4))


class Relay(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.signed_in = True
        self.browser_transport = StringTransport()
        self.started = []
        async def still_signed_in():
            if self.signed_in is None:
                raise ConnectionRefusedError("auth unreachable")
            return self.signed_in

        self.terminal = BrowserTerminal(self.clock, self.started.append, expires=1000.0,
                                        still_signed_in=still_signed_in, idle_timeout=60.0, session_check=10.0)
        self.terminal.makeConnection(self.browser_transport)

    def browser_got(self):
        messages = FrameParser(expect_masked=False).feed(self.browser_transport.value())
        self.browser_transport.clear()
        return messages

    def status(self, frame):
        self.assertEqual((frame.opcode, frame.payload[:1]), (OP_BINARY, b"\x03"))
        return json.loads(frame.payload[1:])

    def assert_ended_with(self, code, words, close=1000):
        status, closing = self.browser_got()[-2:]
        self.assertEqual((self.status(status)["code"], parse_close(closing.payload)[0]), (code, close))
        self.assertIn(words, self.status(status)["message"])
        self.assertTrue(self.browser_transport.disconnecting)

    def join(self):
        decided = []
        agent = AgentExec.for_target(ExecTarget("default", "pod", "app", ("sh",)), decided.append)
        agent_transport = StringTransport()
        agent.makeConnection(agent_transport)
        request = agent_transport.value()
        key = [line.split(b": ")[1] for line in request.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Key")][0]
        agent.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n"
            b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n" + encode_frame(OP_BINARY, b"\x01$ ", mask=None))
        self.assertIsInstance(decided[0], Switched)
        agent_transport.clear()
        self.terminal.joined(agent)
        return agent, agent_transport

    def test_nothing_is_read_before_the_exec_starts(self):
        self.assertEqual(self.started, [self.terminal])
        self.assertEqual(self.browser_transport.producerState, "paused")

    def test_relayed_both_ways(self):
        agent, agent_transport = self.join()
        self.assertEqual(self.browser_transport.producerState, "producing")
        self.assertEqual([m.payload for m in self.browser_got()], [b"\x01$ "])  # held with the 101, then relayed
        self.terminal.dataReceived(masked(OP_BINARY, b"\x00ls\r") + masked(OP_BINARY, b'\x04{"width":90,"height":20}'))
        sent = FrameParser(expect_masked=True).feed(agent_transport.value())
        self.assertEqual([f.payload for f in sent], [b"\x00ls\r", b'\x04{"Width": 90, "Height": 20}'])
        agent.dataReceived(encode_frame(OP_BINARY, b"\x01file\r\n", mask=None)
                           + encode_frame(OP_BINARY, b'\x03{"status":"Success"}', mask=None)
                           + encode_frame(OP_CLOSE, encode_close(1000), mask=None))
        got = self.browser_got()
        self.assertEqual([f.payload for f in got[:2]], [b"\x01file\r\n", b'\x03{"status":"Success"}'])
        self.assertEqual(got[2].opcode, OP_CLOSE)  # no second status after the exec's own
        self.assertEqual(len(got), 3)
        self.assertTrue(agent_transport.disconnecting)

    def test_refused_by_the_agent(self):
        decided = []
        agent = AgentExec.for_target(ExecTarget("default", "pod", "", ("sh",)), decided.append)
        agent.makeConnection(StringTransport())
        body = b'{"kind":"Status","message":"pods \\"pod\\" is forbidden: User \\"vic\\" cannot exec"}'
        agent.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(decided, [Refused(403, 'pods "pod" is forbidden: User "vic" cannot exec')])
        self.terminal.end(decided[0].message, 403)
        self.assert_ended_with(403, "cannot exec")

    def test_idle(self):
        agent, agent_transport = self.join()
        self.clock.advance(59)
        self.terminal.dataReceived(masked(OP_BINARY, b"\x00x"))
        self.clock.advance(59)
        self.assertFalse(self.browser_transport.disconnecting)
        self.clock.advance(1)
        self.assert_ended_with(408, "idle for 60 s")
        self.assertTrue(agent_transport.disconnecting)

    def test_session_expiry(self):
        self.join()
        for _ in range(20):
            self.clock.advance(50)
            self.terminal.dataReceived(masked(OP_BINARY, b"\x00x"))
        self.assert_ended_with(401, "web session has ended")

    def test_signed_out(self):
        _, agent_transport = self.join()
        self.clock.advance(10)
        self.signed_in = None  # an unanswered check keeps the terminal
        self.clock.advance(10)
        self.signed_in = False
        self.clock.advance(9)
        self.assertFalse(self.browser_transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual([f.opcode for f in FrameParser(expect_masked=True).feed(agent_transport.value())], [OP_CLOSE])
        self.assert_ended_with(401, "web session has ended")

    def test_a_session_auth_cannot_confirm_ends_after_a_while(self):
        """Checks Auth does not answer keep the terminal for a while (an Auth
        failing over), then end it: failing closed; an answer in between
        starts the count again."""
        self.join()

        def typing_for(seconds):  # the user types: the terminal is not idle
            for _ in range(seconds // 10):
                self.clock.advance(10)
                self.terminal.dataReceived(masked(OP_BINARY, b"\x00x"))

        self.signed_in = None
        typing_for(50)  # checks at 10..50 unanswered: 40 s since the first
        self.signed_in = True
        typing_for(10)  # answered at 60: the count starts again
        self.signed_in = None
        typing_for(60)  # unanswered at 70..120: 50 s since the first
        self.assertFalse(self.browser_transport.disconnecting)
        typing_for(10)  # 60 s
        self.assert_ended_with(503, "could not confirm your web session")

    def test_bad_browser_bytes(self):
        _, agent_transport = self.join()
        self.terminal.dataReceived(masked(OP_BINARY, b"\x01pretending to be output"))
        self.assertEqual(FrameParser(expect_masked=True).feed(agent_transport.value())[-1].opcode, OP_CLOSE)
        self.assert_ended_with(400, "may not write channel 1", close=1002)

    def test_agent_lost(self):
        agent, _ = self.join()
        agent.connectionLost(None)
        self.assert_ended_with(503, "connection to the Kubernetes service was lost")

    def test_browser_gone_before_the_exec_started(self):
        self.terminal.connectionLost(None)
        decided = []
        agent = AgentExec.for_target(ExecTarget("default", "pod", "", ("sh",)), decided.append)
        agent_transport = StringTransport()
        agent.makeConnection(agent_transport)
        self.terminal.joined(agent)
        self.assertTrue(agent_transport.disconnecting)
