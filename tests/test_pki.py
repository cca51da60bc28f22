"""Keys, key files, certificate authorities and the identity encoding."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.pki import (
    SYSTEM_ROLES,
    CertAuthority,
    HostIdentity,
    IdentityError,
    UserIdentity,
    certificate_pem,
    generate_private_key,
    host_subject,
    identity_from_certificate,
    load_certificate_pem,
    load_certificates_pem,
    load_private_key_pem,
    private_key_pem,
    user_subject,
    write_private_file,
)
from teleport_py.pki import identity as identity_module
from tests.support.pki import authority

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
CLUSTER = "example.com"
LEAF_KEY = generate_private_key()


def user_ca() -> CertAuthority:
    """This module's user CA (its clock is NOW), made on first use."""
    return authority("user", CLUSTER, NOW)


def host_ca() -> CertAuthority:
    return authority("host", CLUSTER, NOW)


ALICE = UserIdentity(
    "alice",
    ("access", "editor"),
    {"logins": ["root"], "kubernetes_groups": ["devs", "ops"]},
    kube_cluster="prod",
    teleport_cluster=CLUSTER,
    kube_users=("alice@corp",),
    kube_groups=("system:masters",),
    expires=NOW + timedelta(hours=12),
)
AGENT = HostIdentity("0c7f2a4e-agent", "node-1", "kube", CLUSTER)


def identify(cert: x509.Certificate, **kwargs):
    return identity_from_certificate(cert, user_ca=user_ca().certificate, host_ca=host_ca().certificate, **kwargs)


