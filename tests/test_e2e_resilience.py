"""Resilience of the kubectl path, end to end: restarts, crashes and
certificates the proxy must refuse, on real processes (see tests/e2e.py)."""
from __future__ import annotations

import datetime
import glob
import os
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import Deployment, coroutine_test
from tests.support.kubeenv import kubectl_binaries

KUBE_SNI = "kube-teleport-proxy-alpn.teleport.cluster.local"


def result_within(deferred: Deferred, seconds: float) -> Deferred:
    """``deferred``'s result, or None if it has not fired within ``seconds``."""
    outcome = Deferred()
    timer = reactor.callLater(seconds, outcome.callback, None)

    def fired(result):
        if timer.active():
            timer.cancel()
            outcome.callback(result)

    deferred.addBoth(fired)
    return outcome


def kube_request(port: int, host_ca: str, path: str, cert: str | None = None, key: str | None = None) -> str:
    """One GET on the proxy's kube endpoint, as kubectl would send it (SNI,
    ALPN http/1.1, optional client certificate): the HTTP status line, or
    ``refused: <reason>`` if TLS failed. Blocking: run it in a thread."""
    context = ssl.create_default_context(cafile=host_ca)
    context.set_alpn_protocols(["http/1.1"])
    if cert:
        context.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname=KUBE_SNI) as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {KUBE_SNI}\r\nConnection: close\r\n\r\n".encode())
                head = tls.recv(4096)
    except (ssl.SSLError, OSError) as error:
        return f"refused: {error}"
    if not head:
        return "refused: connection closed without a response"
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def open_watch(port: int, host_ca: str, cert: str, key: str, path: str) -> ssl.SSLSocket:
    """A watch through the proxy, its response headers read. Blocking."""
    context = ssl.create_default_context(cafile=host_ca)
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname=KUBE_SNI)
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {KUBE_SNI}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError(f"watch closed before its headers: {head!r}")
        head += chunk
    return tls


def read_to_end(tls: ssl.SSLSocket) -> tuple[bytes, str]:
    """Everything until the connection ends, and how it ended. Blocking."""
    body = b""
    try:
        while chunk := tls.recv(65536):
            body += chunk
        ending = "closed"
    except socket.timeout:
        ending = "still open after 60 s"
    except (ssl.SSLError, OSError) as error:
        ending = f"error: {error}"
    finally:
        tls.close()
    return body, ending


