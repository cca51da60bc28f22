"""The recording format: round trips through any TCP-like split, torn tails,
and fuzzing that may only raise RecordingFormatError."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.recording.format import (
    RecordingFormatError, RecordingReader, complete_prefix, decode, encode, read_all,
)

START = {"type": "session.start", "ms": 0, "session_id": "s", "user": "alice"}
events = st.one_of(
    st.builds(lambda ms, data: {"type": "print", "ms": ms, "stream": "stdout", "data": data},
              st.integers(0, 10**9), st.binary(max_size=64)),
    st.builds(lambda ms, w, h: {"type": "resize", "ms": ms, "width": w, "height": h},
              st.integers(0, 10**9), st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(lambda ms, code: {"type": "exit", "ms": ms, "code": code, "message": ""},
              st.integers(0, 10**9), st.integers(0, 255)),
)


class FormatTests(SynchronousTestCase):
    @given(st.lists(events, max_size=20), st.lists(st.integers(0, 10**6), max_size=8))
    def test_round_trip_through_any_split(self, body, cuts):
        data = b"".join(map(encode, [START] + body))
        points = sorted({c % (len(data) + 1) for c in cuts})
        reader = RecordingReader()
        got = []
        for a, b in zip([0] + points, points + [len(data)]):
            got += reader.feed(data[a:b])
        self.assertEqual(reader.close(), b"")
        self.assertEqual(got, [START] + body)

    def test_torn_last_line_is_dropped(self):
        data = encode(START) + encode({"type": "print", "ms": 5, "data": b"hi"})
        self.assertEqual(len(read_all(data[:-3])), 1)
        self.assertEqual(complete_prefix(data[:-3]), encode(START))

    def test_a_recording_starts_with_session_start(self):
        self.assertRaises(RecordingFormatError, read_all, encode({"type": "exit", "ms": 0, "code": 0}))

    def test_bad_lines_are_refused(self):
        for line in (b"{", b"[]", b'{"type":"nope","ms":0}', b'{"type":"print","ms":-1}',
                     b'{"type":"print","ms":1,"data":"***"}', b'{"type":"print","ms":1.5}'):
            self.assertRaises(RecordingFormatError, decode, line)
        self.assertRaises(RecordingFormatError, encode, {"type": "print"})

    @given(st.binary(max_size=512))
    def test_fuzz_only_raises_the_format_error(self, data):
        try:
            read_all(data)
            read_all(encode(START) + data)
        except RecordingFormatError:
            pass

    def test_an_endless_line_is_refused(self):
        reader = RecordingReader()
        reader.feed(encode(START))
        self.assertRaises(RecordingFormatError, reader.feed, b"x" * (2 << 20))
