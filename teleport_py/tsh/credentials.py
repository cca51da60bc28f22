"""
The ExecCredential kubectl asks for from a stored kube certificate, and
whether that certificate can answer.

kubectl runs ``tsh kube credentials`` before every command. The quickest
answer is teleport_py.tsh.credentialcache (standard library only). When it
has none, this module checks the stored certificate itself, still with no
network, no waiting for the lock and no Twisted, and if the certificate is
good, writes the cache for next time. Anything else (no certificate yet, one
about to expire, an expired login) goes the long way through
teleport_py.tsh.commands, which reissues or explains.
"""
from __future__ import annotations

import contextlib
import os
from datetime import datetime, timedelta, timezone

from teleport_py.pki import IdentityError, UserIdentity, certificate_pem, identity_from_certificate, private_key_pem
from teleport_py.tsh import credentialcache
from teleport_py.tsh.credentialcache import KUBE_CERT_MIN_REMAINING_SECONDS
from teleport_py.tsh.layout import ProfileError, default_home, normalize_proxy
from teleport_py.tsh.profile import ProfileStore

# kubectl asks again once a credential is this close to expiry; reissue before that.
KUBE_CERT_MIN_REMAINING = timedelta(seconds=KUBE_CERT_MIN_REMAINING_SECONDS)


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
    with more than KUBE_CERT_MIN_REMAINING left, and carrying exactly the
    login's access requests and allowed resources: after ``tsh request
    drop`` (same key) a kube certificate a concurrent reissue made from the
    elevated login must not keep the dropped access."""
    if certificate.public_key() != identity_file.private_key.public_key():
        return False
    if certificate.not_valid_after_utc - now <= KUBE_CERT_MIN_REMAINING:
        return False
    issued = signed_user_identity(certificate, identity_file.user_cas)
    login = signed_user_identity(identity_file.certificate, identity_file.user_cas)
    return (issued is not None and login is not None and issued.kube_cluster == kube_cluster
            and (issued.access_requests, issued.allowed_resources) == (login.access_requests, login.allowed_resources))


def exec_credential(certificate, private_key) -> dict:
    """client.authentication.k8s.io ExecCredential for kubectl: the kube
    certificate, its key, and when to ask again."""
    return credentialcache.exec_credential(
        certificate_pem(certificate).decode(),
        private_key_pem(private_key).decode(),
        int(certificate.not_valid_after_utc.timestamp()),
    )


def cached_exec_credential(args, environ=os.environ, now: datetime | None = None) -> dict | None:
    """
    The credential for ``tsh kube credentials ARGS`` from the stored
    certificate alone, or None whenever anything is not plainly fine (no
    profile, expired login, another Teleport cluster, no or expiring
    certificate): the full command then reissues or says what is wrong.
    A good certificate's credential is also cached for
    teleport_py.tsh.credentialcache, if the lock is free this instant.
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
    with contextlib.suppress(OSError), store.lock_if_free(profile) as locked:
        if locked:  # else whoever holds it is about to write the cache, or delete the keys
            store.save_credential_cache(profile, identity_file, args.kube_cluster, certificate)
    return exec_credential(certificate, identity_file.private_key)
