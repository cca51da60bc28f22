"""The cluster's certificate authorities: the user CA signs users'
certificates, the host CA the cluster services'. Stored in the backend as
``/authorities/{user,host}`` (certificate and private key, PEM)."""
from __future__ import annotations

import json
from datetime import timedelta

from cryptography.hazmat.primitives import hashes
from twisted.logger import Logger

from teleport_py.auth.services.common import to_json, utc_now
from teleport_py.pki import CertAuthority, HostIdentity, ca_pin, certificate_pem

HOST_CERT_TTL = 365 * 24 * 3600.0


class CertificateAuthorities:
    log = Logger()

    def __init__(self, clock, cluster_name: str, user_ca: CertAuthority, host_ca: CertAuthority):
        self._clock = clock
        self.cluster_name = cluster_name
        self.user_ca = user_ca
        self.host_ca = host_ca

    @classmethod
    async def load_or_create(cls, clock, backend, cluster_name: str) -> "CertificateAuthorities":
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
        return cls(clock, cluster_name, cas["user"], cas["host"])

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
            now + timedelta(seconds=HOST_CERT_TTL),
            dns_names=tuple(dns_names),
            ip_addresses=tuple(ips),
        )

