"""The cluster's certificate authorities: the user CA signs users'
certificates, the host CA the cluster services'. Stored in the backend as
``/authorities/{user,host}`` (certificate and private key, PEM)."""
from __future__ import annotations

import json
from datetime import timedelta

from cryptography.hazmat.primitives import hashes
from twisted.logger import Logger

from cryptography import x509

from teleport_py.auth.services.common import to_json, utc_now
from teleport_py.config import DEFAULT_HOST_CERT_TTL
from teleport_py.pki import AUTH_SERVER_NAME, PROXY_SERVER_NAMES, CertAuthority, HostIdentity, ca_pin, certificate_pem

#: Names under this suffix identify cluster services; only a proxy's
#: certificate may carry the proxy's (join_tokens filters them at join).
RESERVED_DNS_SUFFIX = "teleport.cluster.local"


class CertificateAuthorities:
    log = Logger()

    def __init__(self, clock, cluster_name: str, user_ca: CertAuthority, host_ca: CertAuthority,
                 host_cert_ttl: float = DEFAULT_HOST_CERT_TTL):
        self._clock = clock
        #: How long host certificates issued from now on are valid.
        self.host_cert_ttl = host_cert_ttl
        self.cluster_name = cluster_name
        self.user_ca = user_ca
        self.host_ca = host_ca

    @classmethod
    async def load_or_create(cls, clock, backend, cluster_name: str,
                             host_cert_ttl: float = DEFAULT_HOST_CERT_TTL) -> "CertificateAuthorities":
        """Load the cluster's CAs, creating them on first start.

        ``create`` makes the first writer win, so two auth processes racing on
        one fresh backend still end up with one CA per kind.
        """
        cas = {}
        for kind in ("user", "host"):
            key = f"/authorities/{kind}"
            item = await backend.get(key)
            if item is None:
                ca = CertAuthority.generate(kind, cluster_name, utc_now(clock))
                cert_pem, key_pem = ca.to_pem()
                doc = {"cluster_name": cluster_name, "cert": cert_pem.decode(), "key": key_pem.decode()}
                if await backend.create(key, to_json(doc)) is None:
                    item = await backend.get(key)
                else:
                    cls.log.info("created {kind} certificate authority for cluster {cluster}", kind=kind, cluster=cluster_name)
                    cas[kind] = ca
                    continue
            doc = json.loads(item.value)
            if doc["cluster_name"] != cluster_name:
                raise RuntimeError(
                    f"the data directory belongs to cluster {doc['cluster_name']!r}, not {cluster_name!r}"
                )
            cas[kind] = CertAuthority.from_pem(kind, cluster_name, doc["cert"].encode(), doc["key"].encode())
        return cls(clock, cluster_name, cas["user"], cas["host"], host_cert_ttl)

    def cas_pem(self) -> dict[str, list[str]]:
        """The CA certificates (public), as every issued identity carries them."""
        return {
            "user": [certificate_pem(self.user_ca.certificate).decode()],
            "host": [certificate_pem(self.host_ca.certificate).decode()],
        }

    def ca_pin(self) -> str:
        """Teleport's CA pin: sha256 of the host CA's SubjectPublicKeyInfo. A
        joining agent that knows it can trust the proxy on first contact."""
        return ca_pin(self.host_ca.certificate)

    def fingerprints(self) -> dict[str, str]:
        return {
            kind: ca.certificate.fingerprint(hashes.SHA256()).hex()
            for kind, ca in (("user", self.user_ca), ("host", self.host_ca))
        }

    def issue_host_identity(self, public_key, host_id: str, nodename: str, system_role: str, dns_names=(), ips=()):
        """A host certificate for a service of this cluster (used at join and for
        the auth/proxy services running in the same process)."""
        now = utc_now(self._clock)
        identity = HostIdentity(
            host_id=host_id, nodename=nodename, system_role=system_role, teleport_cluster=self.cluster_name
        )
        return self.host_ca.issue_host_certificate(
            public_key,
            identity,
            now,
            now + timedelta(seconds=self.host_cert_ttl),
            dns_names=tuple(dns_names),
            ip_addresses=tuple(ips),
        )

    def renew_host_identity(self, current: x509.Certificate, identity: HostIdentity, public_key):
        """A fresh certificate for a service that proved (over TLS, with
        ``current``, verified against the host CA) it is ``identity``: the same
        identity and names, a new key and validity period. Names under the
        cluster's reserved suffix are kept only as a proxy's or Auth's own names
        (Auth renews its own certificate in process; its route admits proxies and agents only)."""
        try:
            san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        own_name = f"{identity.host_id}.{identity.teleport_cluster}"
        allowed = {"proxy": PROXY_SERVER_NAMES, "auth": (AUTH_SERVER_NAME,)}.get(identity.system_role, ())
        dns_names = [n for n in san.get_values_for_type(x509.DNSName) if n != own_name
                     and (not n.lower().rstrip(".").endswith(RESERVED_DNS_SUFFIX) or n in allowed)]
        return self.issue_host_identity(
            public_key, identity.host_id, identity.nodename, identity.system_role, dns_names,
            san.get_values_for_type(x509.IPAddress))

