"""Reading a new object's metadata from Kubernetes' protobuf encoding."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.protobuf_meta import MAGIC, ObjectMeta, ProtobufError, read_object_meta
from tests.support.kube_protobuf import KUBECTL_BODIES, delimited, envelope, object_meta, tag, text, varint


def configmap(name: str, namespace: str) -> bytes:
    """A ConfigMap as this test's encoder writes it."""
    data_entry = text(1, "k") + text(2, "v")
    return envelope(delimited(1, object_meta(name=name, namespace=namespace)) + delimited(2, data_entry))


# -- strategies ---------------------------------------------------------------

names = st.text(max_size=30)
# Fields the reader must skip: any number but the ones it reads, every wire type it accepts.
skipped_value = st.one_of(
    st.tuples(st.just(0), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(2), st.binary(max_size=20)),
    st.tuples(st.just(5), st.binary(min_size=4, max_size=4)),
)


def encode_field(number: int, wire_type: int, value) -> bytes:
    if wire_type == 0:
        return tag(number, 0) + varint(value)
    if wire_type == 2:
        return delimited(number, value)
    return tag(number, wire_type) + value


def unknown_fields(reserved: set[int]):
    return st.lists(
        st.tuples(st.integers(1, 2**29 - 1).filter(lambda n: n not in reserved), skipped_value), max_size=3
    ).map(lambda fields: b"".join(encode_field(n, w, v) for n, (w, v) in fields))


@st.composite
def metadata_pieces(draw):
    """ObjectMeta sent as one or several ``metadata`` fields (proto2 merges
    them: the last value of each field wins), and the expected result."""
    expected = {}
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        piece = {k: draw(st.none() | names) for k in ("name", "generate_name", "namespace")}
        expected.update({k: v for k, v in piece.items() if v is not None})
        pieces.append(object_meta(**piece) + draw(unknown_fields({1, 2, 3})))
    return pieces, ObjectMeta(**expected)


class ReadObjectMetaTests(SynchronousTestCase):
    def test_kubectl_bodies(self):
        for kind, (expected, body) in KUBECTL_BODIES.items():
            self.assertEqual(read_object_meta(body), expected, kind)
        # The deployment's pod template carries an ObjectMeta of its own (empty name): not the object's.
        self.assertEqual(read_object_meta(KUBECTL_BODIES["deployment"][1]).name, "d1")

    def test_encoder_reads_back(self):
        self.assertEqual(read_object_meta(configmap("c1", "dev")), KUBECTL_BODIES["configmap"][0])

    def test_generate_name_and_no_name(self):
        body = envelope(delimited(1, object_meta(generate_name="web-")))
        self.assertEqual(read_object_meta(body), ObjectMeta(generate_name="web-"))
        self.assertEqual(read_object_meta(envelope(b"")), ObjectMeta())
        self.assertEqual(read_object_meta(MAGIC), ObjectMeta())

    def test_last_metadata_wins_field_by_field(self):
        raw = delimited(1, object_meta(name="allowed", namespace="dev")) + delimited(1, object_meta(name="other"))
        self.assertEqual(read_object_meta(envelope(raw)), ObjectMeta(name="other", namespace="dev"))

    def test_last_raw_wins(self):
        body = envelope(delimited(1, object_meta(name="first"))) + delimited(2, delimited(1, object_meta(name="x")))
        self.assertEqual(read_object_meta(body).name, "x")

    def test_huge_field_number_is_refused(self):
        """Go's decoder keeps 32 bits of a tag: field 2**32 + 1 would be its
        field 1 (metadata) while a reader keeping the whole number skips it."""
        sneaky = tag(2**32 + 1, 2) + varint(len(object_meta(name="evil"))) + object_meta(name="evil")
        raw = delimited(1, object_meta(name="allowed")) + sneaky
        with self.assertRaisesRegex(ProtobufError, "field number .* out of range"):
            read_object_meta(envelope(raw))

    def test_refusals_name_the_problem(self):
        cases = {
            b"{}": "must start with k8s",
            MAGIC + b"\x0a": "truncated varint",
            MAGIC + b"\x12\x05ab": "longer than its message",
            MAGIC + b"\x12" + b"\xff" * 11: "longer than 10 bytes",
            MAGIC + b"\x08" + b"\xff" * 9 + b"\x7f": "overflows 64 bits",
            MAGIC + b"\x00": "field number 0",
            MAGIC + b"\x0b": "wire type 3",
            MAGIC + b"\x0c": "wire type 4",
            MAGIC + b"\x0e": "wire type 6",
            MAGIC + b"\x11abc": "truncated",
            MAGIC + b"\x10\x01": "raw has wire type 0",
            MAGIC + text(3, "gzip"): "contentEncoding",
            MAGIC + text(4, "application/json"): "contentType",
            envelope(tag(1, 0) + b"\x01"): "metadata has wire type 0",
            envelope(delimited(1, tag(1, 5) + b"abcd")): "ObjectMeta.name has wire type 5",
            envelope(delimited(1, delimited(1, b"\xff"))): "ObjectMeta.name is not UTF-8",
            envelope(delimited(1, b"\x0a\x09short")): "ObjectMeta: field 1 is longer",
        }
        for body, problem in cases.items():
            with self.assertRaisesRegex(ProtobufError, problem, msg=repr(body)):
                read_object_meta(body)

    def test_size_bound(self):
        body = configmap("c", "d")
        self.assertEqual(read_object_meta(body, max_size=len(body)).name, "c")
        with self.assertRaisesRegex(ProtobufError, "larger than"):
            read_object_meta(body, max_size=len(body) - 1)

    def test_accepted_content_type(self):
        body = envelope(delimited(1, object_meta(name="c")), extra=text(4, "application/vnd.kubernetes.protobuf"))
        self.assertEqual(read_object_meta(body).name, "c")

    @settings(max_examples=300)
    @given(metadata_pieces(), unknown_fields({1}), unknown_fields({1, 2, 3, 4}), st.data())
    def test_round_trip(self, pieces_expected, object_extra, unknown_extra, data):
        """Metadata in pieces (their order matters: later values win), the
        object's other fields among them, unknown envelope fields after."""
        pieces, expected = pieces_expected
        position = data.draw(st.integers(0, len(pieces)))
        fields = [delimited(1, piece) for piece in pieces]
        raw = b"".join(fields[:position]) + object_extra + b"".join(fields[position:])
        self.assertEqual(read_object_meta(envelope(raw, extra=unknown_extra)), expected)

    @settings(max_examples=500)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data):
        for body in (data, MAGIC + data, envelope(data), envelope(delimited(1, data))):
            try:
                result = read_object_meta(body)
            except ProtobufError:
                continue
            self.assertIsInstance(result, ObjectMeta)

    @settings(max_examples=300)
    @given(st.binary(min_size=1, max_size=80), st.integers(0, 200), st.integers(0, 255))
    def test_damaged_kubectl_bodies(self, insert, position, byte):
        body = bytearray(KUBECTL_BODIES["deployment"][1])
        position %= len(body)
        damaged = [bytes(body[:position]), bytes(body[:position] + insert + body[position:])]
        body[position] = byte
        damaged.append(bytes(body))
        for candidate in damaged:
            try:
                read_object_meta(candidate)
            except ProtobufError:
                pass
