"""The real ``tsh`` console script against a fake proxy web API (twisted.web over TLS on 127.0.0.1,
tests.support.tsh).

The fake proxy signs with CAs it makes for each test, so these tests see exactly what
tsh sends and stores: the password never goes anywhere but /webapi/login, the
private key never leaves the machine, reissues are counted.
"""

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import gatherResults

from teleport_py.identityfile import IdentityFile
from teleport_py.pki import (
    CertAuthority,
    UserIdentity,
    certificate_pem,
    identity_from_certificate,
    load_certificate_pem,
)
from teleport_py.tsh.profile import Profile
from tests.support.procs import ManagedProcess, require_tool, run
from tests.support.tsh import CLUSTER, TSH, TshTestCase, utc_now


class LoginTests(TshTestCase):
    async def test_login_prints_status_and_stores_private_keys(self):
        result = await self.login("--ttl=2h")
        lines = result.out.splitlines()
        self.assertEqual(lines[0].split(None, 3)[:3], [">", "Profile", "URL:"])
        self.assertTrue(lines[0].endswith("https://" + self.proxy))
        self.assertIn("Logged in as:", result.out)
        self.assertRegex(result.out, r"Logged in as:\s+alice\n")
        self.assertRegex(result.out, r"Cluster:\s+example\n")
        self.assertRegex(result.out, r"Roles:\s+access, kube-access\n")
        self.assertRegex(result.out, r"Kubernetes:\s+enabled\n")
        self.assertRegex(result.out, r"Valid until:\s+.* \[valid for (2h0m0s|1h59m\d+s)\]")

        method, path, body = self.api.requests[-1]
        self.assertEqual((method, path), (b"POST", b"/webapi/login"))
        self.assertEqual(body["ttl"], 7200)
        self.assertNotIn("PRIVATE", json.dumps(body))

        store = self.store()
        profile = store.profile()
        self.assertEqual(profile, Profile(proxy=self.proxy, user="alice", cluster=CLUSTER, insecure=True))
        key_dir = store.key_dir(profile)
        self.assertEqual(stat.S_IMODE(os.stat(key_dir / "key.pem").st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(key_dir).st_mode), 0o700)
        identity = store.identity(profile)
        self.assertEqual(identity.certificate.public_key(), identity.private_key.public_key())
        self.assertEqual(identity.host_cas, (self.api.host_ca.certificate,))

        status = await self.tsh("status")
        self.assertEqual(status.code, 0, status.err)
        self.assertRegex(status.out, r"Logged in as:\s+alice\n")

    async def test_wrong_password_fails_and_stores_nothing(self):
        result = await self.tsh("login", "--proxy=" + self.proxy, "--user=alice", "--insecure", stdin=b"wrong\n")
        self.assertEqual(result.code, 1)
        self.assertIn("ERROR: invalid credentials", result.err)
        self.assertNotIn("wrong", result.err)
        self.assertFalse((self.home / "keys").exists())

    async def test_untrusted_proxy_is_refused_without_insecure(self):
        result = await self.tsh("login", "--proxy=" + self.proxy, "--user=alice", stdin=b"correct horse\n")
        self.assertEqual(result.code, 1)
        self.assertIn("certificate is not trusted", result.err)
        self.assertEqual(self.api.requests, [])
        self.assertFalse((self.home / "keys").exists())

    async def test_after_login_the_host_ca_is_trusted_and_nothing_else(self):
        await self.login()
        store = self.store()
        profile = store.profile()
        store.save_profile(Profile(proxy=profile.proxy, user="alice", cluster=CLUSTER, insecure=False))
        result = await self.tsh("kube", "ls")
        self.assertEqual(result.code, 0, result.err)

        stranger = CertAuthority.generate("host", CLUSTER, utc_now())
        (store.key_dir(profile) / "host_ca.pem").write_bytes(certificate_pem(stranger.certificate))
        result = await self.tsh("kube", "ls")
        self.assertEqual(result.code, 1)
        self.assertIn("certificate is not trusted", result.err)

    async def test_signup_then_login(self):
        result = await self.tsh("signup", "--proxy=" + self.proxy, "--insecure",
                                "https://%s/web/invite/tok3n" % self.proxy, stdin=b"new password\n")
        self.assertEqual(result.code, 0, result.err)
        self.assertIn('Password set for user "bob"', result.out)
        self.assertEqual(self.api.passwords["bob"], "new password")
        result = await self.tsh("login", "--proxy=" + self.proxy, "--user=bob", "--insecure", stdin=b"new password\n")
        self.assertEqual(result.code, 0, result.err)

    async def test_commands_without_login_say_what_to_do(self):
        for args in (["status"], ["kube", "ls"], ["kube", "credentials", "--kube-cluster=dev"]):
            result = await self.tsh(*args)
            self.assertEqual(result.code, 1, args)
            self.assertIn("tsh login", result.err)


