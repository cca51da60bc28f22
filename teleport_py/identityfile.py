"""An identity on disk: certificate, private key and the cluster CAs to trust.

Used for tctl's admin identity on the auth host, an agent's host identity in
its data dir and tsh's user keys. One directory per identity::

    cert.pem      the certificate (user or host)
    key.pem       its private key, mode 0600
    user_ca.pem   CA certificates that sign user certificates
    host_ca.pem   CA certificates that sign host certificates

The private key is written first and the certificate last, so a reader that
finds ``cert.pem`` finds a complete identity.
"""
from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import attrs
from cryptography import x509

from teleport_py.pki import (
    make_private_dirs,
    certificate_pem,
    load_certificate_pem,
    load_certificates_pem,
    load_private_key_pem,
    private_key_pem,
    write_private_file,
)


@attrs.frozen
class IdentityFile:
    certificate: x509.Certificate
    private_key: Any
    user_cas: tuple[x509.Certificate, ...]
    host_cas: tuple[x509.Certificate, ...]

    @property
    def expires(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def save(self, directory: str) -> None:
        make_private_dirs(directory)
        write_private_file(os.path.join(directory, "key.pem"), private_key_pem(self.private_key))
        write_private_file(os.path.join(directory, "user_ca.pem"), b"".join(map(certificate_pem, self.user_cas)))
        write_private_file(os.path.join(directory, "host_ca.pem"), b"".join(map(certificate_pem, self.host_cas)))
        write_private_file(os.path.join(directory, "cert.pem"), certificate_pem(self.certificate))

    @classmethod
    def load(cls, directory: str) -> "IdentityFile":
        def read(name: str) -> bytes:
            with open(os.path.join(directory, name), "rb") as f:
                return f.read()

        return cls(
            certificate=load_certificate_pem(read("cert.pem")),
            private_key=load_private_key_pem(read("key.pem")),
            user_cas=tuple(load_certificates_pem(read("user_ca.pem"))),
            host_cas=tuple(load_certificates_pem(read("host_ca.pem"))),
        )

    @staticmethod
    def exists(directory: str) -> bool:
        return os.path.exists(os.path.join(directory, "cert.pem"))
