"""``tsh kube credentials`` answered from the stored certificate: what it
accepts, everything it leaves to the full command, and that it does so
without loading Twisted (kubectl runs it before every command)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from teleport_py.identityfile import IdentityFile
from teleport_py.pki import CertAuthority, UserIdentity, certificate_pem, generate_private_key, private_key_pem
from teleport_py.tsh.credentials import KUBE_CERT_MIN_REMAINING, cached_exec_credential
from teleport_py.tsh.profile import Profile, ProfileStore

NOW = datetime.now(timezone.utc).replace(microsecond=0)
PROXY = "proxy.example.com:3080"


def _args(kube_cluster="prod", teleport_cluster="example", proxy=PROXY):
    return argparse.Namespace(kube_cluster=kube_cluster, teleport_cluster=teleport_cluster, proxy=proxy)


class CachedCredentialTests(SynchronousTestCase):
    def setUp(self):
        self.home = Path(self.mktemp()).absolute()
        self.environ = {"TELEPORT_HOME": str(self.home)}
        self.store = ProfileStore(self.home)
        self.profile = Profile(proxy=PROXY, user="alice", cluster="example")
        self.user_ca = CertAuthority.generate("user", "example", NOW - timedelta(hours=1))
        self.host_ca = CertAuthority.generate("host", "example", NOW - timedelta(hours=1))
        self.key = generate_private_key()
        self.store.save_login(self.profile, self.identity_file(expires=NOW + timedelta(hours=12)))

    def certificate(self, kube_cluster="", expires=None, key=None, ca=None):
        identity = UserIdentity("alice", ["access"], kube_cluster=kube_cluster, teleport_cluster="example",
                                expires=expires or NOW + timedelta(hours=1))
        return (ca or self.user_ca).issue_user_certificate((key or self.key).public_key(), identity,
                                                           NOW - timedelta(minutes=5))

    def identity_file(self, expires):
        return IdentityFile(self.certificate(expires=expires), self.key, (self.user_ca.certificate,),
                            (self.host_ca.certificate,))

    def cached(self, args=None):
        return cached_exec_credential(args or _args(), self.environ, now=NOW)

    def test_a_good_stored_certificate_answers(self):
        stored = self.certificate("prod")
        self.store.save_kube_certificate(self.profile, "prod", stored)
        credential = self.cached()
        self.assertEqual(credential["kind"], "ExecCredential")
        self.assertEqual(credential["status"]["clientCertificateData"], certificate_pem(stored).decode())
        self.assertEqual(credential["status"]["clientKeyData"], private_key_pem(self.key).decode())
        self.assertEqual(credential["status"]["expirationTimestamp"],
                         stored.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.assertIsNotNone(self.cached(_args(teleport_cluster=None, proxy=None)))

    def test_anything_not_plainly_fine_goes_the_long_way(self):
        other_ca = CertAuthority.generate("user", "example", NOW - timedelta(hours=1))
        cases = {
            "no certificate yet": (None, _args()),
            "routed to another cluster": (self.certificate("dev"), _args()),
            "about to expire": (self.certificate("prod", expires=NOW + KUBE_CERT_MIN_REMAINING), _args()),
            "for another key": (self.certificate("prod", key=generate_private_key()), _args()),
            "signed by another CA": (self.certificate("prod", ca=other_ca), _args()),
            "another Teleport cluster asked": (self.certificate("prod"), _args(teleport_cluster="other")),
            "another proxy asked": (self.certificate("prod"), _args(proxy="elsewhere:3080")),
            "malformed proxy": (self.certificate("prod"), _args(proxy="a/b")),
            "unsafe cluster name": (self.certificate("prod"), _args(kube_cluster="..")),
        }
        for what, (stored, args) in cases.items():
            self.store.save_login(self.profile, self.identity_file(expires=NOW + timedelta(hours=12)))
            if stored is not None:
                self.store.save_kube_certificate(self.profile, "prod", stored)
            self.assertIsNone(self.cached(args), what)

    def test_an_expired_login_goes_the_long_way(self):
        self.store.save_login(self.profile, self.identity_file(expires=NOW - timedelta(seconds=1)))
        self.store.save_kube_certificate(self.profile, "prod", self.certificate("prod"))
        self.assertIsNone(self.cached())

    def test_not_logged_in_goes_the_long_way(self):
        self.assertIsNone(cached_exec_credential(_args(), {"TELEPORT_HOME": self.mktemp()}, now=NOW))

    def test_the_command_answers_without_loading_twisted(self):
        self.store.save_kube_certificate(self.profile, "prod", self.certificate("prod"))
        probe = (
            "import sys\n"
            "from teleport_py.tsh.main import main\n"
            "main(['kube', 'credentials', '--kube-cluster=prod', '--teleport-cluster=example'])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'treq', 'OpenSSL'))\n"
            "sys.stderr.write(repr(loaded))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60,
                              env={**os.environ, "TELEPORT_HOME": str(self.home), "PYTHONPATH": root})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["kind"], "ExecCredential")
        self.assertEqual(done.stderr.decode(), "[]")
