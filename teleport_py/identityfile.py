"""An identity on disk: certificate, private key and the cluster CAs to trust.

Used for tctl's admin identity on the auth host, an agent's host identity in
its data dir and tsh's user keys. One directory per identity::

    cert.pem      the certificate (user or host)
    key.pem       its private key, mode 0600
    user_ca.pem   CA certificates that sign user certificates
    host_ca.pem   CA certificates that sign host certificates

The private key is written first and the certificate last, so a reader that
finds ``cert.pem`` finds a complete identity. A renewal replaces key and
certificate of an existing identity; so that a crash between the two writes
cannot leave a key beside a certificate for another key, the new pair is
first written together to ``pending.pem`` (one atomic write) and that file
removed only once both are in place; ``load`` prefers it while it exists.
Every file is written atomically with mode 0600 (``write_private_file``).
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


#: A key and certificate pair being saved (see the module's docstring).
PENDING = "pending.pem"


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
        """Blocking file I/O: a service calls it off the reactor thread."""
        make_private_dirs(directory)
        key, cert = private_key_pem(self.private_key), certificate_pem(self.certificate)
        pending = os.path.join(directory, PENDING)
        write_private_file(pending, key + cert)
        write_private_file(os.path.join(directory, "key.pem"), key)
        write_private_file(os.path.join(directory, "user_ca.pem"), b"".join(map(certificate_pem, self.user_cas)))
        write_private_file(os.path.join(directory, "host_ca.pem"), b"".join(map(certificate_pem, self.host_cas)))
        write_private_file(os.path.join(directory, "cert.pem"), cert)
        os.unlink(pending)

    @classmethod
    def load(cls, directory: str) -> "IdentityFile":
        def read(name: str) -> bytes:
            with open(os.path.join(directory, name), "rb") as f:
                return f.read()

        try:
            pair = read(PENDING)  # a save that did not finish: this pair is whole, the files may not be
        except FileNotFoundError:
            key, cert = read("key.pem"), read("cert.pem")
        else:
            key = cert = pair
        return cls(
            certificate=load_certificate_pem(cert),
            private_key=load_private_key_pem(key),
            user_cas=tuple(load_certificates_pem(read("user_ca.pem"))),
            host_cas=tuple(load_certificates_pem(read("host_ca.pem"))),
        )

    @staticmethod
    def exists(directory: str) -> bool:
        return os.path.exists(os.path.join(directory, "cert.pem"))
