"""Recordings as asciicast v2 (teleport_py.recording.asciicast): the header
with the recorded terminal size, output in order with its times, resizes,
and what is not terminal output as markers."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from teleport_py.recording.asciicast import AsciicastWriter, convert

START = {"type": "session.start", "ms": 0, "session_id": "s", "user": "alice", "kind": "exec", "namespace": "dev",
         "pod": "web-0", "container": "app", "command": ["sh", "-c", "ls"], "time": "2026-01-01T00:00:00Z"}


def parse(document: str):
    # Lines end at "\n" only (text may hold U+2028 and friends, which splitlines also splits at).
    assert document.endswith("\n")
    lines = [json.loads(line) for line in document[:-1].split("\n")]
    return lines[0], lines[1:]


class AsciicastTests(TestCase):
    def test_the_first_resize_sizes_the_terminal_and_later_ones_are_r_events(self):
        header, events = parse(convert([
            START, {"type": "resize", "ms": 0, "width": 120, "height": 40},
            {"type": "print", "ms": 5, "stream": "stdout", "data": b"a"},
            {"type": "resize", "ms": 1500, "width": 90, "height": 20},
            {"type": "print", "ms": 2000, "stream": "stderr", "data": b"b"},
            {"type": "session.end", "ms": 2001},
        ]))
        self.assertEqual(header, {"version": 2, "width": 120, "height": 40, "timestamp": 1767225600,
                                  "title": "alice: exec dev/web-0 [app] sh -c ls", "env": {"TERM": "xterm"}})
        self.assertEqual(events, [[0.005, "o", "a"], [1.5, "r", "90x20"], [2.0, "o", "b"]])

    def test_port_forward_is_markers_not_terminal_output(self):
        header, events = parse(convert([
            {**START, "kind": "portforward", "command": []},
            {"type": "port.open", "ms": 3, "request_id": "0", "port": 8080},
            {"type": "port.close", "ms": 90, "request_id": "0", "port": 8080, "bytes_in": 18, "bytes_out": 19},
            {"type": "port.error", "ms": 95, "request_id": "1", "port": 5432, "message": "refused"},
            {"type": "session.end", "ms": 99, "error": "tunnel lost"},
        ]))
        self.assertEqual((header["width"], header["height"]), (80, 24))
        self.assertEqual(events, [
            [0.003, "m", "port-forward to port 8080 opened"],
            [0.09, "m", "port-forward to port 8080 closed (18 bytes in, 19 bytes out)"],
            [0.095, "m", "port-forward to port 5432 failed: refused"],
            [0.099, "m", "session ended: tunnel lost"],
        ])

    def test_a_recording_without_events_is_a_header(self):
        header, events = parse(convert([START]))
        self.assertEqual((header["version"], events), (2, []))

    @settings(max_examples=200, deadline=None)
    @given(text=st.text(max_size=200), cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=8),
           sizes=st.lists(st.tuples(st.integers(1, 500), st.integers(1, 200)), max_size=3))
    def test_output_survives_any_cut_in_order_and_times_never_go_back(self, text, cuts, sizes):
        data = text.encode("utf-8")
        bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        events = [START]
        ms = 0
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            ms += 7
            events.append({"type": "print", "ms": ms, "stream": "stdout", "data": data[a:b]})
            if i < len(sizes):
                events.append({"type": "resize", "ms": ms, "width": sizes[i][0], "height": sizes[i][1]})
        writer = AsciicastWriter()
        document = "".join(writer.feed(e) for e in events) + writer.close()
        header, out = parse(document)
        self.assertEqual(header["version"], 2)
        self.assertEqual("".join(e[2] for e in out if e[1] == "o"), text)
        times = [e[0] for e in out]
        self.assertEqual(times, sorted(times))
