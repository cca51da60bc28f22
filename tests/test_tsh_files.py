"""tsh's files: the profile store (permissions, locking) and the kubeconfig merge."""

import base64
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.identityfile import IdentityFile
from teleport_py.pki import CertAuthority, UserIdentity, generate_private_key
from teleport_py.tsh import kubeconfig
from teleport_py.tsh.profile import LOCK_POLL_SECONDS, Profile, ProfileError, ProfileStore

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _identity(kube_cluster=""):
    user_ca = CertAuthority.generate("user", "example", NOW)
    host_ca = CertAuthority.generate("host", "example", NOW)
    key = generate_private_key()
    identity = UserIdentity("alice", ["access"], kube_cluster=kube_cluster, teleport_cluster="example",
                            expires=NOW + timedelta(hours=12))
    cert = user_ca.issue_user_certificate(key.public_key(), identity, NOW)
    return IdentityFile(cert, key, (user_ca.certificate,), (host_ca.certificate,))


class ProfileStoreTests(SynchronousTestCase):
    def setUp(self):
        self.home = Path(self.mktemp())
        self.store = ProfileStore(self.home)
        self.profile = Profile(proxy="proxy.example.com:3080", user="alice", cluster="example")

    def test_login_files_are_private(self):
        self.store.save_login(self.profile, _identity())
        key_dir = self.store.key_dir(self.profile)
        for name in ("key.pem", "cert.pem", "user_ca.pem", "host_ca.pem"):
            self.assertEqual(_mode(key_dir / name), 0o600, name)
        self.assertEqual(_mode(self.home / "current-profile"), 0o600)
        self.assertEqual(_mode(self.home / "profiles" / "proxy.example.com_3080.json"), 0o600)
        for directory in (self.home, self.home / "keys", self.home / "keys" / "proxy.example.com_3080", key_dir):
            self.assertEqual(_mode(directory), 0o700, directory)

    def test_profile_round_trip_and_current(self):
        self.store.save_login(self.profile, _identity())
        self.assertEqual(self.store.profile(), self.profile)
        self.assertEqual(self.store.current_proxy(), "proxy.example.com:3080")
        self.assertEqual(self.store.identity(self.profile).certificate.subject.rfc4514_string().count("alice"), 1)

    def test_not_logged_in(self):
        error = self.assertRaises(ProfileError, self.store.profile)
        self.assertIn("tsh login", str(error))
        self.assertRaises(ProfileError, self.store.identity, self.profile)

    def test_damaged_profile(self):
        self.store.save_profile(self.profile)
        (self.home / "profiles" / "proxy.example.com_3080.json").write_text("{not json")
        self.assertRaises(ProfileError, self.store.profile)

    def test_new_login_drops_certificates_of_the_old_key(self):
        self.store.save_login(self.profile, _identity())
        self.store.save_kube_certificate(self.profile, "prod", _identity("prod").certificate)
        self.assertIsNotNone(self.store.kube_certificate(self.profile, "prod"))
        self.store.save_login(self.profile, _identity())
        self.assertIsNone(self.store.kube_certificate(self.profile, "prod"))

    def test_kube_certificate_is_private(self):
        self.store.save_login(self.profile, _identity())
        self.store.save_kube_certificate(self.profile, "prod", _identity("prod").certificate)
        path = self.store.key_dir(self.profile) / "kube" / "prod" / "cert.pem"
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(_mode(path.parent), 0o700)

    def test_names_cannot_escape_the_store(self):
        for name in ("", ".", "..", "../x", "a/b", "a\0b"):
            self.assertRaises(ProfileError, self.store.kube_certificate, self.profile, name)
            self.assertRaises(ValueError, Profile, proxy="p:1", user=name, cluster="c")
            self.assertRaises(ValueError, Profile, proxy=name, user="alice", cluster="c")

    def test_remove(self):
        other = Profile(proxy="other:3080", user="bob", cluster="c2")
        self.store.save_login(other, _identity())
        self.store.save_login(self.profile, _identity())
        self.store.remove(self.profile)
        self.assertFalse(self.store.key_dir(self.profile).exists())
        self.assertRaises(ProfileError, self.store.current_proxy)
        self.assertEqual(self.store.profile("other:3080"), other)
        self.assertTrue(self.store.key_dir(other).exists())

    def test_lock_is_exclusive_and_waits_without_blocking(self):
        clock = Clock()
        order = []
        release_first = Deferred()

        async def holder(name, until):
            async with self.store.lock(self.profile, clock):
                order.append(name + " in")
                await until
                order.append(name + " out")

        first = Deferred.fromCoroutine(holder("first", release_first))
        second = Deferred.fromCoroutine(holder("second", Deferred.fromCoroutine(_done())))
        clock.advance(LOCK_POLL_SECONDS * 5)
        self.assertEqual(order, ["first in"])
        release_first.callback(None)
        clock.advance(LOCK_POLL_SECONDS)
        self.assertEqual(order, ["first in", "first out", "second in", "second out"])
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(_mode(self.store.key_dir(self.profile) / ".lock"), 0o600)


