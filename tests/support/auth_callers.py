"""Who calls Auth in its unit tests: the admin and proxy host identities (as
their verified certificates would give them), and a fresh public key to
have a certificate issued for."""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from teleport_py.pki import HostIdentity, generate_private_key

ADMIN = HostIdentity(host_id="admin-test", nodename="test", system_role="admin", teleport_cluster="example")
PROXY = HostIdentity(host_id="proxy-1", nodename="test", system_role="proxy", teleport_cluster="example")


def public_pem() -> str:
    """A new key's public half, PEM (SubjectPublicKeyInfo), as tsh sends it."""
    return (
        generate_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