def sign_subject(ca: CertAuthority, subject: x509.Name, ca_flag: bool = False) -> x509.Certificate:
    """A certificate our CA really signed, with a subject issue_* would never write."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(LEAF_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .sign(ca.private_key, hashes.SHA256())
    )


def name(*pairs) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)]) for oid, value in pairs])


class KeysTests(SynchronousTestCase):
    def test_generated_key_is_p256(self):
        self.assertIsInstance(generate_private_key().curve, ec.SECP256R1)

    def test_private_key_pem_round_trip(self):
        key = generate_private_key()
        loaded = load_private_key_pem(private_key_pem(key))
        self.assertEqual(loaded.private_numbers(), key.private_numbers())

    def test_non_ec_private_key_refused(self):
        other = ed25519.Ed25519PrivateKey.generate()
        pem = other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        self.assertRaises(ValueError, load_private_key_pem, pem)

    def test_certificate_bundle(self):
        bundle = certificate_pem(user_ca().certificate) + certificate_pem(host_ca().certificate)
        self.assertEqual(load_certificates_pem(bundle), [user_ca().certificate, host_ca().certificate])
        self.assertEqual(load_certificate_pem(certificate_pem(host_ca().certificate)), host_ca().certificate)


class WritePrivateFileTests(SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        os.mkdir(self.root)
        # A permissive umask must not loosen anything.
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)

    def mode(self, path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_creates_owner_only_file_and_dirs(self):
        path = os.path.join(self.root, "a", "b", "key.pem")
        write_private_file(path, b"secret")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"secret")
        self.assertEqual(self.mode(path), 0o600)
        self.assertEqual(self.mode(os.path.join(self.root, "a")), 0o700)
        self.assertEqual(self.mode(os.path.join(self.root, "a", "b")), 0o700)

    def test_file_is_private_before_it_gets_its_name(self):
        """The rename publishes a file that was 0600 and complete all along."""
        path = os.path.join(self.root, "key.pem")
        seen = []
        real_replace = os.replace

        def spy(source, target):
            with open(source, "rb") as f:
                seen.append((self.mode(source), f.read()))
            real_replace(source, target)

        self.patch(os, "replace", spy)
        write_private_file(path, b"secret")
        self.assertEqual(seen, [(0o600, b"secret")])

    def test_replaces_existing_file(self):
        path = os.path.join(self.root, "key.pem")
        with open(path, "wb") as f:
            f.write(b"old")
        os.chmod(path, 0o644)
        write_private_file(path, b"new")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(self.mode(path), 0o600)
        self.assertEqual(os.listdir(self.root), ["key.pem"])

    def test_failed_write_keeps_old_file_and_leaves_no_temp(self):
        path = os.path.join(self.root, "key.pem")
        write_private_file(path, b"old")

        def broken_fsync(fd):
            raise OSError("disk full")

        self.patch(os, "fsync", broken_fsync)
        self.assertRaises(OSError, write_private_file, path, b"new")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(self.root), ["key.pem"])


class CertAuthorityTests(SynchronousTestCase):
    def extension(self, cert, kind):
        return cert.extensions.get_extension_for_class(kind)

    def test_ca_certificate_profile(self):
        cert = user_ca().certificate
        constraints = self.extension(cert, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertEqual(constraints.value, x509.BasicConstraints(ca=True, path_length=0))
        usage = self.extension(cert, x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign and usage.crl_sign)
        self.assertFalse(usage.digital_signature)
        self.assertEqual(
            self.extension(cert, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(user_ca().private_key.public_key()),
        )
        cert.verify_directly_issued_by(cert)
        self.assertEqual(cert.not_valid_after_utc, NOW + timedelta(days=3650))

    def test_user_and_host_ca_subjects_differ(self):
        self.assertNotEqual(user_ca().certificate.subject, host_ca().certificate.subject)

    def test_user_certificate_profile(self):
        cert = user_ca().issue_user_certificate(LEAF_KEY.public_key(), ALICE, NOW)
        self.assertEqual(cert.not_valid_after_utc, ALICE.expires)
        self.assertEqual(cert.not_valid_before_utc, NOW - timedelta(minutes=1))
        self.assertEqual(list(self.extension(cert, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.CLIENT_AUTH])
        usage = self.extension(cert, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertFalse(usage.key_cert_sign)
        self.assertLeafProfile(cert, user_ca())

    def test_host_certificate_profile(self):
        cert = host_ca().issue_host_certificate(
            LEAF_KEY.public_key(),
            AGENT,
            NOW,
            NOW + timedelta(days=30),
            dns_names=("proxy.example.com", "localhost"),
            ip_addresses=("127.0.0.1", "::1"),
        )
        self.assertEqual(
            set(self.extension(cert, x509.ExtendedKeyUsage).value),
            {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH},
        )
        sans = self.extension(cert, x509.SubjectAlternativeName).value
        self.assertEqual(
            sans.get_values_for_type(x509.DNSName),
            ["proxy.example.com", "localhost", "0c7f2a4e-agent.example.com"],
        )
        self.assertEqual([str(ip) for ip in sans.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"])
        self.assertEqual(cert.not_valid_after_utc, NOW + timedelta(days=30))
        self.assertLeafProfile(cert, host_ca())

    def assertLeafProfile(self, cert, ca):
        cert.verify_directly_issued_by(ca.certificate)
        self.assertEqual(self.extension(cert, x509.BasicConstraints).value.ca, False)
        self.assertEqual(
            self.extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier,
            self.extension(ca.certificate, x509.SubjectKeyIdentifier).value.digest,
        )
        self.assertTrue(0 < cert.serial_number < 2**128)

    def test_serials_are_random(self):
        serials = {user_ca().issue_user_certificate(LEAF_KEY.public_key(), ALICE, NOW).serial_number for _ in range(20)}
        self.assertEqual(len(serials), 20)
        # 20 draws of 128 bits: all below 2**120 has odds 2**-160 unless the width is wrong.
        self.assertTrue(any(serial >= 2**120 for serial in serials))

    def test_each_ca_issues_only_its_kind(self):
        self.assertRaises(ValueError, host_ca().issue_user_certificate, LEAF_KEY.public_key(), ALICE, NOW)
        self.assertRaises(
            ValueError, user_ca().issue_host_certificate, LEAF_KEY.public_key(), AGENT, NOW, NOW + timedelta(days=1)
        )

    def test_refuses_identity_from_another_cluster(self):
        other = UserIdentity("bob", (), teleport_cluster="other.com", expires=NOW + timedelta(hours=1))
        self.assertRaises(ValueError, user_ca().issue_user_certificate, LEAF_KEY.public_key(), other, NOW)
        host = HostIdentity("h1", "n", "proxy", "other.com")
        self.assertRaises(
            ValueError, host_ca().issue_host_certificate, LEAF_KEY.public_key(), host, NOW, NOW + timedelta(days=1)
        )

    def test_refuses_bad_validity(self):
        expired = UserIdentity("bob", (), expires=NOW)
        self.assertRaises(ValueError, user_ca().issue_user_certificate, LEAF_KEY.public_key(), expired, NOW)
        too_long = UserIdentity("bob", (), expires=NOW + timedelta(days=3651))
        self.assertRaises(ValueError, user_ca().issue_user_certificate, LEAF_KEY.public_key(), too_long, NOW)

    def test_pem_round_trip(self):
        loaded = CertAuthority.from_pem("user", CLUSTER, *user_ca().to_pem())
        self.assertEqual(loaded, user_ca())
        self.assertEqual(loaded.private_key.private_numbers(), user_ca().private_key.private_numbers())

    def test_from_pem_refuses_mismatched_key(self):
        cert_pem, _ = user_ca().to_pem()
        _, other_key_pem = host_ca().to_pem()
        self.assertRaises(ValueError, CertAuthority.from_pem, "user", CLUSTER, cert_pem, other_key_pem)

    def test_from_pem_refuses_leaf(self):
        leaf = user_ca().issue_user_certificate(LEAF_KEY.public_key(), ALICE, NOW)
        self.assertRaises(
            ValueError, CertAuthority.from_pem, "user", CLUSTER, certificate_pem(leaf), private_key_pem(LEAF_KEY)
        )

    def test_private_key_not_in_repr(self):
        self.assertNotIn("private_key", repr(user_ca()))


labels = st.text(min_size=1, max_size=30)
dns_safe = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True)
user_identities = st.builds(
    UserIdentity,
    username=st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode("utf-8")) <= 64),
    roles=st.lists(labels, max_size=20).map(tuple),
    traits=st.dictionaries(st.text(min_size=1, max_size=20), st.lists(st.text(max_size=20), max_size=5), max_size=5),
    kube_cluster=st.text(max_size=30),
    teleport_cluster=st.sampled_from(["", CLUSTER]),
    kube_users=st.lists(labels, max_size=5).map(tuple),
    kube_groups=st.lists(labels, max_size=5).map(tuple),
    expires=st.datetimes(
        min_value=datetime(2026, 1, 2),
        max_value=datetime(2035, 1, 1),
        timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))),
    ),
)
host_identities = st.builds(
    HostIdentity,
    host_id=dns_safe,
    nodename=labels,
    system_role=st.sampled_from(SYSTEM_ROLES),
    teleport_cluster=st.just(CLUSTER),
)


class IdentityRoundTripTests(SynchronousTestCase):
    @given(user_identities)
    def test_user_round_trip(self, identity):
        cert = user_ca().issue_user_certificate(LEAF_KEY.public_key(), identity, NOW)
        self.assertEqual(identify(cert), identity)

    @given(host_identities)
    def test_host_round_trip(self, identity):
        cert = host_ca().issue_host_certificate(LEAF_KEY.public_key(), identity, NOW, NOW + timedelta(days=1))
        self.assertEqual(identify(cert), identity)

    def test_subject_layout(self):
        """CN and O carry username and roles like Teleport, so other tools can read them."""
        subject = user_subject(ALICE)
        self.assertEqual([a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)], ["alice"])
        self.assertEqual(
            [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)], ["access", "editor"]
        )
        self.assertEqual(
            [a.value for a in subject.get_attributes_for_oid(identity_module.KUBE_GROUPS_OID)], ["system:masters"]
        )
        host = host_subject(AGENT)
        self.assertEqual([a.value for a in host.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)], ["kube"])


class IdentityVerificationTests(SynchronousTestCase):
    def setUp(self):
        self.user_cert = user_ca().issue_user_certificate(LEAF_KEY.public_key(), ALICE, NOW)
        self.host_cert = host_ca().issue_host_certificate(LEAF_KEY.public_key(), AGENT, NOW, NOW + timedelta(days=1))

    def test_user_cert_is_not_a_host(self):
        self.assertRaises(
            IdentityError, identity_from_certificate, self.user_cert, user_ca=None, host_ca=host_ca().certificate
        )

    def test_host_cert_is_not_a_user(self):
        self.assertRaises(
            IdentityError, identity_from_certificate, self.host_cert, user_ca=user_ca().certificate, host_ca=None
        )

    def test_same_subject_other_ca_refused(self):
        impostor_ca = CertAuthority.generate("user", CLUSTER, NOW)
        self.assertEqual(impostor_ca.certificate.subject, user_ca().certificate.subject)
        forged = impostor_ca.issue_user_certificate(LEAF_KEY.public_key(), ALICE, NOW)
        self.assertRaises(IdentityError, identify, forged)

    def test_ca_certificate_is_not_an_identity(self):
        self.assertRaises(IdentityError, identify, user_ca().certificate)
        self.assertRaises(IdentityError, identify, sign_subject(user_ca(), name((NameOID.COMMON_NAME, "x")), True))

    def test_validity_checked_when_asked(self):
        self.assertEqual(identify(self.user_cert, now=NOW), ALICE)
        self.assertRaises(IdentityError, identify, self.user_cert, now=ALICE.expires + timedelta(seconds=1))
        self.assertRaises(IdentityError, identify, self.user_cert, now=NOW - timedelta(minutes=2))

    def test_malformed_subjects_refused(self):
        cn = (NameOID.COMMON_NAME, "alice")
        malformed_user = [
            name(),
            name(cn, cn),
            name(cn, (NameOID.LOCALITY_NAME, "x")),
            name(cn, (identity_module.TRAITS_OID, "{not json")),
            name(cn, (identity_module.TRAITS_OID, '{"logins": ["root"]}')),
            name(cn, (identity_module.TRAITS_OID, '[["logins", "root"]]')),
            name(cn, (identity_module.KUBE_CLUSTER_OID, "a"), (identity_module.KUBE_CLUSTER_OID, "b")),
            name(cn, (identity_module.KUBE_GROUPS_OID, "")),
            x509.Name(
                [
                    x509.RelativeDistinguishedName(
                        [x509.NameAttribute(*cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "r")]
                    )
                ]
            ),
        ]
        for subject in malformed_user:
            self.assertRaises(IdentityError, identify, sign_subject(user_ca(), subject))
        self.assertEqual(identify(sign_subject(user_ca(), name(cn))).username, "alice")
        host = [
            (NameOID.COMMON_NAME, "h1"),
            (identity_module.NODENAME_OID, "n"),
            (identity_module.TELEPORT_CLUSTER_OID, CLUSTER),
        ]
        malformed_host = [
            name(*host),
            name(*host, (NameOID.ORGANIZATION_NAME, "root")),
            name(*host, (NameOID.ORGANIZATION_NAME, "kube"), (NameOID.ORGANIZATION_NAME, "auth")),
            name(*host, (NameOID.ORGANIZATION_NAME, "kube"), (identity_module.KUBE_CLUSTER_OID, "c")),
        ]
        for subject in malformed_host:
            self.assertRaises(IdentityError, identify, sign_subject(host_ca(), subject))
        # The same well-formed subject is accepted, so the refusals above are about the subject.
        self.assertEqual(identify(sign_subject(host_ca(), name(*host, (NameOID.ORGANIZATION_NAME, "kube")))).host_id, "h1")


class IdentityValueTests(SynchronousTestCase):
    expires = NOW + timedelta(hours=1)

    def test_traits_are_canonical(self):
        one = UserIdentity("a", (), {"b": ["2"], "a": ["1"]}, expires=self.expires)
        other = UserIdentity("a", (), [("a", ("1",)), ("b", ("2",))], expires=self.expires)
        self.assertEqual(one, other)
        self.assertEqual(dict(one.traits), {"a": ("1",), "b": ("2",)})

    def test_expires_normalised_to_utc_seconds(self):
        local = datetime(2026, 1, 1, 15, 0, 0, 999, tzinfo=timezone(timedelta(hours=3)))
        self.assertEqual(UserIdentity("a", (), expires=local).expires, NOW)

    def test_invalid_values_refused(self):
        self.assertRaises(ValueError, UserIdentity, "a", (), expires=datetime(2026, 1, 1))
        self.assertRaises(ValueError, UserIdentity, "", (), expires=self.expires)
        self.assertRaises(ValueError, UserIdentity, "a" * 65, (), expires=self.expires)
        self.assertRaises(TypeError, UserIdentity, "a", "admin", expires=self.expires)
        self.assertRaises(ValueError, UserIdentity, "a", ("",), expires=self.expires)
        self.assertRaises(ValueError, UserIdentity, "a", (), [("x", ()), ("x", ())], expires=self.expires)
        self.assertRaises(ValueError, HostIdentity, "h1", "n", "root", CLUSTER)
        self.assertRaises(ValueError, HostIdentity, "h 1", "n", "kube", CLUSTER)
        self.assertRaises(ValueError, HostIdentity, "h1", "", "kube", CLUSTER)
        self.assertRaises(ValueError, HostIdentity, "h1", "n", "kube", "")
