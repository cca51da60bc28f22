"""Reading a new object's metadata from Kubernetes' protobuf encoding."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.protobuf_meta import MAGIC, ObjectMeta, ProtobufError, read_object_meta

# -- a tiny protobuf encoder, written from the wire format's definition -------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def delimited(number: int, data: bytes) -> bytes:
    return tag(number, 2) + varint(len(data)) + data


def text(number: int, value: str) -> bytes:
    return delimited(number, value.encode("utf-8"))


def envelope(raw: bytes, *, kind: str = "ConfigMap", api_version: str = "v1", extra: bytes = b"") -> bytes:
    """``k8s\\0`` + runtime.Unknown{typeMeta, raw} as client-go writes it."""
    type_meta = text(1, api_version) + text(2, kind)
    return MAGIC + delimited(1, type_meta) + delimited(2, raw) + extra


def object_meta(name: str | None = None, generate_name: str | None = None, namespace: str | None = None) -> bytes:
    out = b""
    for number, value in ((1, name), (2, generate_name), (3, namespace)):
        if value is not None:
            out += text(number, value)
    return out


#: What kubectl 1.32.4 and 1.37.1 send (byte for byte the same) for ``kubectl
#: create configmap c1 -n dev --from-literal=k=v``, ``create secret generic s1
#: -n dev --from-literal=k=v``, ``create namespace n1`` and ``create deployment
#: d1 -n dev --image=x``: captured with a TLS server standing in for the API server.
KUBECTL_BODIES = {
    "configmap": (ObjectMeta(name="c1", namespace="dev"),
                  b'k8s\x00\n\x0f\n\x02v1\x12\tConfigMap\x12\x1f\n\x15\n\x02c1\x12\x00\x1a\x03dev"\x00*\x002\x008\x00B\x00'
                  b'\x12\x06\n\x01k\x12\x01v\x1a\x00"\x00'),
    "secret": (ObjectMeta(name="s1", namespace="dev"),
               b'k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x12!\n\x15\n\x02s1\x12\x00\x1a\x03dev"\x00*\x002\x008\x00B\x00'
               b'\x12\x06\n\x01k\x12\x01v\x1a\x00\x1a\x00"\x00'),
    "namespace": (ObjectMeta(name="n1"),
                  b'k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1a\n\x12\n\x02n1\x12\x00\x1a\x00"\x00*\x002\x008\x00B\x00'
                  b'\x12\x00\x1a\x02\n\x00\x1a\x00"\x00'),
    "deployment": (ObjectMeta(name="d1", namespace="dev"),
                   b'k8s\x00\n\x15\n\x07apps/v1\x12\nDeployment\x12\xa2\x01\n \n\x02d1\x12\x00\x1a\x03dev"\x00*\x002\x008'
                   b'\x00B\x00Z\t\n\x03app\x12\x02d1\x12p\x08\x01\x12\x0b\n\t\n\x03app\x12\x02d1\x1aW\n\x1b\n\x00\x12\x00\x1a'
                   b'\x00"\x00*\x002\x008\x00B\x00Z\t\n\x03app\x12\x02d1\x128\x12\x1a\n\x01x\x12\x01x*\x00B\x00j\x00r\x00'
                   b'\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01'
                   b'\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00"\x02\n\x00(\x008\x00\x1a\x0c\x08\x00\x10\x00\x18\x00 \x00'
                   b'(\x008\x00\x1a\x00"\x00'),
}


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
