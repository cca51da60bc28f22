"""Who is calling, encoded in (and read back from) an X.509 certificate subject.

Services learn a caller's identity only from a certificate that TLS verified
against the right CA, through ``identity_from_certificate``. Whether that is
a user or a host is decided by which CA signed the certificate, never by
anything written in the subject, so a host can't pass itself off as a user
(or the reverse) by choosing its own subject fields.

Every value is its own single-valued RDN, so order survives the round trip
(multi-valued RDNs are DER SETs and get sorted). See docs/pki.md for the OIDs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from attrs import field, frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID, ObjectIdentifier

from teleport_py.resource_ids import ResourceID, resource_ids

SYSTEM_ROLES = ("auth", "proxy", "kube", "admin")

#: The name every client verifies the auth server's certificate against.
AUTH_SERVER_NAME = "auth.teleport.cluster.local"
#: Exact names a proxy certificate carries: kubectl verifies the kube endpoint
#: as kube-teleport-proxy-alpn (the kubeconfig's tls-server-name), agents the
#: tunnel endpoint as reversetunnel. Never a wildcard: *.teleport.cluster.local
#: would also match auth.teleport.cluster.local and let a proxy pose as Auth.
PROXY_SERVER_NAMES = (
    "kube-teleport-proxy-alpn.teleport.cluster.local",
    "reversetunnel.teleport.cluster.local",
)

# Same meaning and numbers as Teleport's lib/tlsca where one exists.
KUBE_USERS_OID = ObjectIdentifier("1.3.9999.1.1")
KUBE_GROUPS_OID = ObjectIdentifier("1.3.9999.1.2")
KUBE_CLUSTER_OID = ObjectIdentifier("1.3.9999.1.3")
TELEPORT_CLUSTER_OID = ObjectIdentifier("1.3.9999.1.7")
# Ours: Teleport keeps traits as JSON in streetAddress and the node name in SANs.
TRAITS_OID = ObjectIdentifier("1.3.9999.100.1")
NODENAME_OID = ObjectIdentifier("1.3.9999.100.2")
# Ours: the approved access requests a certificate's extra roles come from
# (one attribute per request id; Teleport keeps them in its own encoding).
ACCESS_REQUESTS_OID = ObjectIdentifier("1.3.9999.100.3")
# Ours: the resources an approved resource access request allows, one
# attribute per Teleport resource id (Teleport: AllowedResourceIDs). Present,
# they are all the certificate reaches, whatever its roles allow elsewhere.
ALLOWED_RESOURCES_OID = ObjectIdentifier("1.3.9999.100.4")

# X.509 (and cryptography) cap commonName at 64 bytes of UTF-8.
_MAX_COMMON_NAME = 64
# host_id and the cluster name end up in a DNS SAN "<host_id>.<cluster>".
_DNS_SAFE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class IdentityError(Exception):
    """A certificate does not carry an identity we issued: wrong CA or malformed subject."""


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError("expected a sequence of strings, not a single string")
    return tuple(value)


def _each_non_empty_string(instance, attribute, value: tuple[str, ...]) -> None:
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError("%s must hold non-empty strings, got %r" % (attribute.name, item))


def _string(instance, attribute, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError("%s must be a string" % attribute.name)


def _non_empty(instance, attribute, value: str) -> None:
    _string(instance, attribute, value)
    if not value:
        raise ValueError("%s must not be empty" % attribute.name)


def _common_name(instance, attribute, value: str) -> None:
    _string(instance, attribute, value)
    if not 1 <= len(value.encode("utf-8")) <= _MAX_COMMON_NAME:
        raise ValueError("%s must be 1 to %d bytes of UTF-8" % (attribute.name, _MAX_COMMON_NAME))


def _dns_safe(instance, attribute, value: str) -> None:
    _string(instance, attribute, value)
    if not _DNS_SAFE.fullmatch(value):
        raise ValueError("%s must be letters, digits, '.' and '-': %r" % (attribute.name, value))


def _traits(value: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]]):
    """Canonical traits: pairs sorted by name, so equal trait sets compare equal.

    Accepts a mapping (``{"logins": ["root"]}``) or pairs; ``dict(identity.traits)``
    gives a mapping back.
    """
    pairs = value.items() if isinstance(value, Mapping) else value
    canonical = {}
    for name, values in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError("trait names must be non-empty strings, got %r" % (name,))
        if name in canonical:
            raise ValueError("duplicate trait %r" % (name,))
        values = _strings(values)
        if not all(isinstance(item, str) for item in values):
            raise ValueError("trait %r values must be strings" % (name,))
        canonical[name] = values
    return tuple(sorted(canonical.items()))


def _utc_seconds(value: datetime) -> datetime:
    """UTC, whole seconds: X.509 validity has second precision, so this is what survives a certificate."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("expires must be a timezone-aware datetime")
    return value.astimezone(timezone.utc).replace(microsecond=0)


