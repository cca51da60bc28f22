"""``tsh recordings ls`` and ``tsh play`` through the real console script,
against the fake proxy of tests.support.tsh serving one recording in small pages."""
from __future__ import annotations

import base64
import json

from teleport_py.recording import asciicast
from teleport_py.recording.format import encode, read_all
from tests.support.tsh import FakeProxyAPI, TshTestCase

SID = "0b7f4f8e-6d1a-4c3e-9f59-3a1d2b9c0e11"
RECORDING = b"".join(map(encode, [
    {"type": "session.start", "ms": 0, "session_id": SID, "user": "alice", "kind": "exec",
     "namespace": "dev", "pod": "web-0", "command": ["sh"], "time": "2026-01-01T00:00:00.000000Z"},
    {"type": "print", "ms": 10, "stream": "stdout", "data": b"$ "},
    {"type": "resize", "ms": 20, "width": 80, "height": 24},
    {"type": "print", "ms": 300, "stream": "stdout", "data": b"exit 3\r\n"},
    {"type": "exit", "ms": 310, "code": 3, "message": "command terminated"},
    {"type": "session.end", "ms": 320, "bytes_in": 7, "bytes_out": 10, "duration_ms": 320},
]))
PAGE = 50


class RecordingsProxy(FakeProxyAPI):
    def render(self, request):
        path = request.path.decode()
        if path.startswith("/webapi/recordings"):
            request.setHeader(b"content-type", b"application/json")
            if self.caller(request) is None:
                return self.error(request, 403, "login required")
            if path == "/webapi/recordings":
                return json.dumps({"items": [{"session_id": SID, "user": "alice", "kind": "exec",
                                              "namespace": "dev", "pod": "web-0", "command": ["sh"],
                                              "time": "2026-01-01T00:00:00", "complete": True}]}).encode()
            if path == f"/webapi/recordings/{SID}/data":
                offset = int(request.args[b"offset"][0])
                data = RECORDING[offset:offset + PAGE]
                return json.dumps({"data": base64.b64encode(data).decode(), "next_offset": offset + len(data),
                                   "size": len(RECORDING), "complete": True}).encode()
            return self.error(request, 404, f"recording {path.rsplit('/', 2)[-2]} not found")
        return super().render(request)


class RecordingsCLITests(TshTestCase):
    async def start_proxy(self):
        await super().start_proxy()
        self.api.__class__ = RecordingsProxy

    async def test_ls_lists_sessions(self):
        await self.login()
        result = await self.tsh("recordings", "ls")
        self.assertEqual(result.code, 0, result.err)
        lines = result.out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "User", "Kind", "Pod", "Command", "Started", "Complete"])
        self.assertIn(SID, lines[2])
        self.assertIn("dev/web-0", lines[2])

    async def test_play_text_shows_the_output(self):
        await self.login()
        result = await self.tsh("play", SID, "--speed", "4")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out, "$ exit 3\r\n")

    async def test_play_json_shows_every_event(self):
        await self.login()
        result = await self.tsh("play", SID, "--format=json")
        self.assertEqual(result.code, 0, result.err)
        events = [json.loads(line) for line in result.out.splitlines()]
        self.assertEqual([e["type"] for e in events],
                         ["session.start", "print", "resize", "print", "exit", "session.end"])
        self.assertEqual(events[3]["data"], "exit 3\r\n")

    async def test_play_asciicast_is_the_web_download(self):
        """The same document the web UI's download serves (asciicast.convert,
        tested there against the proxy), here paged from the proxy by tsh."""
        await self.login()
        result = await self.tsh("play", SID, "--format=asciicast")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out, asciicast.convert(read_all(RECORDING)))
        lines = [json.loads(line) for line in result.out.splitlines()]
        self.assertEqual(lines[0]["version"], 2)
        # Output came before the first resize: asciinema's 80x24, then the resize.
        self.assertEqual(lines[1:], [[0.01, "o", "$ "], [0.02, "r", "80x24"], [0.3, "o", "exit 3\r\n"],
                                     [0.31, "m", "exited with code 3: command terminated"]])

    async def test_play_unknown_session_and_bad_speed(self):
        await self.login()
        result = await self.tsh("play", "1b7f4f8e-6d1a-4c3e-9f59-3a1d2b9c0e11")
        self.assertEqual(result.code, 1)
        self.assertIn("not found", result.err)
        result = await self.tsh("play", SID, "--speed", "0")
        self.assertEqual(result.code, 2)
