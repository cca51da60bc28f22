"""Auth's storage as ``teleport.storage`` configures it: the backend (SQLite
in the data dir, or etcd shared by several Auth servers) and the directory
recordings go to."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.threads import deferToThreadPool

from teleport_py.backend import SQLiteBackend
from teleport_py.backend.etcd import EtcdBackend
from teleport_py.backend.etcd_gateway import EtcdError, EtcdTLS, EtcdUnavailable
from teleport_py.config import StorageConfig
from teleport_py.lifecycle import StartError
from teleport_py.pki import load_certificate_pem, load_certificates_pem


def recordings_dir(storage: StorageConfig, data_dir: str) -> str:
    """Where recording bytes go: ``audit_sessions_uri``'s directory (every
    Auth server must mount the same one, e.g. over NFS), else the data dir."""
    return storage.audit_sessions_dir or os.path.join(data_dir, "session_recordings")


def _read(storage: StorageConfig, key: str) -> bytes:
    path = getattr(storage, key)
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise StartError(f"cannot read teleport.storage.{key} {path}: {e.strerror}") from None


def _etcd_tls(storage: StorageConfig) -> EtcdTLS:
    """Runs on a thread: file reads do not belong on the reactor."""
    try:
        cas = tuple(load_certificates_pem(_read(storage, "tls_ca_file")))
    except ValueError:
        cas = ()
    if not cas:
        raise StartError(f"teleport.storage.tls_ca_file {storage.tls_ca_file} holds no PEM certificate")
    try:
        certificate = load_certificate_pem(_read(storage, "tls_cert_file"))
    except ValueError:
        raise StartError(f"teleport.storage.tls_cert_file {storage.tls_cert_file} is not a PEM certificate") from None
    try:
        key = load_pem_private_key(_read(storage, "tls_key_file"), password=None)
    except (ValueError, TypeError):
        raise StartError(f"teleport.storage.tls_key_file {storage.tls_key_file} is not an unencrypted PEM private key") from None
    return EtcdTLS(cas, certificate, key)


async def open_backend(reactor, storage: StorageConfig, data_dir: str, *, close_on_shutdown: bool = True):
    """Fire with the configured IBackend; a failure a person fixes is a StartError.
    Without ``close_on_shutdown`` the caller closes it (SQLite otherwise closes
    itself as the reactor stops, whatever still runs)."""
    if storage.type == "sqlite":
        return await SQLiteBackend.open(reactor, os.path.join(data_dir, "backend.sqlite"),
                                        close_on_shutdown=close_on_shutdown)
    tls = await deferToThreadPool(reactor, reactor.getThreadPool(), _etcd_tls, storage)
    try:
        return await EtcdBackend.open(reactor, storage.peers, storage.prefix, tls=tls)
    except (EtcdUnavailable, EtcdError, OSError) as e:
        raise StartError(f"cannot use etcd at {', '.join(storage.peers)} (teleport.storage.peers): {e}") from None
    except Exception as e:
        # TLS failures surface as twisted.web's ResponseNeverReceived wrapping an SSL error.
        raise StartError(f"cannot use etcd at {', '.join(storage.peers)} (teleport.storage.peers, tls_*_file): "
                         f"{type(e).__name__}: {str(e)[:300]}") from None
