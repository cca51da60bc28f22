"""``tsh kube credentials`` answered without the network (kubectl runs it
before every command): from the credential cache with the standard library
alone, else from the stored certificate without Twisted. What each accepts,
everything each leaves to the longer way, and which modules each loads."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.identityfile import IdentityFile
from teleport_py.pki import CertAuthority, UserIdentity, certificate_pem, generate_private_key, private_key_pem
from teleport_py.tsh.cli import parser
from teleport_py.tsh.credentialcache import KUBE_CERT_MIN_REMAINING_SECONDS, read_credential_cache
from teleport_py.tsh.credentials import KUBE_CERT_MIN_REMAINING, cached_exec_credential, exec_credential
from teleport_py.tsh.layout import CERTIFICATE_FILE, CREDENTIAL_CACHE_FILE
from teleport_py.tsh.main import plain_credentials_request
from teleport_py.tsh.profile import Profile, ProfileStore

NOW = datetime.now(timezone.utc).replace(microsecond=0)
PROXY = "proxy.example.com:3080"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _args(kube_cluster="prod", teleport_cluster="example", proxy=PROXY):
    return argparse.Namespace(kube_cluster=kube_cluster, teleport_cluster=teleport_cluster, proxy=proxy)


class StoreTestCase(SynchronousTestCase):
    """A logged-in store (alice at PROXY, cluster example) and certificates from its user CA."""

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


class CachedCredentialTests(StoreTestCase):
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


def _read_cache(home, args=None, now=NOW):
    return read_credential_cache(args or _args(), {"TELEPORT_HOME": str(home)}, now=now.timestamp())


class CredentialCacheTests(StoreTestCase):
    """The fast path: ``credential.json`` next to the kube certificate."""

    def setUp(self):
        super().setUp()
        self.remember(self.certificate("prod"))

    def remember(self, certificate, kube_cluster="prod"):
        """What every writer does: the checked certificate, then its cache, under the lock."""
        self.store.save_kube_certificate(self.profile, kube_cluster, certificate)
        identity = self.store.identity(self.profile)
        self.assertTrue(self.store.save_credential_cache(self.profile, identity, kube_cluster, certificate))

    @property
    def kube_dir(self) -> Path:
        return self.store.key_dir(self.profile) / "kube" / "prod"

    @property
    def cache_path(self) -> Path:
        return self.kube_dir / CREDENTIAL_CACHE_FILE

    def read(self, args=None, now=NOW):
        return _read_cache(self.home, args, now)

    def test_a_good_cache_answers_as_the_certificate_would(self):
        answer = self.read()
        self.assertEqual(answer, cached_exec_credential(_args(), self.environ, now=NOW))
        stored = self.store.kube_certificate(self.profile, "prod")
        self.assertEqual(answer, exec_credential(stored, self.key))
        self.assertEqual(self.read(_args(teleport_cluster=None, proxy=None)), answer)
        self.assertEqual(self.read(_args(proxy="proxy.example.com")), answer, "port 3080 when left out")

    def test_the_cache_is_written_like_a_key(self):
        cached = json.loads(self.cache_path.read_bytes())["exec_credential"]
        self.assertEqual(cached["status"]["clientKeyData"], private_key_pem(self.key).decode())
        self.assertEqual(_mode(self.cache_path), 0o600)
        self.assertEqual(_mode(self.kube_dir), 0o700)
        self.assertEqual(sorted(os.listdir(self.kube_dir)), [CERTIFICATE_FILE, CREDENTIAL_CACHE_FILE],
                         "no temporary file left behind")

    def test_only_for_the_login_on_disk(self):
        """A process that read the keys before a new login or a logout writes nothing for them."""
        before = self.store.identity(self.profile)
        certificate = self.store.kube_certificate(self.profile, "prod")
        self.store.save_login(self.profile, self.identity_file(expires=NOW + timedelta(hours=12)))
        self.assertFalse(self.cache_path.exists(), "a new login deletes the cache with the certificates")
        self.assertFalse(self.store.save_credential_cache(self.profile, before, "prod", certificate))
        self.assertFalse(self.cache_path.exists())

        self.key = generate_private_key()
        self.store.save_login(self.profile, self.identity_file(expires=NOW + timedelta(hours=12)))
        self.assertFalse(self.store.save_credential_cache(self.profile, before, "prod", certificate))
        self.assertFalse(self.cache_path.exists())

        self.store.remove(self.profile)
        self.assertFalse(self.store.save_credential_cache(self.profile, before, "prod", certificate))
        self.assertFalse(self.store.key_dir(self.profile).exists(), "nothing comes back after a logout")

    def test_checking_the_certificate_writes_the_cache_if_the_lock_is_free(self):
        self.cache_path.unlink()
        fd = os.open(self.store.key_dir(self.profile) / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.assertIsNotNone(cached_exec_credential(_args(), self.environ, now=NOW))
        self.assertFalse(self.cache_path.exists(), "whoever holds the lock may be reissuing")
        fcntl.flock(fd, fcntl.LOCK_UN)
        answer = cached_exec_credential(_args(), self.environ, now=NOW)
        self.assertEqual(self.read(), answer)

    def test_anything_not_plainly_fine_goes_the_long_way(self):
        """Each case starts from a good cache (checked) and changes one thing."""
        other_key = generate_private_key()

        def edit(change):
            def apply():
                fields = json.loads(self.cache_path.read_bytes())
                change(fields)
                self.cache_path.write_text(json.dumps(fields, indent=2))
            return apply

        def another_key_inside():
            text = self.cache_path.read_text()
            ours = json.dumps(private_key_pem(self.key).decode())
            self.assertIn(ours, text)
            self.cache_path.write_text(text.replace(ours, json.dumps(private_key_pem(other_key).decode())))

        def copy_to(kube_cluster):
            return lambda: shutil.copytree(self.kube_dir, self.kube_dir.parent / kube_cluster)

        def new_login_keeping_the_old_cache():
            kept = self.cache_path.read_bytes(), (self.kube_dir / CERTIFICATE_FILE).read_bytes()
            self.key = generate_private_key()
            self.store.save_login(self.profile, self.identity_file(expires=NOW + timedelta(hours=12)))
            self.kube_dir.mkdir(parents=True)
            self.cache_path.write_bytes(kept[0])
            (self.kube_dir / CERTIFICATE_FILE).write_bytes(kept[1])

        def login_certificate_replaced(expires):
            return lambda: self.identity_file(expires=expires).save(os.fspath(self.store.key_dir(self.profile)))

        def expiring(kube_expires, login_expires=NOW + timedelta(hours=12)):
            def apply():
                self.store.save_login(self.profile, self.identity_file(expires=login_expires))
                self.remember(self.certificate("prod", expires=kube_expires))
            return apply

        def unlink(*parts):
            return lambda: self.home.joinpath(*parts).unlink()

        nothing = lambda: None  # noqa: E731
        cases = {
            "no cache": (lambda: self.cache_path.unlink(), _args()),
            "no kube certificate": (lambda: (self.kube_dir / CERTIFICATE_FILE).unlink(), _args()),
            "no key": (lambda: (self.store.key_dir(self.profile) / "key.pem").unlink(), _args()),
            "no login certificate": (lambda: (self.store.key_dir(self.profile) / CERTIFICATE_FILE).unlink(), _args()),
            "no profile": (unlink("profiles", "proxy.example.com_3080.json"), _args()),
            "no current profile": (unlink("current-profile"), _args(proxy=None)),
            "not logged in here": (lambda: shutil.rmtree(self.home), _args()),
            "a directory in its place": (lambda: (self.cache_path.unlink(), self.cache_path.mkdir()), _args()),
            "certificate expired": (expiring(NOW - timedelta(seconds=1)), _args()),
            "certificate about to expire": (expiring(NOW + timedelta(seconds=KUBE_CERT_MIN_REMAINING_SECONDS)),
                                            _args()),
            "login expired": (expiring(NOW + timedelta(hours=1), login_expires=NOW - timedelta(seconds=1)), _args()),
            "login expires now": (expiring(NOW + timedelta(hours=1), login_expires=NOW), _args()),
            "login certificate replaced (same key)": (login_certificate_replaced(NOW + timedelta(hours=11)), _args()),
            "login certificate replaced by an expired one": (login_certificate_replaced(NOW - timedelta(seconds=1)),
                                                             _args()),
            "a new login since": (new_login_keeping_the_old_cache, _args()),
            "kube certificate replaced": (
                lambda: self.store.save_kube_certificate(self.profile, "prod", self.certificate("prod")), _args()),
            "another kube cluster asked": (copy_to("dev"), _args(kube_cluster="dev")),
            "another Teleport cluster asked": (nothing, _args(teleport_cluster="other")),
            "the profile now names another cluster": (
                lambda: self.store.save_profile(evolve(self.profile, cluster="other")), _args(teleport_cluster=None)),
            "another user's profile": (
                lambda: self.store.save_profile(evolve(self.profile, user="bob")), _args()),
            "another proxy asked": (nothing, _args(proxy="elsewhere:3080")),
            "malformed proxy": (nothing, _args(proxy="a/b")),
            "current profile climbing out": (
                lambda: (self.home / "current-profile").write_text("../keys"), _args(proxy=None)),
            "unsafe cluster name": (nothing, _args(kube_cluster="..")),
            "damaged: truncated": (lambda: self.cache_path.write_bytes(self.cache_path.read_bytes()[:-20]), _args()),
            "damaged: empty": (lambda: self.cache_path.write_bytes(b""), _args()),
            "damaged: not an object": (lambda: self.cache_path.write_text("[1, 2]"), _args()),
            "damaged: not UTF-8": (lambda: self.cache_path.write_bytes(b"\xff" + self.cache_path.read_bytes()),
                                   _args()),
            "damaged: a field missing": (edit(lambda f: f.pop("login_expires")), _args()),
            "damaged: an extra field": (edit(lambda f: f.update(extra=1)), _args()),
            "damaged: another format": (edit(lambda f: f.update(format=2)), _args()),
            "damaged: expiry as text": (edit(lambda f: f.update(expires=str(f["expires"]))), _args()),
            "damaged: expiry as a float": (edit(lambda f: f.update(expires=f["expires"] + 0.5)), _args()),
            "damaged: login expiry as true": (edit(lambda f: f.update(login_expires=True)), _args()),
            "damaged: expiry later than the certificate's": (edit(lambda f: f.update(expires=f["expires"] + 3600)),
                                                             _args()),
            "damaged: expiry beyond the clock": (edit(lambda f: f.update(expires=10**20, login_expires=10**20)),
                                                 _args()),
            "damaged: another key inside": (another_key_inside, _args()),
            "damaged: another cluster inside": (edit(lambda f: f.update(kube_cluster="dev")), _args()),
        }
        for what, (change, args) in cases.items():
            self.setUp()
            self.assertIsNotNone(self.read(), "the case starts from a good cache: %s" % what)
            change()
            self.assertIsNone(self.read(args), what)

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_a_changed_byte_is_never_served(self, data):
        """Any one byte of the file changed: no answer, except inside the login
        expiry's digits, the one value stored nowhere else (tsh writes it from
        the login certificate; only its owner can write the file)."""
        cache = self.cache_path.read_bytes()
        position = data.draw(st.integers(0, len(cache) - 1))
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != cache[position]))
        self.cache_path.write_bytes(cache[:position] + bytes([byte]) + cache[position + 1:])
        try:
            label = b'"login_expires": '
            start = cache.index(label) + len(label)
            end = cache.index(b",", start)
            if not start <= position < end:
                self.assertIsNone(self.read(), (position, byte))
        finally:
            self.cache_path.write_bytes(cache)

    def test_the_clock_decides_expiry(self):
        expires = self.store.kube_certificate(self.profile, "prod").not_valid_after_utc
        self.assertIsNotNone(self.read(now=expires - timedelta(seconds=KUBE_CERT_MIN_REMAINING_SECONDS + 1)))
        self.assertIsNone(self.read(now=expires - timedelta(seconds=KUBE_CERT_MIN_REMAINING_SECONDS)))
        self.assertIsNone(self.read(now=expires + timedelta(days=1)))


#: tsh's kube credentials options, some near misses, and what argparse would make of a few others.
_ARGUMENT_NAMES = st.sampled_from(["--kube-cluster", "--teleport-cluster", "--proxy", "--kube", "--proxy-x",
                                   "-h", "--help", "kube-cluster", "--", "-", ""])
_ARGUMENTS = st.one_of(
    st.builds("{}={}".format, _ARGUMENT_NAMES, st.text(max_size=8).filter(lambda t: "\0" not in t)),
    _ARGUMENT_NAMES,
    st.text(max_size=8).filter(lambda t: "\0" not in t),
)


class PlainRequestTests(SynchronousTestCase):
    """main.plain_credentials_request reads what it accepts as argparse (tsh.cli) does."""

    @settings(max_examples=400, deadline=None)
    @given(st.lists(_ARGUMENTS, max_size=5), st.sampled_from([["kube", "credentials"], ["kube"], ["kube", "ls"], []]))
    def test_what_it_reads_argparse_reads_the_same(self, options, command):
        argv = command + options
        request = plain_credentials_request(argv)
        if request is None:
            return
        with contextlib.redirect_stderr(io.StringIO()):
            args = parser().parse_args(argv)
        self.assertEqual(vars(request), vars(args))

    def test_the_kubeconfig_request_is_read(self):
        argv = ["kube", "credentials", "--proxy=p:1", "--teleport-cluster=example", "--kube-cluster=my-cluster"]
        self.assertEqual(vars(plain_credentials_request(argv)), vars(parser().parse_args(argv)))
        self.assertEqual(plain_credentials_request(argv).kube_cluster, "my-cluster")

    def test_anything_else_goes_to_argparse(self):
        for argv in (
            ["kube", "credentials"],
            ["kube", "credentials", "--kube-cluster", "prod"],
            ["kube", "credentials", "--kube=prod"],
            ["kube", "credentials", "--kube-cluster=a", "--kube-cluster=b"],
            ["kube", "credentials", "--kube-cluster=a", "--help"],
            ["kube", "credentials", "--kube-cluster=a", "extra"],
            ["kube", "login", "--kube-cluster=a"],
            ["--kube-cluster=a", "kube", "credentials"],
        ):
            self.assertIsNone(plain_credentials_request(argv), argv)


class FastPathImportTests(StoreTestCase):
    """The modules the real ``tsh`` console script loads to answer from the cache."""

    #: Every teleport_py module on the fast path; anything else it loads must be the standard library.
    FAST_PATH_MODULES = {"teleport_py", "teleport_py.tsh", "teleport_py.tsh.main", "teleport_py.tsh.credentialcache",
                         "teleport_py.tsh.layout"}

    def imported(self, *command) -> tuple[set[str], bytes]:
        """Modules imported by ``command`` (per ``-X importtime``) beyond the bare interpreter's."""
        done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, timeout=60,
                              env={**os.environ, "TELEPORT_HOME": str(self.home)})
        self.assertEqual(done.returncode, 0, done.stderr)
        names = set()
        for line in done.stderr.decode().splitlines():
            if line.startswith("import time:") and "|" in line:
                names.add(line.rsplit("|", 1)[1].strip())
        return names, done.stdout

    def test_the_console_script_answers_from_the_cache_with_the_standard_library(self):
        CredentialCacheTests.remember(self, self.certificate("prod"))
        tsh = os.path.join(os.path.dirname(sys.executable), "tsh")
        baseline, _ = self.imported("-c", "pass")
        names, out = self.imported(tsh, "kube", "credentials", "--proxy=%s" % PROXY, "--teleport-cluster=example",
                                   "--kube-cluster=prod")
        self.assertEqual(json.loads(out), _read_cache(self.home))
        added = names - baseline
        ours = {name for name in added if name.split(".")[0] == "teleport_py"}
        self.assertEqual(ours, self.FAST_PATH_MODULES)
        others = sorted(name for name in added - ours if name.split(".")[0] not in sys.stdlib_module_names)
        self.assertEqual(others, [], "not the standard library")
        for heavy in ("argparse", "datetime", "pathlib", "shutil", "locale"):
            self.assertNotIn(heavy, added)

    def test_without_a_cache_the_same_script_checks_the_certificate(self):
        """The probe itself can see a heavier path: the cache gone, cryptography is loaded."""
        self.store.save_kube_certificate(self.profile, "prod", self.certificate("prod"))
        tsh = os.path.join(os.path.dirname(sys.executable), "tsh")
        names, out = self.imported(tsh, "kube", "credentials", "--kube-cluster=prod")
        self.assertEqual(json.loads(out)["kind"], "ExecCredential")
        self.assertIn("cryptography", names)
        self.assertIn("teleport_py.tsh.credentials", names)
        self.assertNotIn("twisted", names)
