"""
The ExecCredential kubectl asks for, and whether a stored kube certificate
can answer it.

kubectl runs ``tsh kube credentials`` before every command. When the stored
certificate for the cluster is still good, answering needs no network, no
lock and no Twisted, so this module imports only what reading and checking
a certificate takes; anything else (no certificate yet, one about to expire,
an expired login) goes the long way through teleport_py.tsh.commands, which
reissues or explains.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from teleport_py.pki import IdentityError, UserIdentity, certificate_pem, identity_from_certificate, private_key_pem
from teleport_py.tsh.kubeconfig import EXEC_API_VERSION
from teleport_py.tsh.profile import ProfileError, ProfileStore, default_home, normalize_proxy

# kubectl asks again once a credential is this close to expiry; reissue before that.
KUBE_CERT_MIN_REMAINING = timedelta(minutes=1)


def signed_user_identity(certificate, user_cas) -> UserIdentity | None:
    """The user identity in ``certificate`` if one of the cluster's user CAs signed it."""
    for ca in user_cas:
        try:
            identity = identity_from_certificate(certificate, user_ca=ca, host_ca=None)
        except IdentityError:
            continue
        if isinstance(identity, UserIdentity):
            return identity
    return None


def usable_kube_certificate(certificate, identity_file, kube_cluster: str, now: datetime) -> bool:
    """Ours (our key), signed by the cluster's user CA, routed to ``kube_cluster``,
    and with more than KUBE_CERT_MIN_REMAINING left."""
    if certificate.public_key() != identity_file.private_key.public_key():
        return False
    if certificate.not_valid_after_utc - now <= KUBE_CERT_MIN_REMAINING:
        return False
    issued = signed_user_identity(certificate, identity_file.user_cas)
    return issued is not None and issued.kube_cluster == kube_cluster


def exec_credential(certificate, private_key) -> dict:
    """client.authentication.k8s.io ExecCredential for kubectl: the kube
    certificate, its key, and when to ask again."""
    return {
        "apiVersion": EXEC_API_VERSION,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
        "status": {
            "clientCertificateData": certificate_pem(certificate).decode(),
            "clientKeyData": private_key_pem(private_key).decode(),
            "expirationTimestamp": certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def cached_exec_credential(args, environ=os.environ, now: datetime | None = None) -> dict | None:
    """
    The credential for ``tsh kube credentials ARGS`` from the stored
    certificate alone, or None whenever anything is not plainly fine (no
    profile, expired login, another Teleport cluster, no or expiring
    certificate): the full command then reissues or says what is wrong.
    """
    now = now or datetime.now(timezone.utc)
    store = ProfileStore(default_home(environ))
    try:
        profile = store.profile(None if args.proxy is None else normalize_proxy(args.proxy))
        if args.teleport_cluster and args.teleport_cluster != profile.cluster:
            return None
        identity_file = store.identity(profile)
        if identity_file.expires <= now:
            return None
        certificate = store.kube_certificate(profile, args.kube_cluster)
    except ProfileError:
        return None
    if certificate is None or not usable_kube_certificate(certificate, identity_file, args.kube_cluster, now):
        return None
    return exec_credential(certificate, identity_file.private_key)
