"""The recording relay (teleport_py.kube.sessions) on in-memory transports:
bytes relayed unchanged, sessions recorded and audited, bad bytes ending
only their session, recording back-pressure."""
from __future__ import annotations

import os

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from teleport_py import spdy, websocket
from teleport_py.kube.sessions import SessionRecorder, negotiated, session_info
from teleport_py.recording.format import read_all
from teleport_py.recording.spool import RecordingSpool
from teleport_py.remotecommand import CLIENT, RemoteCommandError
from tests.support.conversations import port_forward_conversation, spdy_exec_conversation

SPDY_V4 = [(b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1"), (b"x-stream-protocol-version", b"v4.channel.k8s.io")]
#: A SPDY control frame of version 7: spdystream would drop the session too.
BAD_FRAME = b"\x80\x07\x00\x01\x00\x00\x00\x00"
EXEC_TTY = b"/api/v1/namespaces/dev/pods/web-0/exec?command=sh&container=app&stdin=true&stdout=true&tty=true"


def synchronous(f, *args):
    return maybeDeferred(f, *args)


class Harness:
    """A recorder with a synchronous spool in a temp directory, and the two transports."""

    def __init__(self, test: SynchronousTestCase, *, record_output: bool = True, max_backlog: int = 1 << 20,
                 run_blocking=synchronous):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.directory = test.mktemp()
        self.audit: list[dict] = []
        self.spool = RecordingSpool(self.clock, self.directory, upload=None, stored=None,
                                    run_blocking=run_blocking, max_backlog=max_backlog)
        self.spool.stop()  # uploads are tested in test_recording_spool
        self.recorder = SessionRecorder(self.clock, self.audit.append, self.spool, record_output=record_output)
        self.client, self.server = StringTransport(), StringTransport()

    def start(self, target: bytes = EXEC_TTY, headers=SPDY_V4):
        info = session_info(target, headers, user="alice", cluster_name="example", kube_cluster="c1",
                            client_addr="192.0.2.1:5000", kubernetes_users=["alice"], kubernetes_groups=["dev"])
        return self.recorder.start(info, self.client, self.server)

    def play(self, relay, chunks) -> None:
        for direction, data in chunks:
            self.clock.advance(0.25)
            (relay.from_client if direction == CLIENT else relay.from_server)(data)

    def recording(self, relay, suffix=".rec") -> list[dict]:
        with open(os.path.join(self.directory, relay.info.session_id + suffix), "rb") as f:
            return read_all(f.read())

    def types(self) -> list[str]:
        return [e["event"] for e in self.audit]


class RelayTests(SynchronousTestCase):
    def test_tty_exec_is_relayed_unchanged_recorded_and_audited(self):
        h = Harness(self)
        relay = h.start()
        conversation = spdy_exec_conversation()
        h.play(relay, conversation.chunks)
        relay.connection_lost()
        self.assertEqual(h.server.value(), conversation.joined(CLIENT))
        self.assertEqual(h.client.value(), conversation.joined("server"))

        recording = h.recording(relay)
        start = recording[0]
        self.assertEqual((start["type"], start["user"], start["pod"], start["namespace"], start["container"]),
                         ("session.start", "alice", "web-0", "dev", "app"))
        self.assertEqual((start["command"], start["tty"], start["transport"], start["version"]), (["sh"], True, "spdy", 2))
        self.assertEqual([e["data"] for e in recording if e["type"] == "print"], [b"$ ", b"exit 3\r\n"])
        self.assertEqual([(e["width"], e["height"]) for e in recording if e["type"] == "resize"], [(120, 40), (80, 24)])
        self.assertEqual([e["code"] for e in recording if e["type"] == "exit"], [3])
        self.assertNotIn(b"exit 3\n", [e.get("data") for e in recording])  # stdin is not recorded
        times = [e["ms"] for e in recording]
        self.assertEqual(times, sorted(times))
        self.assertGreater(times[-1], 0)
        end = recording[-1]
        self.assertEqual((end["type"], end["bytes_in"], end["bytes_out"]), ("session.end", 7, 10))

        self.assertEqual(h.types(), ["session.start", "resize", "resize", "exec", "session.end"])
        exec_event = h.audit[3]
        self.assertEqual((exec_event["command"], exec_event["exitCode"], exec_event["kubernetes_pod_name"]),
                         ("sh", "3", "web-0"))
        self.assertEqual(exec_event["code"], "T3002E")
        session_end = h.audit[-1]
        self.assertEqual(session_end["participants"], ["alice"])
        self.assertEqual((session_end["bytes_in"], session_end["bytes_out"]), (7, 10))
        self.assertGreater(session_end["duration_ms"], 0)
        self.assertEqual(len({e["sid"] for e in h.audit}), 1)

    def test_output_of_non_interactive_exec_is_optional(self):
        h = Harness(self, record_output=False)
        relay = h.start(target=EXEC_TTY.replace(b"tty=true", b"tty=false"))
        h.play(relay, spdy_exec_conversation().chunks)
        relay.connection_lost()
        recording = h.recording(relay)
        self.assertEqual([e for e in recording if e["type"] == "print"], [])
        self.assertEqual([e["code"] for e in recording if e["type"] == "exit"], [3])

    def test_port_forward_records_ports_and_byte_counts(self):
        h = Harness(self)
        headers = [(b"upgrade", b"SPDY/3.1"), (b"x-stream-protocol-version", b"portforward.k8s.io")]
        relay = h.start(target=b"/api/v1/namespaces/dev/pods/db-0/portforward", headers=headers)
        h.play(relay, port_forward_conversation().chunks)
        relay.connection_lost()
        closes = {e["port"]: (e["bytes_in"], e["bytes_out"]) for e in h.recording(relay) if e["type"] == "port.close"}
        self.assertEqual(closes, {8080: (18, 19), 5432: (4, 0)})
        errors = [e["message"] for e in h.recording(relay) if e["type"] == "port.error"]
        self.assertEqual(errors, ["error forwarding port 5432 to pod abc"])
        self.assertEqual(h.types(), ["session.start", "port", "port", "session.end"])
        self.assertEqual(sorted(e["port"] for e in h.audit if e["event"] == "port"), [5432, 8080])

    def test_garbage_closes_only_this_session_and_is_not_forwarded(self):
        h = Harness(self)
        relay = h.start()
        other = Harness(self).start()
        conversation = spdy_exec_conversation()
        relay.from_client(conversation.chunks[0][1])
        relay.from_client(BAD_FRAME + b"garbage-after-the-upgrade")
        self.assertTrue(h.client.disconnecting and h.server.disconnecting)
        self.assertNotIn(b"garbage", h.server.value())
        end = h.recording(relay)[-1]
        self.assertEqual(end["type"], "session.end")
        self.assertIn("error", end)
        self.assertEqual(h.types()[-1], "session.end")
        self.assertIn("error", h.audit[-1])
        relay.from_server(b"late bytes")  # ignored once ended
        self.assertNotIn(b"late", h.client.value())
        other.from_client(conversation.chunks[0][1])  # another session is unaffected
        self.assertFalse(other.client_transport.disconnecting)

    def test_garbage_from_the_server_closes_the_session(self):
        h = Harness(self)
        relay = h.start()
        relay.from_server(BAD_FRAME)
        self.assertTrue(h.client.disconnecting and h.server.disconnecting)
        self.assertEqual(h.client.value(), b"")

    def test_unrecordable_protocol_is_refused(self):
        h = Harness(self)
        headers = [(b"upgrade", b"SPDY/3.1"), (b"x-stream-protocol-version", b"v9.channel.k8s.io")]
        self.assertRaises(RemoteCommandError, h.start, EXEC_TTY, headers)

    def test_recording_is_on_disk_within_a_flush_interval(self):
        h = Harness(self)
        relay = h.start()
        conversation = spdy_exec_conversation()
        h.play(relay, conversation.chunks[:12])
        h.clock.advance(1.0)
        partial = h.recording(relay, suffix=".part")
        self.assertEqual(partial[0]["type"], "session.start")
        self.assertIn(b"$ ", [e.get("data") for e in partial])

    def test_a_slow_disk_pauses_both_sides_until_flushed(self):
        writes = []

        def slow_disk(f, *args):
            writes.append(Deferred())
            return writes[-1].addCallback(lambda _: f(*args))

        h = Harness(self, max_backlog=1024, run_blocking=slow_disk)
        relay = h.start()
        c = spdy_exec_conversation()
        h.play(relay, c.chunks[:8])  # streams opened
        relay.from_server(c.encoders["server"].encode(spdy.Data(5, b"x" * 4096)))
        self.assertEqual((h.client.producerState, h.server.producerState), ("paused", "paused"))
        while writes:  # the disk catches up
            writes.pop(0).callback(None)
        self.assertEqual((h.client.producerState, h.server.producerState), ("producing", "producing"))

    def test_websocket_protocol_is_taken_from_the_101(self):
        headers = [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io")]
        self.assertEqual(negotiated(headers), ("v5.channel.k8s.io", "websocket"))
        self.assertEqual(negotiated(SPDY_V4), ("v4.channel.k8s.io", "spdy"))

    def test_websocket_exec_is_recorded(self):
        h = Harness(self)
        relay = h.start(headers=[(b"upgrade", b"websocket"), (b"sec-websocket-protocol", b"v5.channel.k8s.io")])
        relay.from_server(websocket.encode_frame(websocket.OP_BINARY, b"\x01", mask=None))
        relay.from_client(websocket.encode_frame(websocket.OP_BINARY, b'\x04{"Width":100,"Height":30}',
                                                 mask=b"abcd"))
        relay.from_server(websocket.encode_frame(websocket.OP_BINARY, b"\x01hello", mask=None))
        relay.from_server(websocket.encode_frame(websocket.OP_BINARY, b'\x03{"metadata":{},"status":"Success"}',
                                                 mask=None))
        relay.from_server(websocket.encode_frame(websocket.OP_CLOSE, b"\x03\xe8", mask=None))
        relay.connection_lost()
        recording = h.recording(relay)
        self.assertEqual([e["type"] for e in recording],
                         ["session.start", "resize", "print", "exit", "session.end"])
        self.assertEqual(recording[3]["code"], 0)
        self.assertEqual(h.audit[-2]["code"], "T3002I")