@frozen
class UserIdentity:
    """A person's identity, signed by the user CA.

    ``traits`` is kept as name-sorted pairs (``(("logins", ("root",)),)``) and
    accepts a mapping. ``expires`` is keyword-only (attrs wants it after the
    defaulted fields) and kept in UTC at whole seconds, like ``NotAfter``.
    """

    username: str = field(validator=_common_name)
    roles: tuple[str, ...] = field(converter=_strings, validator=_each_non_empty_string)
    traits: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), converter=_traits)
    kube_cluster: str = field(default="", validator=_string)
    teleport_cluster: str = field(default="", validator=_string)
    kube_users: tuple[str, ...] = field(default=(), converter=_strings, validator=_each_non_empty_string)
    kube_groups: tuple[str, ...] = field(default=(), converter=_strings, validator=_each_non_empty_string)
    #: Ids of the approved access requests whose roles this certificate carries.
    access_requests: tuple[str, ...] = field(default=(), converter=_strings, validator=_each_non_empty_string)
    #: Resource ids (kube_cluster, namespace, pod) this certificate is
    #: restricted to; empty: no restriction beyond the roles.
    allowed_resources: tuple[ResourceID, ...] = field(default=(), converter=resource_ids)
    expires: datetime = field(kw_only=True, converter=_utc_seconds)


def _system_role(instance, attribute, value: str) -> None:
    if value not in SYSTEM_ROLES:
        raise ValueError("system_role must be one of %s, got %r" % (", ".join(SYSTEM_ROLES), value))


@frozen
class HostIdentity:
    """A Teleport service's identity, signed by the host CA."""

    host_id: str = field(validator=[_dns_safe, _common_name])
    nodename: str = field(validator=_non_empty)
    system_role: str = field(validator=_system_role)
    teleport_cluster: str = field(validator=_dns_safe)


def _name(pairs: Iterable[tuple[ObjectIdentifier, str]]) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)]) for oid, value in pairs])


def user_subject(identity: UserIdentity) -> x509.Name:
    pairs = [(NameOID.COMMON_NAME, identity.username)]
    pairs += [(NameOID.ORGANIZATION_NAME, role) for role in identity.roles]
    pairs += [(KUBE_USERS_OID, user) for user in identity.kube_users]
    pairs += [(KUBE_GROUPS_OID, group) for group in identity.kube_groups]
    if identity.kube_cluster:
        pairs.append((KUBE_CLUSTER_OID, identity.kube_cluster))
    if identity.teleport_cluster:
        pairs.append((TELEPORT_CLUSTER_OID, identity.teleport_cluster))
    pairs += [(ACCESS_REQUESTS_OID, request_id) for request_id in identity.access_requests]
    pairs += [(ALLOWED_RESOURCES_OID, str(resource)) for resource in identity.allowed_resources]
    if identity.traits:
        pairs.append((TRAITS_OID, json.dumps(identity.traits, ensure_ascii=False, separators=(",", ":"))))
    return _name(pairs)


def host_subject(identity: HostIdentity) -> x509.Name:
    return _name(
        [
            (NameOID.COMMON_NAME, identity.host_id),
            (NameOID.ORGANIZATION_NAME, identity.system_role),
            (NODENAME_OID, identity.nodename),
            (TELEPORT_CLUSTER_OID, identity.teleport_cluster),
        ]
    )