class KubeTests(TshTestCase):
    async def test_kube_ls_table(self):
        await self.login()
        result = await self.tsh("kube", "ls")
        self.assertEqual(result.code, 0, result.err)
        lines = result.out.splitlines()
        self.assertEqual(lines[0].split(), ["Kube", "Cluster", "Name", "Labels", "Selected"])
        self.assertEqual(lines[2].split(), ["dev"])
        self.assertEqual(lines[3].split(), ["my-cluster", "env=prod,region=eu"])

    async def test_kube_login_writes_kubeconfig_and_exec_plugin_works(self):
        self.kubeconfig.parent.mkdir()
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kind",
            "clusters": [{"name": "kind", "cluster": {"server": "https://10.1.1.1"}}],
            "contexts": [{"name": "kind", "context": {"cluster": "kind", "user": "kind"}}],
            "users": [{"name": "kind", "user": {"token": "t"}}],
        }))
        await self.login()
        result = await self.tsh("kube", "login", "my-cluster")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(
            result.out.strip(),
            "Logged into Kubernetes cluster \"my-cluster\". Try 'kubectl version' to test the connection.",
        )
        self.assertFalse((self.root / "other-kubeconfig").exists())
        self.assertEqual(stat.S_IMODE(os.stat(self.kubeconfig).st_mode), 0o600)
        config = yaml.safe_load(self.kubeconfig.read_text())
        self.assertEqual(config["current-context"], "example-my-cluster")
        self.assertEqual([c["name"] for c in config["contexts"]], ["kind", "example-my-cluster"])
        cluster = config["clusters"][1]["cluster"]
        self.assertEqual(cluster["server"], "https://" + self.proxy)
        self.assertEqual(cluster["tls-server-name"], "kube-teleport-proxy-alpn.teleport.cluster.local")
        plugin = config["users"][1]["user"]["exec"]
        self.assertEqual(plugin["command"], TSH)
        self.assertEqual(plugin["args"], ["kube", "credentials", "--proxy=" + self.proxy,
                                          "--teleport-cluster=example", "--kube-cluster=my-cluster"])

        ls = await self.tsh("kube", "ls")
        self.assertEqual(ls.out.splitlines()[3].split(), ["my-cluster", "env=prod,region=eu", "*"])

        # What kubectl does: run the plugin exactly as written, read the ExecCredential.
        credential = await run([plugin["command"], *plugin["args"]], env=self.env)
        self.assertEqual(credential.code, 0, credential.err)
        document = json.loads(credential.out)
        self.assertEqual(document["apiVersion"], "client.authentication.k8s.io/v1beta1")
        self.assertEqual(document["kind"], "ExecCredential")
        cert = load_certificate_pem(document["status"]["clientCertificateData"].encode())
        identity = identity_from_certificate(cert, user_ca=self.api.user_ca.certificate, host_ca=None)
        self.assertEqual(identity.kube_cluster, "my-cluster")
        key = serialization.load_pem_private_key(document["status"]["clientKeyData"].encode(), None)
        self.assertEqual(key.public_key(), cert.public_key())
        self.assertTrue(document["status"]["expirationTimestamp"].endswith("Z"))
        self.assertEqual(self.api.reissues, 1, "kube login's certificate is reused")

        logout = await self.tsh("logout")
        self.assertEqual(logout.code, 0, logout.err)
        config = yaml.safe_load(self.kubeconfig.read_text())
        self.assertEqual([c["name"] for c in config["contexts"]], ["kind"])
        self.assertEqual([c["name"] for c in config["clusters"]], ["kind"])
        self.assertFalse(self.store().key_dir(Profile(proxy=self.proxy, user="alice", cluster=CLUSTER)).exists())

    async def test_kube_login_and_reissues_write_the_credential_cache(self):
        await self.login()
        self.assertEqual((await self.tsh("kube", "login", "my-cluster")).code, 0)
        store = self.store()
        profile = store.profile()
        cache = store.key_dir(profile) / "kube" / "my-cluster" / "credential.json"
        self.assertEqual(stat.S_IMODE(os.stat(cache).st_mode), 0o600)
        plugin = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]["exec"]
        credential = await run([plugin["command"], *plugin["args"]], env=self.env)
        self.assertEqual(credential.code, 0, credential.err)
        self.assertEqual(json.loads(credential.out), json.loads(cache.read_bytes())["exec_credential"])
        self.assertEqual(json.loads(credential.out)["status"]["clientCertificateData"],
                         certificate_pem(store.kube_certificate(profile, "my-cluster")).decode())
        self.assertEqual(self.api.reissues, 1)

        # A certificate about to expire: the cache no longer answers, the reissue rewrites it.
        identity = store.identity(profile)
        now = utc_now()
        expiring = self.api.user_ca.issue_user_certificate(
            identity.private_key.public_key(),
            UserIdentity("alice", ["access"], kube_cluster="my-cluster", teleport_cluster=CLUSTER,
                         expires=now + timedelta(seconds=30)), now - timedelta(minutes=1))
        store.save_kube_certificate(profile, "my-cluster", expiring)
        self.assertTrue(store.save_credential_cache(profile, identity, "my-cluster", expiring))
        credential = await run([plugin["command"], *plugin["args"]], env=self.env)
        self.assertEqual(credential.code, 0, credential.err)
        self.assertEqual(self.api.reissues, 2)
        reissued = json.loads(credential.out)
        self.assertNotEqual(reissued["status"]["clientCertificateData"], certificate_pem(expiring).decode())
        self.assertEqual(reissued, json.loads(cache.read_bytes())["exec_credential"])

        self.assertEqual((await self.tsh("logout")).code, 0)
        self.assertFalse(cache.exists())

    async def test_kube_login_unknown_cluster(self):
        await self.login()
        result = await self.tsh("kube", "login", "nope")
        self.assertEqual(result.code, 1)
        self.assertIn('kubernetes cluster "nope" not found', result.err)
        self.assertFalse(self.kubeconfig.exists())
        self.assertEqual(self.api.reissues, 0)

    async def test_parallel_credentials_reissue_once(self):
        await self.login()
        results = await gatherResults([
            self.tsh("kube", "credentials", "--kube-cluster=my-cluster", "--teleport-cluster=example",
                     "--proxy=" + self.proxy)
            for _ in range(20)
        ])
        for result in results:
            self.assertEqual(result.code, 0, result.err)
        certificates = {json.loads(r.out)["status"]["clientCertificateData"] for r in results}
        self.assertEqual(len(certificates), 1)
        self.assertEqual(self.api.reissues, 1)

    async def test_expired_cluster_certificate_is_reissued(self):
        await self.login()
        store = self.store()
        profile = store.profile()
        identity = store.identity(profile)
        past = utc_now() - timedelta(hours=2)
        stale = self.api.user_ca.issue_user_certificate(
            identity.private_key.public_key(),
            UserIdentity("alice", ["access"], kube_cluster="dev", teleport_cluster=CLUSTER,
                         expires=utc_now() + timedelta(seconds=30)),
            past,
        )
        store.save_kube_certificate(profile, "dev", stale)
        result = await self.tsh("kube", "credentials", "--kube-cluster=dev")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(self.api.reissues, 1)
        self.assertNotEqual(json.loads(result.out)["status"]["clientCertificateData"], certificate_pem(stale).decode())

    async def test_expired_login_asks_to_log_in_again(self):
        await self.login()
        store = self.store()
        profile = store.profile()
        identity = store.identity(profile)
        past = utc_now() - timedelta(hours=3)
        expired = self.api.user_ca.issue_user_certificate(
            identity.private_key.public_key(),
            UserIdentity("alice", ["access"], teleport_cluster=CLUSTER, expires=past + timedelta(hours=1)),
            past,
        )
        IdentityFile(expired, identity.private_key, identity.user_cas, identity.host_cas).save(
            os.fspath(store.key_dir(profile))
        )
        result = await self.tsh("kube", "credentials", "--kube-cluster=dev")
        self.assertEqual(result.code, 1)
        self.assertIn("expired", result.err)
        self.assertIn("tsh login", result.err)
        self.assertEqual(result.out, "")
        self.assertEqual(self.api.reissues, 0)


