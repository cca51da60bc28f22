"""The cluster's two certificate authorities: one signs users, one signs hosts.

Keeping them apart is what lets ``identity_from_certificate`` tell a user from
a host by the signature alone. Both are self-signed roots with
``path_length=0``: they sign leaves only, never another CA.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teleport_py.pki.identity import HostIdentity, UserIdentity, host_subject, user_subject
from teleport_py.pki.keys import (
    certificate_pem,
    generate_private_key,
    load_certificate_pem,
    load_private_key_pem,
    private_key_pem,
)

CA_KINDS = ("user", "host")
DEFAULT_CA_TTL = timedelta(days=3650)
# Tolerated clock difference between the issuer and whoever checks the certificate.
CLOCK_SKEW = timedelta(minutes=1)

_KEY_USAGE_NONE = dict(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _ca_kind(instance, attribute, value: str) -> None:
    if value not in CA_KINDS:
        raise ValueError("kind must be one of %s, got %r" % (", ".join(CA_KINDS), value))


def _serial_number() -> int:
    """Random and 128 bits wide, so serials are unguessable and never collide."""
    return 1 + secrets.randbelow(2**128 - 1)


@frozen
class CertAuthority:
    kind: str = field(validator=_ca_kind)
    cluster_name: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, eq=False)

    @classmethod
    def generate(cls, kind: str, cluster_name: str, now: datetime, ttl: timedelta = DEFAULT_CA_TTL) -> CertAuthority:
        key = generate_private_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "%s CA" % kind),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(**{**_KEY_USAGE_NONE, "key_cert_sign": True, "crl_sign": True}),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(kind, cluster_name, certificate, key)

    def issue_user_certificate(self, public_key, identity: UserIdentity, now: datetime) -> x509.Certificate:
        """A client-only certificate valid until ``identity.expires``."""
        self._require_kind("user")
        if identity.teleport_cluster not in ("", self.cluster_name):
            raise ValueError("identity belongs to cluster %r, not %r" % (identity.teleport_cluster, self.cluster_name))
        return self._issue(
            public_key,
            user_subject(identity),
            now,
            identity.expires,
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            subject_alt_names=[],
        )

    def issue_host_certificate(
        self,
        public_key,
        identity: HostIdentity,
        now: datetime,
        not_after: datetime,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> x509.Certificate:
        """A certificate a service presents both as a TLS server and as a client.

        The SAN ``<host_id>.<cluster>`` lets a peer dial a host by its ID and
        still verify the hostname.
        """
        self._require_kind("host")
        if identity.teleport_cluster != self.cluster_name:
            raise ValueError("identity belongs to cluster %r, not %r" % (identity.teleport_cluster, self.cluster_name))
        names = dict.fromkeys([*dns_names, "%s.%s" % (identity.host_id, identity.teleport_cluster)])
        sans = [x509.DNSName(name) for name in names]
        sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in dict.fromkeys(ip_addresses)]
        return self._issue(
            public_key,
            host_subject(identity),
            now,
            not_after,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            subject_alt_names=sans,
        )

    def to_pem(self) -> tuple[bytes, bytes]:
        return certificate_pem(self.certificate), private_key_pem(self.private_key)

    @classmethod
    def from_pem(cls, kind: str, cluster_name: str, cert_pem: bytes, key_pem: bytes) -> CertAuthority:
        """Load a stored CA, refusing a key that does not belong to the certificate."""
        certificate = load_certificate_pem(cert_pem)
        private_key = load_private_key_pem(key_pem)
        if certificate.public_key() != private_key.public_key():
            raise ValueError("CA private key does not match its certificate")
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise ValueError("certificate is not a CA")
        return cls(kind, cluster_name, certificate, private_key)

    def _require_kind(self, kind: str) -> None:
        if self.kind != kind:
            raise ValueError("the %s CA does not issue %s certificates" % (self.kind, kind))

    def _issue(self, public_key, subject, now, not_after, usages, subject_alt_names) -> x509.Certificate:
        if not_after <= now:
            raise ValueError("certificate would expire before it is issued")
        if not_after > self.certificate.not_valid_after_utc:
            raise ValueError("certificate would outlive its CA")
        ca_key_id = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**{**_KEY_USAGE_NONE, "digital_signature": True}), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
                critical=False,
            )
        )
        if subject_alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(subject_alt_names), critical=False)
        return builder.sign(self.private_key, hashes.SHA256())


def ca_pin(certificate: x509.Certificate) -> str:
    """Teleport's CA pin: sha256 of the CA's SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return "sha256:" + digest.finalize().hex()