def identity_from_certificate(
    cert: x509.Certificate,
    *,
    user_ca: x509.Certificate | None,
    host_ca: x509.Certificate | None,
    now: datetime | None = None,
) -> UserIdentity | HostIdentity:
    """The identity in a leaf certificate signed directly by one of our CAs.

    TLS already checked chain, expiry and purpose for certificates taken from a
    handshake; pass ``now`` when the certificate arrived some other way (the
    PEM in tunnel stream metadata) to check its validity period here too.
    """
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or constraints.ca:
        raise IdentityError("not a leaf certificate")
    signers = [kind for kind, ca in (("user", user_ca), ("host", host_ca)) if ca is not None and _signed_by(cert, ca)]
    if len(signers) != 1:
        raise IdentityError("certificate is not signed by the user CA or the host CA")
    if now is not None and not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError("certificate is outside its validity period")
    try:
        attributes = _attributes(cert.subject)
        if signers == ["user"]:
            return _user_identity(attributes, cert.not_valid_after_utc)
        return _host_identity(attributes)
    except (ValueError, TypeError) as error:
        raise IdentityError("malformed identity: %s" % (error,)) from error


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as error:
        raise IdentityError("unparseable extensions: %s" % (error,)) from error


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _attributes(subject: x509.Name) -> dict[ObjectIdentifier, list[str]]:
    attributes: dict[ObjectIdentifier, list[str]] = {}
    for rdn in subject.rdns:
        if len(rdn) != 1:
            raise ValueError("multi-valued RDN")
        (attribute,) = rdn
        if not isinstance(attribute.value, str):
            raise ValueError("non-text attribute %s" % attribute.oid.dotted_string)
        attributes.setdefault(attribute.oid, []).append(attribute.value)
    return attributes


def _take_one(attributes: dict[ObjectIdentifier, list[str]], oid: ObjectIdentifier, default: str | None = None) -> str:
    values = attributes.pop(oid, [])
    if len(values) > 1 or (not values and default is None):
        raise ValueError("expected exactly one %s" % oid.dotted_string)
    return values[0] if values else default


def _no_leftovers(attributes: dict[ObjectIdentifier, list[str]]) -> None:
    if attributes:
        raise ValueError("unexpected attributes %s" % ", ".join(sorted(oid.dotted_string for oid in attributes)))


def _user_identity(attributes: dict[ObjectIdentifier, list[str]], expires: datetime) -> UserIdentity:
    traits = json.loads(_take_one(attributes, TRAITS_OID, "[]"))
    if not isinstance(traits, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in traits):
        raise ValueError("traits must be a list of [name, values] pairs")
    identity = UserIdentity(
        username=_take_one(attributes, NameOID.COMMON_NAME),
        roles=attributes.pop(NameOID.ORGANIZATION_NAME, []),
        traits=traits,
        kube_cluster=_take_one(attributes, KUBE_CLUSTER_OID, ""),
        teleport_cluster=_take_one(attributes, TELEPORT_CLUSTER_OID, ""),
        kube_users=attributes.pop(KUBE_USERS_OID, []),
        kube_groups=attributes.pop(KUBE_GROUPS_OID, []),
        access_requests=attributes.pop(ACCESS_REQUESTS_OID, []),
        # A resource id we cannot read refuses the whole certificate (ValueError).
        allowed_resources=attributes.pop(ALLOWED_RESOURCES_OID, []),
        expires=expires,
    )
    _no_leftovers(attributes)
    return identity


def _host_identity(attributes: dict[ObjectIdentifier, list[str]]) -> HostIdentity:
    identity = HostIdentity(
        host_id=_take_one(attributes, NameOID.COMMON_NAME),
        nodename=_take_one(attributes, NODENAME_OID),
        system_role=_take_one(attributes, NameOID.ORGANIZATION_NAME),
        teleport_cluster=_take_one(attributes, TELEPORT_CLUSTER_OID),
    )
    _no_leftovers(attributes)
    return identity