class RequestDropTests(TshTestCase):
    def login_cert(self):
        store = self.store()
        identity = store.identity(store.profile())
        return identity_from_certificate(identity.certificate, user_ca=self.api.user_ca.certificate, host_ca=None)

    def kube_cert(self, kube_cluster="my-cluster"):
        store = self.store()
        return identity_from_certificate(store.kube_certificate(store.profile(), kube_cluster),
                                         user_ca=self.api.user_ca.certificate, host_ca=None)

    async def credentials(self):
        result = await self.tsh("kube", "credentials", "--kube-cluster=my-cluster")
        self.assertEqual(result.code, 0, result.err)
        return result

    async def test_drop_one_request_then_all(self):
        await self.login("--request-id=req-1", "--request-id=req-2")
        self.assertEqual(self.login_cert().access_requests, ("req-1", "req-2"))
        await self.credentials()
        self.assertEqual(self.kube_cert().access_requests, ("req-1", "req-2"))
        key = self.store().identity(self.store().profile()).private_key
        cache = self.store().key_dir(self.store().profile()) / "kube" / "my-cluster" / "credential.json"
        self.assertTrue(cache.exists())

        seen = len(self.api.requests)
        dropped = await self.tsh("request", "drop", "req-1")
        self.assertEqual(dropped.code, 0, dropped.err)
        self.assertIn("Dropped access request req-1.", dropped.out)
        self.assertRegex(dropped.out, r"Active requests: +req-2\n")
        # No password asked (stdin is empty), same key, the elevated kube
        # certificate and its cached credential are gone.
        self.assertFalse(any(path == b"/webapi/login" for _, path, _ in self.api.requests[seen:]))
        self.assertEqual(self.login_cert().access_requests, ("req-2",))
        self.assertNotIn("role-req-1", self.login_cert().roles)
        self.assertEqual(self.store().identity(self.store().profile()).private_key.private_numbers(),
                         key.private_numbers())
        self.assertFalse(cache.exists())
        self.assertIsNone(self.store().kube_certificate(self.store().profile(), "my-cluster"))
        await self.credentials()
        self.assertEqual(self.kube_cert().access_requests, ("req-2",))

        status = await self.tsh("status")
        self.assertRegex(status.out, r"Active requests: +req-2\n")

        dropped = await self.tsh("request", "drop")
        self.assertEqual(dropped.code, 0, dropped.err)
        self.assertNotIn("Active requests", dropped.out)
        self.assertEqual(self.login_cert().access_requests, ())
        self.assertEqual(self.login_cert().roles, ("access", "kube-access"))
        again = await self.tsh("request", "drop", "*")
        self.assertEqual(again.code, 0, again.err)
        self.assertIn("No access requests to drop", again.out)

    async def test_unknown_request_is_named_and_nothing_changes(self):
        await self.login("--request-id=req-1")
        before = self.api.reissues
        result = await self.tsh("request", "drop", "req-1", "nope")
        self.assertEqual(result.code, 1)
        self.assertEqual(result.err.splitlines(), [
            "ERROR: access request nope is not in your current certificate (active requests: req-1); "
            "'tsh status' lists them"])
        self.assertEqual(self.api.reissues, before)
        self.assertEqual(self.login_cert().access_requests, ("req-1",))

    async def test_a_kube_certificate_of_the_dropped_elevation_is_not_reused(self):
        # A 'tsh kube credentials' that read the elevated login before the drop
        # may store its kube certificate after it (same key): it must not answer.
        await self.login("--request-id=req-1")
        store = self.store()
        profile = store.profile()
        identity = store.identity(profile)
        self.assertEqual((await self.tsh("request", "drop")).code, 0)
        now = utc_now()
        stale = self.api.user_ca.issue_user_certificate(
            identity.private_key.public_key(),
            UserIdentity("alice", ["access", "kube-access", "role-req-1"], kube_cluster="my-cluster",
                         access_requests=("req-1",), teleport_cluster=CLUSTER, expires=now + timedelta(hours=1)),
            now - timedelta(minutes=1))
        store.save_kube_certificate(profile, "my-cluster", stale)
        before = self.api.reissues
        result = await self.credentials()
        self.assertEqual(self.api.reissues, before + 1)
        self.assertNotEqual(json.loads(result.out)["status"]["clientCertificateData"], certificate_pem(stale).decode())
        self.assertEqual(self.kube_cert().access_requests, ())