def forge(genuine_pem: bytes, directory: str) -> tuple[str, str]:
    """The genuine certificate's exact subject, issuer name and extensions,
    signed by a CA we made up: only the signature tells it apart."""
    genuine = x509.load_pem_x509_certificate(genuine_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    for extension in genuine.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    forged = builder.sign(other_ca_key, hashes.SHA256())
    cert_path, key_path = os.path.join(directory, "forged.pem"), os.path.join(directory, "forged-key.pem")
    with open(cert_path, "wb") as f:
        f.write(forged.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


class ResilienceTests(TestCase):
    timeout = 600

    async def deployment(self) -> Deployment:
        d = await Deployment(self, self.mktemp()).start()
        await d.login_with_kube_access("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        await d.kubectl("get", "pods")
        return d

    async def works_within(self, d: Deployment, seconds: float, what: str) -> None:
        """``kubectl get pods`` succeeds within ``seconds`` (the spec's bound)."""
        deadline = reactor.seconds() + seconds
        while True:
            result = await d.kubectl("get", "pods", "--request-timeout=5s", expect=None)
            if result.code == 0:
                return
            if reactor.seconds() > deadline:
                self.fail(f"kubectl still failing {seconds} s after {what}:\n{result.err}\nagent log:\n{d.agent.log_tail()}")
            await deferLater(reactor, 0.2, lambda: None)

    @coroutine_test
    async def test_agent_restart_reuses_its_identity(self):
        d = await self.deployment()
        # The join token is gone: the agent can only come back with the identity in its data_dir.
        token = open(d.agent_config).read().split("token_name: ")[1].split("}")[0]
        await d.tctl("tokens", "rm", token)
        self.assertNotIn(token, (await d.tctl("tokens", "ls")).out)
        await d.agent.stop()
        await d.start_agent()
        await self.works_within(d, 10, "the agent restarted")

    @coroutine_test
    async def test_auth_and_proxy_restart(self):
        d = await self.deployment()
        await d.main.stop()
        await d.start_main()
        await self.works_within(d, 10, "auth+proxy came back")

    @coroutine_test
    async def test_watch_ends_when_the_agent_dies(self):
        """kubectl stops, and the HTTP response ends in error: no terminating chunk.

        kubectl 1.20's ``get -w`` exits 0 whenever its watch channel closes,
        whatever the cause, so its exit code cannot tell an error from a
        clean end; a raw watch through the same proxy shows which it was.
        """
        d = await self.deployment()
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        await d.plane.kubectl("run", "watched-pod", "--image=busybox", "--restart=Never", "-n", "default")
        watch = d.spawn("watch", [kubectl_binaries()[0], "get", "pods", "-n", "default", "-w"], env=d.env())
        await watch.wait_for_output(r"watched-pod", timeout=60)
        raw = await threads.deferToThread(
            open_watch, d.proxy_port, os.path.join(keys, "host_ca.pem"),
            os.path.join(keys, "kube", "my-cluster", "cert.pem"), os.path.join(keys, "key.pem"),
            "/api/v1/namespaces/default/pods?watch=1",
        )
        await d.agent.kill9()
        # Generous: a hang would take kubectl's own timeouts (minutes) or forever.
        code = await result_within(watch.exited, 60)
        self.assertIsNot(code, None, f"kubectl -w still running after the agent died:\n{watch.log_tail()}")
        body, ending = await threads.deferToThread(read_to_end, raw)
        self.assertNotEqual(ending, "still open after 60 s")
        self.assertFalse(body.endswith(b"0\r\n\r\n"), f"the watch ended like a complete response ({ending}): {body[-200:]!r}")

    @coroutine_test
    async def test_kube_endpoint_refuses_bad_certificates_in_the_handshake(self):
        d = await self.deployment()
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        host_ca = os.path.join(keys, "host_ca.pem")
        genuine = os.path.join(keys, "kube", "my-cluster", "cert.pem")
        user_key = os.path.join(keys, "key.pem")
        forged = forge(open(genuine, "rb").read(), d.dir)

        # A certificate that expires: log in for 20 s, get the kube cert, wait.
        expiring_home = d.path("expiring")
        env = dict(d.env(), TELEPORT_HOME=expiring_home)
        await d.tsh("login", f"--proxy={d.proxy}", "--user=alice", "--insecure", "--ttl=20s", stdin=b"correct horse battery\n", env=env)
        await d.tsh("kube", "credentials", f"--proxy={d.proxy}", "--teleport-cluster=example", "--kube-cluster=my-cluster", env=env)
        expiring_keys = glob.glob(os.path.join(expiring_home, "keys", "*", "alice"))[0]
        expired = (os.path.join(expiring_keys, "kube", "my-cluster", "cert.pem"), os.path.join(expiring_keys, "key.pem"))
        not_after = x509.load_pem_x509_certificate(open(expired[0], "rb").read()).not_valid_after_utc
        wait = (not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds() + 2
        self.assertLess(wait, 30, "tsh login --ttl=20s must give a short-lived certificate")
        await deferLater(reactor, max(wait, 0), lambda: None)

        refusals_before = d.main.output().count(b"TLS handshake refused")
        attempts = {
            "no-certificate": (None, None),
            "expired": expired,
            "other-ca": forged,
        }
        for name, (cert, key) in attempts.items():
            answer = await threads.deferToThread(
                kube_request, d.proxy_port, host_ca, f"/api/v1/namespaces/refused-{name}", cert, key
            )
            self.assertTrue(answer.startswith("refused"), f"{name}: {answer}")
        # The proxy itself refused each one in the handshake (not an agent, not the API server).
        await d.main.wait_for(lambda: d.main.output().count(b"TLS handshake refused") >= refusals_before + 3, timeout=30)

        # The control: the same client with the genuine certificate gets through,
        # and its audit event proves the refused ones would have shown up before it.
        answer = await threads.deferToThread(
            kube_request, d.proxy_port, host_ca, "/api/v1/namespaces/accepted-marker", genuine, user_key
        )
        self.assertTrue(answer.startswith("HTTP/1.1 "), answer)
        deadline = reactor.seconds() + 60
        while True:
            paths = [e.get("request_path", "") for e in await d.events("kube.request")]
            if any("accepted-marker" in p for p in paths) or reactor.seconds() > deadline:
                break
            await deferLater(reactor, 1, lambda: None)
        self.assertTrue(any("accepted-marker" in p for p in paths), paths)
        self.assertFalse([p for p in paths if "refused-" in p])
        proxy_log = d.main.output().decode("utf-8", "replace")
        self.assertNotIn("BEGIN", proxy_log, "no key or certificate material in the proxy log")

