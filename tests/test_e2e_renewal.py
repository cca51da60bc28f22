"""Host certificate renewal on real processes: auth+proxy and an agent with
30-second host certificates. The agent's certificate on disk is replaced
before it expires, the reverse tunnel is the one it started with (a watch
through it keeps streaming), and new kubectl and tctl connections work after
every original certificate has expired."""
from __future__ import annotations

import os
import ssl
import stat
import uuid

from cryptography import x509
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import Deployment, coroutine_test

TTL = 30


def read_certificate(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def served_certificate(port: int) -> x509.Certificate:
    """The certificate the proxy presents to a new connection (not verified: only read)."""
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())


class RenewalTests(TestCase):
    timeout = 600

    @coroutine_test
    async def test_host_certificates_renew_without_a_restart_or_a_new_tunnel(self):
        d = Deployment(self, self.mktemp())
        d.auth_settings = f"  host_cert_ttl: {TTL}s\n"
        await d.start()
        await d.login_with_kube_access("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        agent_cert = d.path("agent-data", "kube", "cert.pem")
        original = read_certificate(agent_cert)
        proxy_original = await threads.deferToThread(served_certificate, d.proxy_port)
        watch = d.spawn("watch", ["kubectl", "get", "namespaces", "--watch", "-o", "name"], env=d.env())
        await d.kubectl("get", "namespaces")
        # Past the expiry of the agent's first certificate and of the proxy's one.
        last_expiry = max(original.not_valid_after_utc, proxy_original.not_valid_after_utc).timestamp()
        while reactor.seconds() < last_expiry + 3:
            await deferLater(reactor, 1.0, lambda: None)
        renewed = read_certificate(agent_cert)
        self.assertNotEqual(renewed.serial_number, original.serial_number)
        self.assertEqual(renewed.subject, original.subject)
        self.assertGreater(renewed.not_valid_after_utc, original.not_valid_after_utc)
        self.assertGreater(renewed.not_valid_after_utc.timestamp(), reactor.seconds())
        for name in os.listdir(os.path.dirname(agent_cert)):
            path = os.path.join(os.path.dirname(agent_cert), name)
            if os.path.isfile(path):
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, name)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(agent_cert), "pending.pem")))
        served = await threads.deferToThread(served_certificate, d.proxy_port)
        self.assertGreater(served.not_valid_after_utc, proxy_original.not_valid_after_utc)
        # New connections through proxy and agent, and to Auth, work on the renewed certificates.
        await d.kubectl("get", "namespaces")
        await d.tctl("status")
        # The tunnel is the first one: dialled once, and the watch through it still streams.
        with open(d.agent.log_path) as f:
            self.assertEqual(f.read().count("reverse tunnel up"), 1, d.agent.log_tail())
        self.assertTrue(watch.running, watch.log_tail())
        name = f"renewal-{uuid.uuid4().hex[:8]}"
        await d.plane.apply(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
        for _ in range(100):
            with open(watch.log_path) as f:
                if f"namespace/{name}" in f.read():
                    break
            await deferLater(reactor, 0.2, lambda: None)
        else:
            self.fail(f"the watch opened before renewal saw no new namespace:\n{watch.log_tail()}")