class ProxyKubeTests(TshTestCase):
    async def test_kubectl_through_the_local_proxy(self):
        kubectl = require_tool("kubectl")
        await self.login()
        self.assertEqual((await self.tsh("kube", "login", "my-cluster")).code, 0)
        process = ManagedProcess([TSH, "proxy", "kube"], self.root / "proxy-kube.log", env=self.env).start()
        self.addCleanup(process.stop)
        match = await process.wait_for_output(r"export KUBECONFIG=(\S+)", timeout=30)
        path = match.group(1).decode()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        config = yaml.safe_load(Path(path).read_text())
        self.assertEqual(config["current-context"], "example-my-cluster")
        self.assertEqual(config["clusters"][0]["cluster"]["tls-server-name"], "6d792d636c7573746572.kube.localhost")

        # The fake proxy answers its web API on the kube name too, which is enough to see the relay.
        result = await run([kubectl, "--kubeconfig", path, "get", "--raw", "/webapi/ping"], env=self.env)
        self.assertEqual(result.code, 0, result.err + process.log_tail())
        self.assertEqual(json.loads(result.out)["cluster_name"], CLUSTER)
        # tsh login pinged too, without a certificate (is an OTP code wanted?).
        self.assertEqual([c.kube_cluster for c in self.api.ping_callers if c is not None], ["my-cluster"])