async def _done():
    return None


class KubeconfigTests(SynchronousTestCase):
    def setUp(self):
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def merge(self, config, kube_cluster="prod"):
        return kubeconfig.merge_teleport_cluster(
            config,
            teleport_cluster="example",
            proxy="proxy.example.com:3080",
            host_ca_pem=b"HOST CA PEM",
            kube_cluster=kube_cluster,
            exec_command="/usr/bin/tsh",
            exec_args=["kube", "credentials", "--kube-cluster=%s" % kube_cluster],
        )

    def test_path_honours_the_first_kubeconfig_entry(self):
        environ = {"KUBECONFIG": os.pathsep.join(["", "/a/first", "/b/second"])}
        self.assertEqual(kubeconfig.kubeconfig_path(environ), Path("/a/first"))

    def test_path_defaults_to_home(self):
        self.assertEqual(kubeconfig.kubeconfig_path({}), Path.home() / ".kube" / "config")
        self.assertEqual(kubeconfig.kubeconfig_path({"KUBECONFIG": ""}), Path.home() / ".kube" / "config")

    def test_merge_preserves_unrelated_entries(self):
        path = self.dir / "config"
        existing = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {"colors": True},
            "clusters": [{"name": "kind", "cluster": {"server": "https://10.0.0.1:6443"}}],
            "contexts": [{"name": "kind-ctx", "context": {"cluster": "kind", "user": "kind-admin", "namespace": "x"}}],
            "users": [{"name": "kind-admin", "user": {"token": "abc"}}],
            "current-context": "kind-ctx",
        }
        path.write_text(yaml.safe_dump(existing))
        config = kubeconfig.load(path)
        self.assertEqual(self.merge(config), "example-prod")
        kubeconfig.save(path, config)

        written = yaml.safe_load(path.read_text())
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(written["preferences"], {"colors": True})
        self.assertEqual(written["clusters"][0], existing["clusters"][0])
        self.assertEqual(written["contexts"][0], existing["contexts"][0])
        self.assertEqual(written["users"][0], existing["users"][0])
        self.assertEqual(written["current-context"], "example-prod")
        cluster = written["clusters"][1]
        self.assertEqual(cluster["name"], "example")
        self.assertEqual(cluster["cluster"]["server"], "https://proxy.example.com:3080")
        self.assertEqual(base64.b64decode(cluster["cluster"]["certificate-authority-data"]), b"HOST CA PEM")
        self.assertEqual(cluster["cluster"]["tls-server-name"], "kube-teleport-proxy-alpn.teleport.cluster.local")
        self.assertEqual(written["contexts"][1], {"name": "example-prod", "context": {"cluster": "example", "user": "example-prod"}})
        plugin = written["users"][1]["user"]["exec"]
        self.assertEqual(plugin["apiVersion"], "client.authentication.k8s.io/v1beta1")
        self.assertEqual(plugin["command"], "/usr/bin/tsh")
        self.assertEqual(plugin["args"], ["kube", "credentials", "--kube-cluster=prod"])

    def test_merge_twice_updates_in_place(self):
        config = {}
        self.merge(config)
        self.merge(config)
        self.merge(config, "staging")
        self.assertEqual([c["name"] for c in config["clusters"]], ["example"])
        self.assertEqual([c["name"] for c in config["contexts"]], ["example-prod", "example-staging"])
        self.assertEqual(config["current-context"], "example-staging")

    def test_missing_file_is_an_empty_config(self):
        config = kubeconfig.load(self.dir / "nope")
        self.assertEqual(config, {"apiVersion": "v1", "kind": "Config"})

    def test_unmergeable_file_is_refused(self):
        for text in ("[1, 2]", "clusters: {a: b}", "a: [unclosed"):
            path = self.dir / "bad"
            path.write_text(text)
            self.assertRaises(kubeconfig.KubeconfigError, kubeconfig.load, path)

    def test_remove_only_what_tsh_wrote(self):
        config = {
            "clusters": [{"name": "kind", "cluster": {}}],
            "contexts": [{"name": "kind-ctx", "context": {"cluster": "kind", "user": "kind-admin"}}],
            "users": [{"name": "kind-admin", "user": {}}],
        }
        self.merge(config)
        self.merge(config, "staging")
        kubeconfig.remove_teleport_cluster(config, "example")
        self.assertEqual([c["name"] for c in config["clusters"]], ["kind"])
        self.assertEqual([c["name"] for c in config["contexts"]], ["kind-ctx"])
        self.assertEqual([u["name"] for u in config["users"]], ["kind-admin"])
        self.assertEqual(config["current-context"], "")

    def test_remove_keeps_a_foreign_current_context(self):
        config = {"contexts": [{"name": "kind-ctx", "context": {"cluster": "kind", "user": "u"}}]}
        self.merge(config)
        config["current-context"] = "kind-ctx"
        kubeconfig.remove_teleport_cluster(config, "example")
        self.assertEqual(config["current-context"], "kind-ctx")
