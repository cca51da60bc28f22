"""The name and namespace of an object in Kubernetes' protobuf encoding (sans-IO).

kubectl creates built-in kinds (``kubectl create configmap``, ``secret
generic``, ``namespace``, ``deployment``) with ``Content-Type:
application/vnd.kubernetes.protobuf``. Such a body is::

    b"k8s\\x00" + runtime.Unknown

and, per the field numbers in Kubernetes' ``.proto`` files:

- ``runtime.Unknown`` (k8s.io/apimachinery/pkg/runtime/generated.proto):
  ``1 typeMeta`` (message), ``2 raw`` (bytes: the object itself),
  ``3 contentEncoding`` (string), ``4 contentType`` (string);
- every top-level kind (ConfigMap, Secret, Namespace, Deployment, ...) has
  ``1 metadata``, an ``ObjectMeta`` (k8s.io/apimachinery/pkg/apis/meta/v1/
  generated.proto) with ``1 name``, ``2 generateName``, ``3 namespace``.

The API server decodes ``raw`` into the kind its URL names, with proto2
semantics, which this reader follows so that it reads the name the API server
will use: a string field seen twice keeps its last value, a message field seen
twice is merged (so ``metadata`` may come in pieces), unknown fields are
skipped. What it cannot read exactly that way raises ``ProtobufError`` and
nothing else, naming the problem: a truncated varint or length, a length past
the end of its message, a wrong wire type for a field it reads, groups (which
Kubernetes never sends), field numbers past protobuf's limit (Go's decoder
truncates a tag to 32 bits, so a huge field number could be field 1 there
and a field to skip here), a ``contentEncoding``, text that is not UTF-8, a
body larger than ``max_size``. The caller refuses the request: never a guess.

Nothing recurses: the reader walks three known messages (Unknown, the object,
its ObjectMeta) and skips everything else by its length, so its cost is
linear in the body and bounded by ``max_size``.
"""
from __future__ import annotations

import attrs

#: The Content-Type (without parameters) of a protobuf-encoded body.
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
#: What every Kubernetes protobuf body starts with.
MAGIC = b"k8s\x00"
#: The API server's own limit for a request body.
MAX_SIZE = 3 * 1024 * 1024

#: Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = range(6)
#: The largest field number protobuf allows (2**29 - 1).
MAX_FIELD_NUMBER = (1 << 29) - 1

# runtime.Unknown
_UNKNOWN_TYPE_META, _UNKNOWN_RAW, _UNKNOWN_CONTENT_ENCODING, _UNKNOWN_CONTENT_TYPE = 1, 2, 3, 4
# any top-level kind
_OBJECT_METADATA = 1
# meta/v1 ObjectMeta
_META_NAME, _META_GENERATE_NAME, _META_NAMESPACE = 1, 2, 3
_META_FIELDS = {_META_NAME: "name", _META_GENERATE_NAME: "generate_name", _META_NAMESPACE: "namespace"}


class ProtobufError(ValueError):
    """The body cannot be read as the API server would read it; ``str()``
    says what is wrong with it."""


@attrs.frozen
class ObjectMeta:
    """The fields of a new object's metadata that authorization needs."""

    name: str = ""
    generate_name: str = ""
    namespace: str = ""


def read_object_meta(body: bytes, max_size: int = MAX_SIZE) -> ObjectMeta:
    """``metadata`` of the object in a protobuf-encoded request body."""
    if len(body) > max_size:
        raise ProtobufError(f"protobuf body larger than {max_size} bytes")
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (it must start with k8s\\0)")
    raw = b""
    view = memoryview(body)
    for number, wire_type, value in _fields(view[len(MAGIC):], "runtime.Unknown"):
        if number == _UNKNOWN_RAW:
            _expect(wire_type, LENGTH_DELIMITED, "runtime.Unknown.raw")
            raw = value
        elif number == _UNKNOWN_CONTENT_ENCODING:
            _expect(wire_type, LENGTH_DELIMITED, "runtime.Unknown.contentEncoding")
            if len(value):
                # The API server ignores it today; an encoded object is not
                # what this reader reads, so refuse rather than guess.
                raise ProtobufError("runtime.Unknown.contentEncoding is set: encoded objects are not supported")
        elif number == _UNKNOWN_CONTENT_TYPE:
            _expect(wire_type, LENGTH_DELIMITED, "runtime.Unknown.contentType")
            content_type = _text(value, "runtime.Unknown.contentType")
            if content_type not in ("", CONTENT_TYPE):
                raise ProtobufError(f"runtime.Unknown.contentType {content_type!r} is not {CONTENT_TYPE}")
        elif number == _UNKNOWN_TYPE_META:
            _expect(wire_type, LENGTH_DELIMITED, "runtime.Unknown.typeMeta")
            for _ in _fields(value, "runtime.TypeMeta"):
                pass
    meta: dict[str, str] = {}
    for number, wire_type, value in _fields(raw, "object"):
        if number == _OBJECT_METADATA:
            _expect(wire_type, LENGTH_DELIMITED, "object.metadata")
            for meta_number, meta_wire_type, meta_value in _fields(value, "ObjectMeta"):
                field = _META_FIELDS.get(meta_number)
                if field is not None:
                    _expect(meta_wire_type, LENGTH_DELIMITED, f"ObjectMeta.{field}")
                    meta[field] = _text(meta_value, f"ObjectMeta.{field}")
    return ObjectMeta(**meta)


def _fields(data: memoryview, message: str):
    """``(field number, wire type, value)`` of each field of one message, in
    order; ``value`` is the bytes of a length-delimited field, else ``None``."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos, message)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or number > MAX_FIELD_NUMBER:
            raise ProtobufError(f"{message}: field number {number} out of range")
        if wire_type == VARINT:
            _, pos = _varint(data, pos, message)
            value = None
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _varint(data, pos, message)
            if length > end - pos:
                raise ProtobufError(f"{message}: field {number} is longer than its message")
            value, pos = data[pos:pos + length], pos + length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if size > end - pos:
                raise ProtobufError(f"{message}: field {number} is truncated")
            value, pos = None, pos + size
        else:
            raise ProtobufError(f"{message}: field {number} has wire type {wire_type}, which Kubernetes never sends")
        yield number, wire_type, value


def _varint(data: memoryview, pos: int, message: str) -> tuple[int, int]:
    """A base-128 varint of at most 10 bytes that fits in 64 bits."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError(f"{message}: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"{message}: varint longer than 10 bytes")
    if value >= 1 << 64:
        raise ProtobufError(f"{message}: varint overflows 64 bits")
    return value, pos


def _expect(wire_type: int, expected: int, field: str) -> None:
    if wire_type != expected:
        raise ProtobufError(f"{field} has wire type {wire_type}, expected {expected}")


def _text(value: memoryview, field: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError(f"{field} is not UTF-8") from None
