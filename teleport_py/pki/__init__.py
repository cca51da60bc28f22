"""Certificate authorities, identity in X.509, TLS connection creators and key files."""

from teleport_py.pki.ca import CertAuthority, ca_pin
from teleport_py.pki.identity import (
    AUTH_SERVER_NAME,
    PROXY_SERVER_NAMES,
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

# TLS brings in Twisted; tsh answering kubectl from a stored certificate
# needs only the X.509 half, so the TLS names load on first use.
_TLS_NAMES = ("client_tls_options", "peer_certificate", "server_tls_options", "RenewableServerCreator")


def __getattr__(name: str):
    if name in _TLS_NAMES:
        from teleport_py.pki import tls

        return getattr(tls, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUTH_SERVER_NAME",
    "PROXY_SERVER_NAMES",
    "SYSTEM_ROLES",
    "CertAuthority",
    "ca_pin",
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
    "RenewableServerCreator",
    "private_key_pem",
    "server_tls_options",
    "user_subject",
    "write_private_file",
]
