"""The recording format: round trips through any TCP-like split, torn tails,
version 1 recordings still readable, and fuzzing that may only raise
RecordingFormatError."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.recording.format import (
    MAX_PAYLOAD, RecordingFormatError, RecordingReader, complete_prefix, decode_header, encode, last_ms, print_header,
    read_all,
)

START = {"type": "session.start", "ms": 0, "session_id": "s", "user": "alice"}
events = st.one_of(
    st.builds(lambda ms, data: {"type": "print", "ms": ms, "stream": "stdout", "data": data},
              st.integers(0, 10**9), st.binary(max_size=64) | st.just(b"\n{}\n")),
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
        self.assertTrue(reader.close())
        self.assertEqual(got, [START] + body)
        self.assertEqual(complete_prefix(data), data)

    def test_output_is_stored_raw_after_its_header(self):
        record = encode({"type": "print", "ms": 5, "stream": "stdout", "data": b"\x00\xffhi\n"})
        header, payload = record.split(b"\n", 1)
        self.assertEqual(payload, b"\x00\xffhi\n")
        self.assertEqual(decode_header(header)["size"], 5)

    @given(st.integers(0, 10**12), st.sampled_from(["stdout", "stderr"]), st.integers(0, MAX_PAYLOAD))
    def test_print_header_is_the_header_encode_writes(self, ms, stream, size):
        data = b"x" * size
        self.assertEqual(print_header(ms, stream, size) + data,
                         encode({"type": "print", "ms": ms, "stream": stream, "data": data}))

    def test_print_header_refuses_what_encode_would_not_write(self):
        for ms, stream, size in [(1, 'std"out', 1), (1.5, "stdout", 1), (1, "stdout", MAX_PAYLOAD + 1), (1, "stdout", -1)]:
            self.assertRaises(RecordingFormatError, print_header, ms, stream, size)

    def test_a_torn_record_is_dropped_wherever_it_was_cut(self):
        whole = encode(START) + encode({"type": "print", "ms": 5, "data": b"hi there"})
        for cut in range(len(encode(START)) + 1, len(whole)):
            reader = RecordingReader()
            self.assertEqual(len(reader.feed(whole[:cut])), 1)
            self.assertFalse(reader.close())
            self.assertEqual(complete_prefix(whole[:cut]), encode(START))
            self.assertEqual(last_ms(whole[:cut]), START["ms"])
        self.assertEqual(last_ms(whole), 5)
        self.assertEqual(last_ms(whole[len(encode(START)):]), 5)  # a later chunk: no session.start needed
        self.assertIsNone(last_ms(b""))

    def test_version_1_recordings_still_play(self):
        """Stored before output went raw: data as base64 inside the line."""
        v1 = (b'{"ms":0,"session_id":"s","type":"session.start","user":"alice"}\n'
              b'{"data":"aGkK","ms":12,"stream":"stdout","type":"print"}\n'
              b'{"code":0,"message":"","ms":20,"type":"exit"}\n')
        self.assertEqual(read_all(v1)[1], {"type": "print", "ms": 12, "stream": "stdout", "data": b"hi\n"})
        self.assertEqual(complete_prefix(v1 + b'{"data":"aG'), v1)

    def test_sizes_out_of_range_are_refused(self):
        for header in (b'{"type":"print","ms":1,"size":-1}', b'{"type":"print","ms":1,"size":"3"}',
                       b'{"type":"print","ms":1,"size":%d}' % (MAX_PAYLOAD + 1),
                       b'{"type":"print","ms":1,"size":1,"data":"aA=="}'):
            self.assertRaises(RecordingFormatError, decode_header, header)
        self.assertRaises(RecordingFormatError, encode, {"type": "print", "ms": 1, "data": b"x" * (MAX_PAYLOAD + 1)})

    def test_garbage_ends_the_uploadable_prefix(self):
        self.assertEqual(complete_prefix(encode(START) + b"not json\n" + encode(START)), encode(START))

    def test_a_recording_starts_with_session_start(self):
        self.assertRaises(RecordingFormatError, read_all, encode({"type": "exit", "ms": 0, "code": 0}))

    def test_bad_lines_are_refused(self):
        for line in (b"{", b"[]", b'{"type":"nope","ms":0}', b'{"type":"print","ms":-1}',
                     b'{"type":"print","ms":1,"data":"***"}', b'{"type":"print","ms":1.5}'):
            self.assertRaises(RecordingFormatError, decode_header, line)
        self.assertRaises(RecordingFormatError, encode, {"type": "print"})

    @given(st.binary(max_size=512))
    def test_fuzz_only_raises_the_format_error(self, data):
        try:
            read_all(data)
            read_all(encode(START) + data)
        except RecordingFormatError:
            pass
        self.assertTrue((encode(START) + data).startswith(complete_prefix(encode(START) + data)))

    def test_an_endless_line_is_refused(self):
        reader = RecordingReader()
        reader.feed(encode(START))
        self.assertRaises(RecordingFormatError, reader.feed, b"x" * (2 << 20))
