"""
The ExecCredential kubectl gets from ``tsh kube credentials``, and the copy
of it kept next to the kube certificate so that answering a good one takes
the standard library alone.

kubectl runs ``tsh kube credentials`` before every command and waits for it.
Checking the stored certificate itself (teleport_py.tsh.credentials) means
importing cryptography and attrs: about 0.13 s on every kubectl command.
So whenever tsh has checked a kube certificate (issued, or found good, under
the store's lock) it also writes ``kube/<kube>/credential.json``: exactly
what it would print, the names and login it was issued for, and the expiry
of the certificate and of the login. ``read_credential_cache`` answers from that
file, with the standard library only, when the file is exactly what tsh
would write now for this request: the same proxy, user, Teleport cluster
and kube cluster, the login's ``key.pem`` and ``cert.pem`` (a new login or
a logout: no answer), the certificate in ``kube/<kube>/cert.pem``, and both
expiries more than KUBE_CERT_MIN_REMAINING_SECONDS away. Anything else (missing, unreadable,
damaged, stale, about to expire, another cluster) returns None, and the
caller goes the long way, which checks the certificate itself and reissues.

The file holds the private key, like ``key.pem``: it is written by
``ProfileStore.save_credential_cache`` (0600, atomic) and deleted with the
key directory (``tsh login`` and ``tsh logout``).

This module and teleport_py.tsh.layout must stay light: the modules the
fast path imports are pinned by tests.test_tsh_credentials.
"""
from __future__ import annotations

import json
import os
import time

from teleport_py.tsh.layout import (
    CREDENTIAL_CACHE_FILE,
    KEY_FILE,
    CERTIFICATE_FILE,
    ProfileError,
    StoreLayout,
    default_home,
    is_path_component,
    normalize_proxy,
)

EXEC_API_VERSION = "client.authentication.k8s.io/v1beta1"
#: kubectl asks again once a credential is this close to expiry; reissue before that.
KUBE_CERT_MIN_REMAINING_SECONDS = 60
CACHE_FORMAT = 1


def exec_credential(certificate_pem: str, key_pem: str, expires: int) -> dict:
    """client.authentication.k8s.io ExecCredential for kubectl: the kube
    certificate, its key, and when (seconds since the epoch) to ask again."""
    return {
        "apiVersion": EXEC_API_VERSION,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
        "status": {
            "clientCertificateData": certificate_pem,
            "clientKeyData": key_pem,
            "expirationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
        },
    }


def credential_cache(
    *,
    proxy: str,
    user: str,
    teleport_cluster: str,
    kube_cluster: str,
    login_certificate_pem: str,
    login_expires: int,
    certificate_pem: str,
    key_pem: str,
    expires: int,
) -> bytes:
    """The bytes of ``credential.json`` for a checked certificate (one encoding,
    so that a reader can rebuild them and compare)."""
    return json.dumps({
        "format": CACHE_FORMAT,
        "proxy": proxy,
        "user": user,
        "teleport_cluster": teleport_cluster,
        "kube_cluster": kube_cluster,
        "login_certificate": login_certificate_pem,
        "login_expires": login_expires,
        "expires": expires,
        "exec_credential": exec_credential(certificate_pem, key_pem, expires),
    }, indent=2).encode()


def read_credential_cache(args, environ=os.environ, now: float | None = None) -> dict | None:
    """
    The ExecCredential for ``tsh kube credentials ARGS`` (``kube_cluster``,
    ``teleport_cluster``, ``proxy``) from ``credential.json``, or None
    whenever it is not plainly good for this request right now.
    """
    now = time.time() if now is None else now
    layout = StoreLayout(default_home(environ))
    try:
        proxy = layout.current_proxy() if args.proxy is None else normalize_proxy(args.proxy)
        if not is_path_component(proxy):
            return None
        profile = layout.profile_fields(proxy)
        user, teleport_cluster = profile.get("user"), profile.get("cluster")
        if not is_path_component(user) or (args.teleport_cluster and args.teleport_cluster != teleport_cluster):
            return None
        key_dir, kube_dir = layout.key_dir(proxy, user), layout.kube_dir(proxy, user, args.kube_cluster)
        cache = _read(os.path.join(kube_dir, CREDENTIAL_CACHE_FILE))
        fields = json.loads(cache)
        if not isinstance(fields, dict):
            return None
        login_expires, expires = fields["login_expires"], fields["expires"]
        if type(login_expires) is not int or type(expires) is not int:
            return None
        if login_expires <= now or expires - now <= KUBE_CERT_MIN_REMAINING_SECONDS:
            return None
        expected = credential_cache(
            proxy=proxy,
            user=user,
            teleport_cluster=teleport_cluster,
            kube_cluster=args.kube_cluster,
            login_certificate_pem=_read(os.path.join(key_dir, CERTIFICATE_FILE)).decode(),
            login_expires=login_expires,
            certificate_pem=_read(os.path.join(kube_dir, CERTIFICATE_FILE)).decode(),
            key_pem=_read(os.path.join(key_dir, KEY_FILE)).decode(),
            expires=expires,
        )
    except (OSError, ValueError, OverflowError, KeyError, ProfileError):
        return None
    if cache != expected:
        return None
    return fields["exec_credential"]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
