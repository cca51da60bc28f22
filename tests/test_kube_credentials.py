"""Loading the agent's API server credentials from real-format kubeconfigs and a service account dir."""
from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teleport_py.kube.credentials import (
    SERVICE_ACCOUNT_DIR_VARIABLE,
    CredentialsError,
    load_in_cluster,
    load_kubeconfig,
    refresh_token_files,
)
from teleport_py.pki import certificate_pem, private_key_pem
from tests.support.pki import AGENT_CERT, AGENT_KEY, KUBE_CA


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CA_PEM = certificate_pem(KUBE_CA.certificate)
KUBECONFIG = f"""\
apiVersion: v1
kind: Config
current-context: prod
clusters:
- name: prod-cluster
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: {b64(CA_PEM)}
- name: dev-cluster
  cluster:
    server: https://dev.example.com
    certificate-authority: ca.crt
    tls-server-name: kubernetes.default
users:
- name: admin
  user:
    client-certificate-data: {b64(certificate_pem(AGENT_CERT))}
    client-key-data: {b64(private_key_pem(AGENT_KEY))}
- name: robot
  user:
    tokenFile: token
contexts:
- name: prod
  context: {{cluster: prod-cluster, user: admin}}
- name: dev
  context: {{cluster: dev-cluster, user: robot, namespace: default}}
"""


class KubeconfigTests(SynchronousTestCase):
    def write(self, text: str, **files: bytes) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        for name, data in files.items():
            if data is None:
                continue
            with open(os.path.join(directory, name.replace("_", ".")), "wb") as f:
                f.write(data)
        path = os.path.join(directory, "config")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_each_context_is_a_cluster(self):
        path = self.write(KUBECONFIG, ca_crt=CA_PEM, token=b"robot-token\n")
        prod, dev = load_kubeconfig(path)
        self.assertEqual((prod.name, prod.host, prod.port), ("prod", "10.0.0.1", 6443))
        self.assertEqual(prod.ca_certificates, (KUBE_CA.certificate,))
        self.assertEqual(prod.client_certificate, AGENT_CERT)
        self.assertEqual(prod.bearer_token(), "")
        self.assertEqual((dev.name, dev.host, dev.port, dev.tls_server_name), ("dev", "dev.example.com", 443,
                                                                              "kubernetes.default"))
        self.assertEqual(dev.bearer_token(), "robot-token")
        self.assertIsNotNone(prod.tls_options())
        self.assertNotIn("robot-token", repr(dev))

    def test_token_file_is_cached_until_refreshed(self):
        path = self.write(KUBECONFIG, ca_crt=CA_PEM, token=b"one")
        dev = load_kubeconfig(path)[1]
        with open(os.path.join(os.path.dirname(path), "token"), "w") as f:
            f.write("two")
        self.assertEqual(dev.bearer_token(), "one")  # not read per request
        self.assertEqual(dev.token_file.read(), "two")

    def test_rsa_client_keys_are_accepted(self):
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        text = KUBECONFIG.replace(b64(private_key_pem(AGENT_KEY)), b64(pem))
        prod = load_kubeconfig(self.write(text, ca_crt=CA_PEM, token=b"t"))[0]
        self.assertIsInstance(prod.client_key, rsa.RSAPrivateKey)

    def assertError(self, text: str, field: str, **files):
        files.setdefault("ca_crt", CA_PEM)
        files.setdefault("token", b"t")
        with self.assertRaises(CredentialsError) as e:
            load_kubeconfig(self.write(text, **files))
        self.assertIn(field, str(e.exception))

    def test_errors_name_the_field(self):
        self.assertError(KUBECONFIG.replace("https://10.0.0.1:6443", "http://10.0.0.1"), "clusters[prod-cluster].cluster.server")
        self.assertError(KUBECONFIG.replace("certificate-authority-data: ", "certificate-authority-data: !!"),
                         "certificate-authority-data")
        self.assertError(KUBECONFIG.replace("    certificate-authority-data:", "    insecure-skip-tls-verify: true\n    x:"),
                         "insecure-skip-tls-verify")
        self.assertError(KUBECONFIG.replace("certificate-authority-data", "nothing"),
                         "certificate-authority(-data)")
        self.assertError(KUBECONFIG.replace("    client-key-data", "    other"), "client-key")
        self.assertError(KUBECONFIG.replace("user: robot, namespace", "user: nobody, namespace"), "context.user")
        self.assertError(KUBECONFIG.replace("cluster: dev-cluster, user", "cluster: gone, user"), "context.cluster")
        self.assertError(KUBECONFIG, "tokenFile", ca_crt=CA_PEM, token=None)
        self.assertError(KUBECONFIG, "certificate-authority", ca_crt=b"not a certificate")
        self.assertError(KUBECONFIG.replace("tokenFile: token", "exec: {command: aws}"), "users[robot].user")
        self.assertError("contexts: []\n", "no context")
        self.assertError("- just a list\n", "not a mapping")
        self.assertError("clusters: [\n", "invalid YAML")

    def test_missing_file(self):
        with self.assertRaises(CredentialsError) as e:
            load_kubeconfig("/nonexistent/kubeconfig")
        self.assertIn("kubeconfig_file", str(e.exception))


class InClusterTests(SynchronousTestCase):
    def test_service_account(self):
        directory = self.mktemp()
        os.makedirs(directory)
        for name, data in (("token", b"sa-token\n"), ("ca.crt", CA_PEM)):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        creds = load_in_cluster("my-cluster", env, directory)
        self.assertEqual((creds.name, creds.host, creds.port), ("my-cluster", "10.96.0.1", 443))
        self.assertEqual(creds.bearer_token(), "sa-token")
        with self.assertRaises(CredentialsError) as e:
            load_in_cluster("my-cluster", {}, directory)
        self.assertIn("KUBERNETES_SERVICE_HOST", str(e.exception))
        with self.assertRaises(CredentialsError):
            load_in_cluster("my-cluster", env, directory + "-missing")

    def test_service_account_directory_from_the_environment(self):
        directory = self.mktemp()
        os.makedirs(directory)
        for name, data in (("token", b"elsewhere\n"), ("ca.crt", CA_PEM)):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
               SERVICE_ACCOUNT_DIR_VARIABLE: directory}
        self.assertEqual(load_in_cluster("c", env).bearer_token(), "elsewhere")


class TokenRotationTests(TestCase):
    """The kubelet rotates the projected token; a refresh (off the reactor
    thread, on the real reactor's pool) picks the new one up, and a failed
    re-read keeps the last token."""

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.write(b"first\n")
        env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        with open(os.path.join(self.directory, "ca.crt"), "wb") as f:
            f.write(CA_PEM)
        self.creds = load_in_cluster("c", env, self.directory)

    def write(self, token: bytes) -> None:
        with open(os.path.join(self.directory, "token"), "wb") as f:
            f.write(token)

    async def _refresh(self):
        await refresh_token_files(reactor, [self.creds])

    def test_refresh_reads_the_rotated_token(self):
        self.write(b"second\n")
        self.assertEqual(self.creds.bearer_token(), "first")
        d = Deferred.fromCoroutine(self._refresh())
        d.addCallback(lambda _: self.assertEqual(self.creds.bearer_token(), "second"))
        return d

    def test_failed_refresh_keeps_the_last_token(self):
        os.remove(os.path.join(self.directory, "token"))
        d = Deferred.fromCoroutine(self._refresh())
        d.addCallback(lambda _: self.assertEqual(self.creds.bearer_token(), "first"))
        d.addCallback(lambda _: self.assertEqual(len(self.flushLoggedErrors()), 0))
        return d
