"""
Tests for teleport_py.spdy: frame codec and header compression.
"""

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.spdy import (
    SPDY3_DICTIONARY,
    Data,
    FrameEncoder,
    FrameParser,
    GoAway,
    HeaderCompressor,
    HeaderDecompressor,
    Headers,
    Ping,
    RstStream,
    Settings,
    SpdyError,
    SynReply,
    SynStream,
    WindowUpdate,
)
from teleport_py.spdy.headers import encode_header_block

u31 = st.integers(1, 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
header_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\0",
                  exclude_categories=["Lu", "Lt", "Cs"]), min_size=1, max_size=20
).filter(lambda name: name == name.lower())
header_values = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\0",
                          exclude_categories=["Cs"]), max_size=30),
    min_size=1, max_size=3)
header_maps = st.dictionaries(header_names, header_values, max_size=5)

frames = st.one_of(
    st.builds(SynStream, u31, header_maps, st.booleans(), st.booleans(),
              st.integers(0, 7)),
    st.builds(SynReply, u31, header_maps, st.booleans()),
    st.builds(Headers, u31, header_maps, st.booleans()),
    st.builds(RstStream, u31, u32),
    st.builds(Settings, st.lists(st.tuples(st.integers(0, 255),
                                           st.integers(0, 2**24 - 1), u32),
                                 max_size=4).map(tuple)),
    st.builds(Ping, u32),
    st.builds(GoAway, st.integers(0, 2**31 - 1), u32),
    st.builds(WindowUpdate, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(Data, u31, st.binary(max_size=300), st.booleans()),
)

KUBECTL_EXEC_HEADERS = [
    {"streamtype": ["error"]},
    {"streamtype": ["stdin"]},
    {"streamtype": ["stdout"]},
    {"streamtype": ["resize"]},
]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given offsets, as TCP might."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end]
            for start, end in zip([0] + points, points + [len(data)])]


def feed_all(parser: FrameParser, chunks: list[bytes]) -> list:
    return [frame for chunk in chunks for frame in parser.feed(chunk)]


def control(frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack("!HHI", 0x8003, frame_type, flags << 24 | len(payload)) + payload


class DictionaryTests(SynchronousTestCase):
    def test_dictionary_is_the_draft3_constant(self):
        """Length and checksum match the draft (and every other peer)."""
        self.assertEqual(len(SPDY3_DICTIONARY), 1423)
        self.assertEqual(zlib.adler32(SPDY3_DICTIONARY), 0xE3C6A7C2)
        self.assertTrue(SPDY3_DICTIONARY.startswith(b"\x00\x00\x00\x07options"))
        self.assertTrue(SPDY3_DICTIONARY.endswith(b",*,enq=0."))

    def test_decompresses_blocks_from_plain_zlib(self):
        """Blocks compressed by a plain zlib stream with the dictionary, as a
        Go peer does, decode with one persistent decompressor."""
        peer = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=SPDY3_DICTIONARY)
        decompressor = HeaderDecompressor()
        for headers in KUBECTL_EXEC_HEADERS + [
                {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]}]:
            block = (peer.compress(encode_header_block(headers))
                     + peer.flush(zlib.Z_SYNC_FLUSH))
            self.assertEqual(decompressor.decompress(block), headers)

    def test_our_blocks_decode_with_plain_zlib(self):
        compressor = HeaderCompressor()
        peer = zlib.decompressobj(zdict=SPDY3_DICTIONARY)
        for headers in KUBECTL_EXEC_HEADERS:
            self.assertEqual(peer.decompress(compressor.compress(headers)),
                             encode_header_block(headers))

    def test_multiple_values_are_nul_joined(self):
        raw = encode_header_block({"x-stream-protocol-version": ["v4", "v3"]})
        self.assertIn(b"v4\0v3", raw)
        decompressor = HeaderDecompressor()
        self.assertEqual(
            decompressor.decompress(HeaderCompressor().compress(
                {"x-stream-protocol-version": ["v4", "v3"]})),
            {"x-stream-protocol-version": ["v4", "v3"]})


