"""Private keys, PEM encoding and key files.

We use ECDSA on P-256 everywhere: generating a key takes well under a
millisecond (RSA-2048 takes tens to hundreds of milliseconds, and every
``tsh login`` and agent join generates one), signatures and handshakes are
cheap, and every TLS stack and kubectl in use supports it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (see the module docstring for why P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: files holding it are protected by mode 0600."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key; only EC keys are accepted, so a stray RSA file fails loudly."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key, got %s" % type(key).__name__)
    return key


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def load_certificates_pem(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (a CA list, or a leaf plus its chain)."""
    return x509.load_pem_x509_certificates(data)


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only.

    The temporary file is created with mode 0600 (``mkstemp`` uses ``O_EXCL``
    and 0600), so a key never sits on disk world-readable, not even for an
    instant; fsync before the rename and on the directory after it means a
    crash leaves either the old file or the new one, never a truncated key.
    Missing parent directories are created with mode 0700.
    """
    target = Path(path)
    make_private_dirs(target.parent)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".%s." % target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, target)
    except BaseException:
        os.unlink(temp_name)
        raise
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """``mkdir -p`` with every created level 0700 (``os.makedirs`` only applies mode to the leaf)."""
    directory = Path(directory)
    if directory.is_dir():
        return
    make_private_dirs(directory.parent)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        if not directory.is_dir():
            raise
