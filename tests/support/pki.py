"""A test cluster's PKI: its CAs and certificates, made on first use and once.

Every test module that needs a user CA, a host CA or a certificate signed by
them takes it from here, so a run generates each once, and none when no test
that needs it is imported. The CAs and the certificates that have no
arguments are module attributes built when first read (``from
tests.support.pki import USER_CA`` builds the user CA then)::

    USER_CA, OTHER_USER_CA   user CAs of cluster ``example`` (another CA, same name)
    HOST_CA                  the host CA of cluster ``example``
    KUBE_CA                  the Kubernetes cluster's CA (API server, agent client certs)
    AGENT_CERT, AGENT_KEY    the agent's client certificate for the API server (KUBE_CA)
    API_CERT, API_KEY        the API server's certificate for 127.0.0.1 (KUBE_CA)
    PROXY_CERT, PROXY_KEY    the proxy's host certificate (HOST_CA)
"""
from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from teleport_py.pki import (
    PROXY_SERVER_NAMES,
    CertAuthority,
    HostIdentity,
    UserIdentity,
    certificate_pem,
    generate_private_key,
)

NOW = datetime.now(timezone.utc).replace(microsecond=0)
CLUSTER = "example"
#: The CAs were made this long before the run, so a certificate may be issued in the past.
CA_AGE = timedelta(days=10)


@functools.cache
def authority(kind: str, cluster: str = CLUSTER, not_before: datetime = NOW - CA_AGE, copy: int = 0) -> CertAuthority:
    """The run's ``kind`` CA of ``cluster``, made on first use; ``copy`` > 0
    names another CA with the same details (a CA the cluster does not trust)."""
    return CertAuthority.generate(kind, cluster, not_before)


def host_cert(name: str, ca: CertAuthority | None = None):
    """A Kubernetes-side certificate (the API server's, the agent's client
    certificate), for 127.0.0.1, valid for an hour; signed by KUBE_CA."""
    ca = ca or authority("host", "kubernetes")
    key = generate_private_key()
    identity = HostIdentity(host_id=name, nodename=name, system_role="kube", teleport_cluster=ca.cluster_name)
    return ca.issue_host_certificate(key.public_key(), identity, NOW, NOW + timedelta(hours=1),
                                     ip_addresses=["127.0.0.1"]), key


def host_pair(host_id: str, role: str, ca: CertAuthority | None = None):
    """A cluster host certificate (HOST_CA) for 127.0.0.1, localhost and the proxy's names, valid for a day."""
    ca = ca or authority("host")
    key = generate_private_key()
    cert = ca.issue_host_certificate(
        key.public_key(),
        HostIdentity(host_id, "node", role, CLUSTER),
        NOW,
        NOW + timedelta(days=1),
        dns_names=("localhost", *PROXY_SERVER_NAMES),
        ip_addresses=("127.0.0.1",),
    )
    return cert, key


def public_web_pair(dns_names=("localhost",), ip_addresses=("127.0.0.1",), root: CertAuthority | None = None):
    """A proxy's publicly trusted web certificate (``https_keypairs``) and key,
    valid for a day, signed by ``root`` (default: the run's
    ``test-public-root``, which tests put in the platform trust store through
    SSL_CERT_FILE)."""
    root = root or authority("host", "test-public-root")
    key = generate_private_key()
    web = HostIdentity("web", "proxy", "proxy", root.cluster_name)
    cert = root.issue_host_certificate(key.public_key(), web, NOW, NOW + timedelta(days=1),
                                       dns_names=dns_names, ip_addresses=ip_addresses)
    return cert, key


def user_pair(kube_cluster="k8s", ca: CertAuthority | None = None, issued=NOW, lifetime=timedelta(hours=1)):
    """alice (role ``access``) for ``kube_cluster``: certificate and key."""
    ca = ca or authority("user")
    key = generate_private_key()
    identity = UserIdentity(
        "alice", ("access",), kube_cluster=kube_cluster, teleport_cluster=CLUSTER, expires=issued + lifetime
    )
    return ca.issue_user_certificate(key.public_key(), identity, issued), key


def user_cert_pem(username="alice", roles=("dev",), kube_cluster="c1", expires=None, ca: CertAuthority | None = None):
    """A user certificate (PEM) as tsh would present it to the kube path."""
    ca = ca or authority("user")
    identity = UserIdentity(username=username, roles=roles, kube_cluster=kube_cluster, teleport_cluster=CLUSTER,
                            expires=expires or NOW + timedelta(hours=1))
    issued = min(NOW, identity.expires - timedelta(hours=1))
    return certificate_pem(ca.issue_user_certificate(generate_private_key().public_key(), identity, issued)).decode()


@functools.cache
def _pair(which: str):
    if which == "proxy":
        return host_pair("proxy-1", "proxy")
    return host_cert(which)


_LAZY: dict[str, Callable[[], Any]] = {
    "USER_CA": lambda: authority("user"),
    "OTHER_USER_CA": lambda: authority("user", copy=1),
    "HOST_CA": lambda: authority("host"),
    "KUBE_CA": lambda: authority("host", "kubernetes"),
    "AGENT_CERT": lambda: _pair("agent")[0],
    "AGENT_KEY": lambda: _pair("agent")[1],
    "API_CERT": lambda: _pair("apiserver")[0],
    "API_KEY": lambda: _pair("apiserver")[1],
    "PROXY_CERT": lambda: _pair("proxy")[0],
    "PROXY_KEY": lambda: _pair("proxy")[1],
}


def __getattr__(name: str):
    try:
        make = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = globals()[name] = make()
    return value
