"""Certificate authorities, identity in X.509, TLS connection creators and key files."""

from teleport_py.pki.ca import CertAuthority
from teleport_py.pki.identity import (
    SYSTEM_ROLES,
    HostIdentity,
    IdentityError,
    UserIdentity,
    host_subject,
    identity_from_certificate,
    user_subject,
)
from teleport_py.pki.keys import (
    certificate_pem,
    generate_private_key,
    load_certificate_pem,
    load_certificates_pem,
    load_private_key_pem,
    make_private_dirs,
    private_key_pem,
    write_private_file,
)
from teleport_py.pki.tls import client_tls_options, peer_certificate, server_tls_options

__all__ = [
    "SYSTEM_ROLES",
    "CertAuthority",
    "HostIdentity",
    "IdentityError",
    "UserIdentity",
    "certificate_pem",
    "client_tls_options",
    "generate_private_key",
    "host_subject",
    "identity_from_certificate",
    "load_certificate_pem",
    "load_certificates_pem",
    "load_private_key_pem",
    "make_private_dirs",
    "peer_certificate",
    "private_key_pem",
    "server_tls_options",
    "user_subject",
    "write_private_file",
]