class HeaderBlockErrorTests(SynchronousTestCase):
    def compressed(self, raw: bytes) -> bytes:
        peer = zlib.compressobj(9, zdict=SPDY3_DICTIONARY)
        return peer.compress(raw) + peer.flush(zlib.Z_SYNC_FLUSH)

    def assertRejected(self, raw: bytes):
        self.assertRaises(SpdyError, HeaderDecompressor().decompress,
                          self.compressed(raw))

    def test_uppercase_name(self):
        self.assertRejected(b"\0\0\0\1\0\0\0\x0aStreamType\0\0\0\1x")

    def test_duplicate_name(self):
        one = b"\0\0\0\1a\0\0\0\1x"
        self.assertRejected(b"\0\0\0\2" + one + one)

    def test_truncated_block(self):
        self.assertRejected(b"\0\0\0\2\0\0\0\1a\0\0\0\1x")

    def test_trailing_bytes(self):
        self.assertRejected(b"\0\0\0\0junk")

    def test_not_utf8(self):
        self.assertRejected(b"\0\0\0\1\0\0\0\1a\0\0\0\1\xff")

    def test_zlib_bomb(self):
        """A tiny block inflating past the bound is refused, not buffered."""
        self.assertRejected(b"\0\0\0\1\0\0\0\1a\0\1\0\0" + b"a" * 65536 * 5)

    def test_missing_first_block_is_detected(self):
        compressor = HeaderCompressor()
        compressor.compress({"streamtype": ["error"]})
        second = compressor.compress({"streamtype": ["stdout"]})
        self.assertRaises(SpdyError, HeaderDecompressor().decompress, second)

    def test_missing_middle_block_is_detected(self):
        """Skipping one block leaves the decompressor out of step: later
        blocks are refused instead of decoding to wrong headers."""
        compressor = HeaderCompressor()
        blocks = [compressor.compress(headers) for headers in [
            {"streamtype": ["error"], "port": ["80"], "requestid": ["0"]},
            {"streamtype": ["data"], "port": ["80"], "requestid": ["0"]},
            {"streamtype": ["error"], "port": ["80"], "requestid": ["1"]},
        ]]
        decompressor = HeaderDecompressor()
        decompressor.decompress(blocks[0])
        self.assertRaises(SpdyError, decompressor.decompress, blocks[2])

    def test_encoder_refuses_bad_names_and_values(self):
        for headers in [{"Upper": ["x"]}, {"": ["x"]}, {"a": []}, {"a": ["x\0y"]}]:
            self.assertRaises(SpdyError, encode_header_block, headers)


class FrameCodecTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10**6)))
    def test_round_trip_any_split(self, sent, cuts):
        """Every frame type survives encode -> arbitrary TCP splits -> parse,
        with one compression context per direction across all blocks."""
        wire = b"".join(map(FrameEncoder().encode, sent))
        self.assertEqual(feed_all(FrameParser(), split_at(wire, cuts)), sent)

    def test_wire_layout(self):
        """Byte layouts from protocols.md 1.2, checked literally."""
        encoder = FrameEncoder()
        self.assertEqual(encoder.encode(Ping(1)),
                         b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")
        self.assertEqual(encoder.encode(Data(3, b"hi", fin=True)),
                         b"\x00\x00\x00\x03\x01\x00\x00\x02hi")
        self.assertEqual(encoder.encode(RstStream(5, 5)),
                         control(3, b"\0\0\0\5\0\0\0\5"))
        syn = encoder.encode(SynStream(1, {}, fin=True, unidirectional=True,
                                       priority=7))
        self.assertEqual(syn[:5], b"\x80\x03\x00\x01\x03")  # FIN|UNIDIRECTIONAL
        self.assertEqual(syn[8:18], b"\0\0\0\1\0\0\0\0\xe0\0")

    def test_empty_data_fin_is_a_half_close(self):
        self.assertEqual(FrameParser().feed(b"\0\0\0\1\1\0\0\0"),
                         [Data(1, b"", True)])

    def test_oversized_frame_refused_before_buffering(self):
        parser = FrameParser(max_frame_length=1024)
        self.assertRaises(SpdyError, parser.feed, b"\0\0\0\1\0\0\x04\x01")

    def test_failed_parser_stays_failed(self):
        parser = FrameParser()
        self.assertRaises(SpdyError, parser.feed, b"\0\0\0\0\0\0\0\0")
        self.assertRaises(SpdyError, parser.feed, FrameEncoder().encode(Ping(1)))

    def test_rejected_frames(self):
        bad = {
            "data on stream 0": b"\0\0\0\0\0\0\0\1x",
            "unknown control type": control(5, b""),
            "credential frame": control(10, b"\0\0\0\0"),
            "version 2": b"\x80\x02\x00\x06\x00\x00\x00\x04\0\0\0\1",
            "short ping": control(6, b"\0\0\1"),
            "long goaway": control(7, b"\0" * 12),
            "rst on stream 0": control(3, b"\0\0\0\0\0\0\0\5"),
            "short syn_stream": control(1, b"\0\0\0\1\0\0\0\0\0"),
            "syn_reply on stream 0": control(2, b"\0\0\0\0"),
            "settings count mismatch": control(4, b"\0\0\0\2" + b"\0" * 8),
            "short settings": control(4, b"\0\0"),
            "syn_stream without header block": control(1, b"\0\0\0\1" + b"\0" * 6),
        }
        for name, wire in bad.items():
            self.assertRaises(SpdyError, FrameParser().feed, wire)

    @settings(max_examples=500)
    @given(st.binary(max_size=200))
    def test_fuzz_arbitrary_bytes(self, junk):
        """Garbage yields frames or SpdyError, nothing else."""
        try:
            FrameParser().feed(junk)
        except SpdyError:
            pass

    @settings(max_examples=500)
    @given(st.lists(frames, max_size=4), st.integers(1, 9), st.binary(max_size=64),
           st.integers(0, 255))
    def test_fuzz_control_payloads(self, prefix, frame_type, payload, flags):
        """Well-formed frame headers around random payloads reach deeper code
        (header blocks, fixed layouts) than random bytes do."""
        wire = b"".join(map(FrameEncoder().encode, prefix))
        try:
            FrameParser().feed(wire + control(frame_type, payload, flags))
        except SpdyError:
            pass
