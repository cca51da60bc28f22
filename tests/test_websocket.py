"""
Tests for teleport_py.websocket: RFC 6455 frames, masking, reassembly.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.websocket import (
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Message,
    MessageAssembler,
    WebSocketError,
    WsFrame,
    apply_mask,
    encode_close,
    encode_frame,
    parse_close,
)
from teleport_py.websocket.frames import MASK_BLOCK

masks = st.one_of(st.none(), st.binary(min_size=4, max_size=4))
data_frames = st.tuples(st.sampled_from([OP_TEXT, OP_BINARY, OP_CONTINUATION]),
                        st.binary(max_size=70000), st.booleans())
control_frames = st.tuples(st.sampled_from([OP_CLOSE, OP_PING, OP_PONG]),
                           st.binary(max_size=125), st.just(True))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end]
            for start, end in zip([0] + points, points + [len(data)])]


def parse_all(parser: FrameParser, chunks: list[bytes]) -> list[WsFrame]:
    return [frame for chunk in chunks for frame in parser.feed(chunk)]


class FrameTests(SynchronousTestCase):
    @given(st.binary(min_size=4, max_size=4), st.binary(max_size=2000))
    def test_mask_is_a_byte_by_byte_xor_with_the_repeated_key(self, mask, payload):
        self.assertEqual(apply_mask(mask, payload), bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    @settings(max_examples=50, deadline=None)
    @given(st.binary(min_size=4, max_size=4), st.integers(0, 5 * MASK_BLOCK), st.binary(min_size=1, max_size=64))
    def test_mask_of_payloads_across_blocks(self, mask, length, pattern):
        """Payloads longer than one block are unmasked block by block: the key keeps its phase."""
        payload = (pattern * (length // len(pattern) + 1))[:length]
        self.assertEqual(apply_mask(mask, payload), bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        self.assertEqual(apply_mask(mask, memoryview(payload)), apply_mask(mask, payload))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(data_frames, control_frames), max_size=6),
           st.booleans(), st.lists(st.integers(0, 10**6), max_size=8))
    def test_round_trip_any_split(self, sent, masked, cuts):
        """Frames of every length class survive masking and any TCP split."""
        mask = b"\x12\x34\x56\x78" if masked else None
        wire = b"".join(encode_frame(opcode, payload, mask=mask, fin=fin)
                        for opcode, payload, fin in sent)
        parsed = parse_all(FrameParser(expect_masked=masked), split_at(wire, cuts))
        self.assertEqual(parsed, [WsFrame(opcode, fin, payload, 0)
                                  for opcode, payload, fin in sent])

    def test_rfc6455_examples(self):
        """The examples of RFC 6455 section 5.7."""
        self.assertEqual(encode_frame(OP_TEXT, b"Hello", mask=None),
                         b"\x81\x05\x48\x65\x6c\x6c\x6f")
        masked = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        self.assertEqual(encode_frame(OP_TEXT, b"Hello", mask=b"\x37\xfa\x21\x3d"),
                         masked)
        self.assertEqual(FrameParser(expect_masked=True).feed(masked),
                         [WsFrame(OP_TEXT, True, b"Hello", 0)])
        fragments = b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f"
        self.assertEqual(FrameParser(expect_masked=False).feed(fragments),
                         [WsFrame(OP_TEXT, False, b"Hel", 0),
                          WsFrame(OP_CONTINUATION, True, b"lo", 0)])
        self.assertEqual(encode_frame(OP_BINARY, b"\0" * 256, mask=None)[:4],
                         b"\x82\x7e\x01\x00")
        self.assertEqual(encode_frame(OP_BINARY, b"\0" * 65536, mask=None)[:10],
                         b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00")

    def test_rsv_bits_are_reported(self):
        frame = FrameParser(expect_masked=False).feed(b"\xc2\x01x")
        self.assertEqual(frame, [WsFrame(OP_BINARY, True, b"x", 4)])

    def test_rejected_frames(self):
        bad = {
            "unmasked client frame": (True, encode_frame(OP_BINARY, b"x", mask=None)),
            "masked server frame": (False, encode_frame(OP_BINARY, b"x", mask=b"abcd")),
            "reserved opcode": (False, b"\x83\x00"),
            "reserved control opcode": (False, b"\x8b\x00"),
            "fragmented ping": (False, b"\x09\x00"),
            "long ping": (False, b"\x89\x7e\x00\x7e" + b"\0" * 126),
            "oversized frame": (None, b"\x82\x7f\x80" + b"\0" * 7),
        }
        for name, (expect_masked, wire) in bad.items():
            self.assertRaises(WebSocketError,
                              FrameParser(expect_masked=expect_masked).feed, wire)

    def test_oversized_frame_refused_before_buffering(self):
        parser = FrameParser(expect_masked=False, max_payload=1000)
        self.assertRaises(WebSocketError, parser.feed, b"\x82\x7e\x03\xe9")

    def test_failed_parser_stays_failed(self):
        parser = FrameParser(expect_masked=False)
        self.assertRaises(WebSocketError, parser.feed, b"\x83\x00")
        self.assertRaises(WebSocketError, parser.feed, b"\x82\x00")

    @settings(max_examples=500)
    @given(st.binary(max_size=300), st.sampled_from([True, False, None]))
    def test_fuzz_arbitrary_bytes(self, junk, expect_masked):
        try:
            FrameParser(expect_masked=expect_masked, max_payload=1 << 16).feed(junk)
        except WebSocketError:
            pass


class MessageAssemblerTests(SynchronousTestCase):
    def test_fragmented_message_with_interleaved_ping(self):
        assembler = MessageAssembler()
        out = []
        for frame in [WsFrame(OP_BINARY, False, b"\x01ab"),
                      WsFrame(OP_PING, True, b"p"),
                      WsFrame(OP_CONTINUATION, False, b"cd"),
                      WsFrame(OP_CONTINUATION, True, b"ef")]:
            out += assembler.feed(frame)
        self.assertEqual(out, [Message(OP_PING, b"p"),
                               Message(OP_BINARY, b"\x01abcdef")])

    def test_unfragmented_messages(self):
        assembler = MessageAssembler()
        self.assertEqual(assembler.feed(WsFrame(OP_TEXT, True, b"1aGk=")),
                         [Message(OP_TEXT, b"1aGk=")])
        self.assertEqual(assembler.feed(WsFrame(OP_BINARY, True, b"")),
                         [Message(OP_BINARY, b"")])

    def test_continuation_without_start(self):
        self.assertRaises(WebSocketError, MessageAssembler().feed,
                          WsFrame(OP_CONTINUATION, True, b"x"))

    def test_new_message_inside_another(self):
        assembler = MessageAssembler()
        assembler.feed(WsFrame(OP_BINARY, False, b"x"))
        self.assertRaises(WebSocketError, assembler.feed,
                          WsFrame(OP_BINARY, True, b"y"))

    def test_message_size_is_bounded(self):
        assembler = MessageAssembler(max_message_size=10)
        assembler.feed(WsFrame(OP_BINARY, False, b"x" * 6))
        self.assertRaises(WebSocketError, assembler.feed,
                          WsFrame(OP_CONTINUATION, False, b"x" * 6))

    @settings(max_examples=300)
    @given(st.lists(st.builds(WsFrame, st.sampled_from([0, 1, 2, 8, 9, 10]),
                              st.booleans(), st.binary(max_size=20)), max_size=10))
    def test_fuzz_frame_sequences(self, frames):
        """Any frame order gives messages or WebSocketError; joined data
        never exceeds what was sent."""
        assembler = MessageAssembler()
        try:
            for frame in frames:
                for message in assembler.feed(frame):
                    self.assertLessEqual(len(message.payload),
                                         sum(len(f.payload) for f in frames))
        except WebSocketError:
            pass


class CloseTests(SynchronousTestCase):
    def test_round_trip(self):
        self.assertEqual(parse_close(encode_close(CLOSE_NORMAL, "bye")),
                         (CLOSE_NORMAL, "bye"))
        self.assertEqual(parse_close(b""), (None, ""))

    def test_invalid_payloads(self):
        for payload in [b"\x03", b"\x03\xe7", b"\x03\xed", b"\x07\xd0",
                        b"\x13\x88", b"\x03\xe8\xff"]:
            self.assertRaises(WebSocketError, parse_close, payload)

    def test_application_codes_are_allowed(self):
        self.assertEqual(parse_close(b"\x0f\xa0"), (4000, ""))
