"""Host certificate renewal on a Clock: when it renews, what it checks, how
it retries, what it writes; and Auth's side (CertificateAuthorities)."""
from __future__ import annotations

import os
import stat

from cryptography import x509
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from teleport_py.auth.services.authorities import CertificateAuthorities
from teleport_py.auth.services.common import load_public_key
from teleport_py.identityfile import PENDING, IdentityFile
from teleport_py.pki import AUTH_SERVER_NAME, PROXY_SERVER_NAMES, HostIdentity, certificate_pem, generate_private_key, private_key_pem
from teleport_py.renewal import RETRY_CAP, HostCertRenewal, renewal_time
from tests.support.pki import CLUSTER, NOW, authority

TTL = 60.0


class Cluster:
    """Auth's certificate authorities on a clock, issuing TTL-second host certificates."""

    def __init__(self, clock: Clock, ttl: float = TTL):
        self.clock = clock
        self.cas = CertificateAuthorities(clock, CLUSTER, authority("user"), authority("host"), host_cert_ttl=ttl)
        self.requests = 0
        self.refuse = 0

    def join(self, role="kube", dns_names=()) -> IdentityFile:
        key = generate_private_key()
        cert = self.cas.issue_host_identity(key.public_key(), "host-1", "node-1", role, dns_names)
        return IdentityFile(cert, key, (self.cas.user_ca.certificate,), (self.cas.host_ca.certificate,))

    def renewer(self, identity: IdentityFile):
        """What POST /v1/certs/host does for the holder of ``identity``'s certificate."""
        def request(public_key_pem: str):
            self.requests += 1
            if self.refuse:
                self.refuse -= 1
                return fail(ConnectionError("no tunnel to the proxy"))
            current = holder.identity.certificate
            host = HostIdentity("host-1", "node-1", self.role_of(current), CLUSTER)
            cert = self.cas.renew_host_identity(current, host, load_public_key(public_key_pem))
            return succeed({"cert": certificate_pem(cert).decode()})

        holder = type("Holder", (), {"identity": identity})()
        return request, holder

    @staticmethod
    def role_of(cert) -> str:
        return cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value


class RenewalTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.cluster = Cluster(self.clock)
        self.identity = self.cluster.join()
        self.directory = self.mktemp()
        self.identity.save(self.directory)
        self.renewed: list[IdentityFile] = []

    def start(self, identity=None, random=lambda: 0.0):
        request, holder = self.cluster.renewer(identity or self.identity)
        renewal = HostCertRenewal(
            self.clock, identity or self.identity, request=request,
            save=lambda new: new.save(self.directory), on_renewed=self.renewed.append, random=random)

        def track(new):
            holder.identity = new
        renewal._on_renewed = lambda new: (track(new), self.renewed.append(new))
        renewal.startService()
        self.addCleanup(lambda: renewal.running and renewal.stopService())
        return renewal

    def test_renews_at_two_thirds_of_the_life(self):
        renewal = self.start()
        self.clock.advance(TTL * 2 / 3 - 1)
        self.assertEqual(self.cluster.requests, 0)
        self.clock.advance(1)
        self.assertEqual(self.cluster.requests, 1)
        (new,) = self.renewed
        self.assertIs(renewal.identity, new)
        self.assertNotEqual(new.certificate, self.identity.certificate)
        self.assertEqual(new.certificate.subject, self.identity.certificate.subject)
        self.assertGreater(new.expires, self.identity.expires)
        self.assertEqual(new.host_cas, self.identity.host_cas)
        # On disk: the new pair, every file 0600, no pending pair left.
        loaded = IdentityFile.load(self.directory)
        self.assertEqual(loaded.certificate, new.certificate)
        self.assertEqual(private_key_pem(loaded.private_key), private_key_pem(new.private_key))
        for name in os.listdir(self.directory):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode), 0o600, name)
        self.assertNotIn(PENDING, os.listdir(self.directory))
        # And the next renewal comes two thirds into the new certificate's life.
        self.clock.advance(TTL * 2 / 3 - 1)
        self.assertEqual(self.cluster.requests, 1)
        self.clock.advance(1)
        self.assertEqual(self.cluster.requests, 2)
        self.assertEqual(len(self.renewed), 2)

    def test_jitter_renews_earlier_by_up_to_a_tenth(self):
        start = NOW.timestamp()
        self.assertEqual(renewal_time(self.identity, lambda: 0.0), start + TTL * 2 / 3)
        self.assertAlmostEqual(renewal_time(self.identity, lambda: 1.0), start + TTL * (2 / 3 - 0.1))

    def test_an_identity_past_its_renewal_time_renews_at_once(self):
        self.clock.advance(TTL * 0.9)
        self.start()
        self.clock.advance(0)
        self.assertEqual(len(self.renewed), 1)

    def test_failures_are_retried_with_capped_backoff(self):
        self.cluster.refuse = 10
        self.start()
        self.clock.advance(TTL * 2 / 3)
        self.assertEqual(self.cluster.requests, 1)
        delays = [1, 2, 4, 8, 16, 32, RETRY_CAP, RETRY_CAP, RETRY_CAP, RETRY_CAP]
        for number, delay in enumerate(delays, start=2):
            self.clock.advance(delay - 0.01)
            self.assertEqual(self.cluster.requests, number - 1)
            self.clock.advance(0.01)
            self.assertEqual(self.cluster.requests, number)
        self.assertEqual(len(self.renewed), 1)  # the eleventh attempt succeeded
        self.assertEqual(IdentityFile.load(self.directory).certificate, self.renewed[0].certificate)

    def test_an_answer_for_another_identity_is_refused(self):
        other = Cluster(self.clock).join(role="proxy", dns_names=PROXY_SERVER_NAMES)
        renewal = HostCertRenewal(
            self.clock, self.identity, request=lambda pem: succeed({"cert": certificate_pem(other.certificate).decode()}),
            save=lambda new: new.save(self.directory), on_renewed=self.renewed.append, random=lambda: 0.0)
        renewal.startService()
        self.addCleanup(renewal.stopService)
        self.clock.advance(TTL * 2 / 3)
        self.assertEqual(self.renewed, [])
        self.assertEqual(IdentityFile.load(self.directory).certificate, self.identity.certificate)
        self.assertIs(renewal.identity, self.identity)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_a_certificate_for_another_key_is_refused(self):
        def request(pem):
            key = generate_private_key()  # not the key we sent
            cert = self.cluster.cas.renew_host_identity(
                self.identity.certificate, HostIdentity("host-1", "node-1", "kube", CLUSTER), key.public_key())
            return succeed({"cert": certificate_pem(cert).decode()})

        renewal = HostCertRenewal(self.clock, self.identity, request=request, on_renewed=self.renewed.append,
                                  random=lambda: 0.0)
        renewal.startService()
        self.addCleanup(renewal.stopService)
        self.clock.advance(TTL)
        self.assertEqual(self.renewed, [])

    def test_stop_cancels_the_scheduled_renewal(self):
        renewal = self.start()
        renewal.stopService()
        self.clock.advance(TTL)
        self.assertEqual(self.cluster.requests, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class IdentityFileTests(unittest.TestCase):
    def test_a_save_cut_between_key_and_certificate_loads_the_pending_pair(self):
        clock = Clock()
        clock.advance(NOW.timestamp())
        cluster = Cluster(clock)
        old, new = cluster.join(), cluster.join()
        directory = self.mktemp()
        old.save(directory)
        # As if the process died after writing the pending pair and the new key.
        with open(os.path.join(directory, PENDING), "wb") as f:
            f.write(private_key_pem(new.private_key) + certificate_pem(new.certificate))
        with open(os.path.join(directory, "key.pem"), "wb") as f:
            f.write(private_key_pem(new.private_key))
        loaded = IdentityFile.load(directory)
        self.assertEqual(loaded.certificate, new.certificate)
        self.assertEqual(loaded.private_key.public_key(), new.certificate.public_key())


class AuthoritiesTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.cluster = Cluster(self.clock, ttl=30.0)

    def renew(self, identity: IdentityFile, role: str):
        key = generate_private_key()
        return self.cluster.cas.renew_host_identity(
            identity.certificate, HostIdentity("host-1", "node-1", role, CLUSTER), key.public_key())

    @staticmethod
    def names(cert):
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)

    def test_host_cert_ttl(self):
        cert = self.cluster.join().certificate
        self.assertEqual(cert.not_valid_after_utc.timestamp(), NOW.timestamp() + 30.0)

    def test_a_proxy_keeps_its_names(self):
        proxy = self.cluster.join(role="proxy", dns_names=("localhost", *PROXY_SERVER_NAMES))
        self.clock.advance(10)
        cert = self.renew(proxy, "proxy")
        self.assertEqual(sorted(self.names(cert)), sorted(self.names(proxy.certificate)))
        self.assertEqual(cert.not_valid_after_utc.timestamp(), NOW.timestamp() + 10 + 30.0)

    def test_auth_keeps_its_name(self):
        auth = self.cluster.join(role="auth", dns_names=("localhost", AUTH_SERVER_NAME))
        cert = self.renew(auth, "auth")
        self.assertEqual(sorted(self.names(cert)), sorted(self.names(auth.certificate)))
        self.assertIn(AUTH_SERVER_NAME, self.names(cert))

    def test_an_agent_never_gets_reserved_names(self):
        # An agent certificate never carries them (join filters them); even if one did, renewal drops them.
        agent = self.cluster.join(role="kube", dns_names=("node-1.example.com", AUTH_SERVER_NAME, *PROXY_SERVER_NAMES))
        cert = self.renew(agent, "kube")
        self.assertEqual(sorted(self.names(cert)), ["host-1.example", "node-1.example.com"])
