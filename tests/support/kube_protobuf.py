"""Kubernetes protobuf bodies for tests: a tiny encoder written from the
wire format's definition, and what real kubectl builds send."""
from teleport_py.kube.protobuf_meta import MAGIC, ObjectMeta


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
