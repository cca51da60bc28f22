"""Tests for the sans-IO tunnel frame codec."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.tunnel import frames
from teleport_py.tunnel.frames import FrameDecoder, TunnelProtocolError

MAX_DATA = 1024

stream_ids = st.integers(1, frames.MAX_STREAM_ID)
reasons = st.text(max_size=200)

every_frame = st.one_of(
    st.builds(
        frames.Hello,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(1, frames.MAX_WINDOW),
        st.integers(1, 2**32 - 1),
    ),
    st.builds(
        frames.Open,
        stream_ids,
        st.text(st.characters(codec="ascii"), min_size=1, max_size=255),
        st.binary(max_size=300),
    ),
    st.builds(frames.Accept, stream_ids),
    st.builds(frames.Reject, stream_ids, reasons),
    st.builds(frames.Data, stream_ids, st.binary(max_size=MAX_DATA), st.booleans()),
    st.builds(frames.WindowUpdate, stream_ids, st.integers(1, frames.MAX_WINDOW)),
    st.builds(frames.Reset, stream_ids, reasons),
    st.builds(frames.Ping, st.binary(min_size=8, max_size=8), st.booleans()),
    st.builds(frames.GoAway, reasons),
)


def split_points(data):
    return st.lists(st.integers(0, len(data)), max_size=20).map(sorted)


class RoundTripTests(SynchronousTestCase):
    @given(st.lists(every_frame, max_size=10), st.data())
    def test_any_chunking_decodes_the_same_frames(self, sent, draw):
        """Frames survive encoding, however TCP splits or merges the bytes."""
        wire = b"".join(frames.encode(frame) for frame in sent)
        cuts = draw.draw(split_points(wire))
        decoder = FrameDecoder(MAX_DATA)
        received = []
        for start, end in zip([0, *cuts], [*cuts, len(wire)]):
            received += decoder.feed(wire[start:end])
        self.assertEqual(received, sent)

    def test_header_layout(self):
        """docs/tunnel.md: type, flags, stream id, length, big-endian."""
        self.assertEqual(
            frames.encode(frames.Data(5, b"hi", fin=True)),
            b"\x04\x01\x00\x00\x00\x05\x00\x00\x00\x02hi",
        )
        self.assertEqual(
            frames.encode(frames.Open(2, "kube", b"{}")),
            b"\x01\x00\x00\x00\x00\x02\x00\x00\x00\x07\x04kube{}",
        )

    def test_long_reason_truncated(self):
        encoded = frames.encode(frames.GoAway("x" * 5000))
        [decoded] = FrameDecoder(MAX_DATA).feed(encoded)
        self.assertEqual(decoded, frames.GoAway("x" * frames.MAX_REASON_LENGTH))

    def test_encode_refuses_what_the_wire_cannot_carry(self):
        for frame in [
            frames.Open(1, "", b""),
            frames.Open(1, "k" * 256, b""),
            frames.Open(1, "k", b"x" * (frames.MAX_METADATA_LENGTH + 1)),
            frames.Ping(b"short"),
        ]:
            self.assertRaises(ValueError, frames.encode, frame)


class MalformedInputTests(SynchronousTestCase):
    @given(st.binary(max_size=2000), st.integers(1, 50))
    def test_random_bytes_raise_only_protocol_error(self, garbage, chunk):
        decoder = FrameDecoder(MAX_DATA)
        try:
            for i in range(0, len(garbage), chunk):
                decoder.feed(garbage[i : i + chunk])
        except TunnelProtocolError:
            pass

    def assertRejected(self, wire):
        self.assertRaises(TunnelProtocolError, FrameDecoder(MAX_DATA).feed, wire)

    def test_unknown_type(self):
        self.assertRejected(b"\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00")

    def test_unknown_flag(self):
        self.assertRejected(b"\x04\x02\x00\x00\x00\x01\x00\x00\x00\x00")

    def test_stream_frame_on_stream_zero(self):
        self.assertRejected(b"\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00")

    def test_connection_frame_on_a_stream(self):
        self.assertRejected(b"\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00")

    def test_oversized_data_rejected_before_buffering(self):
        """Only the header is needed to refuse a frame longer than advertised."""
        self.assertRejected(b"\x04\x00\x00\x00\x00\x01\x00\x00\x04\x01")

    def test_oversized_control_frame(self):
        self.assertRejected(b"\x07\x00\x00\x00\x00\x00\x00\x00\x00\x09" + b"x" * 9)

    def test_short_ping(self):
        self.assertRejected(b"\x07\x00\x00\x00\x00\x00\x00\x00\x00\x07" + b"x" * 7)

    def test_zero_window_update(self):
        self.assertRejected(b"\x05\x00\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\x00")

    def test_open_kind_longer_than_payload(self):
        self.assertRejected(b"\x01\x00\x00\x00\x00\x01\x00\x00\x00\x02\x05k")

    def test_non_ascii_kind(self):
        self.assertRejected(b"\x01\x00\x00\x00\x00\x01\x00\x00\x00\x02\x01\xff")

    def test_decoder_stays_failed(self):
        decoder = FrameDecoder(MAX_DATA)
        self.assertRaises(TunnelProtocolError, decoder.feed, b"\xff" * 10)
        self.assertRaises(TunnelProtocolError, decoder.feed, frames.encode(frames.Accept(1)))
