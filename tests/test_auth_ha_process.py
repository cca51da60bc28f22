"""Two ``twistd -n teleport-auth`` processes on one real etcd (TLS with
client certificates), started at the same moment: they end up with one CA;
a user invited through one signs up through the other; proxies joined with a
token from one talk to the other; a login through either proxy works, a
lockout earned through both holds through both, and a proxy (or tctl) given
both (``teleport.auth_servers``) keeps working when the first is killed."""
from __future__ import annotations

import json
import os
import re
import sys

from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.pki import generate_private_key
from tests.support.etcd import shared_etcd, unique_prefix
from tests.support.procs import ManagedProcess, free_port, run

BIN = os.path.dirname(sys.executable)
PASSWORD = "correct horse battery"


@implementer(IPolicyForHTTPS)
class _NoVerify:
    """The test plays a browser that checks nothing; what matters is what Auth answers."""

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions()


def _public_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    key = generate_private_key().public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class AuthServersOnEtcdTests(TestCase):
    timeout = 240

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def auth_config(self, name: str, port: int, etcd, prefix: str) -> str:
        return self.write(f"{name}.yaml", (
            "version: v3\n"
            "teleport:\n"
            f"  nodename: {name}\n"
            f"  data_dir: {self.dir}/{name}\n"
            "  storage:\n"
            "    type: etcd\n"
            f"    peers: [{etcd.url}]\n"
            f"    prefix: {prefix}\n"
            f"    tls_cert_file: {etcd.files['client.pem']}\n"
            f"    tls_key_file: {etcd.files['client-key.pem']}\n"
            f"    tls_ca_file: {etcd.files['ca.pem']}\n"
            f"    audit_sessions_uri: file://{self.dir}/shared-recordings\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{port}', cluster_name: example}}\n"
            "proxy_service: {enabled: false}\n"
        ))

    async def start(self, plugin: str, config: str, port: int, name: str) -> ManagedProcess:
        proc = ManagedProcess([os.path.join(BIN, "twistd"), "--pidfile=", "-n", plugin, "--config", config],
                              os.path.join(self.dir, f"{name}.log"), cwd=self.dir)
        proc.start()
        self.addCleanup(proc.stop)
        await proc.wait_for_port(port, timeout=90)
        return proc

    async def tctl(self, config: str, *args, stdin=b""):
        result = await run([os.path.join(BIN, "tctl"), "--config", config, *args], stdin=stdin, timeout=60)
        self.assertEqual(result.code, 0, f"tctl {' '.join(args)}: {result.out}\n{result.err}")
        return result.out

    async def proxy(self, name: str, auth_ports: list[int], token_from: str, pin: str) -> int:
        token = (await self.tctl(token_from, "tokens", "add", "--type=proxy", "--format=text")).strip()
        port = free_port()
        config = self.write(f"{name}.yaml", (
            "version: v3\n"
            "teleport:\n"
            f"  nodename: {name}\n"
            f"  data_dir: {self.dir}/{name}\n"
            f"  auth_servers: [{', '.join(f'127.0.0.1:{port}' for port in auth_ports)}]\n"
            f"  ca_pin: {pin}\n"
            f"  join_params: {{token_name: {token}}}\n"
            "auth_service: {enabled: false}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{port}'}}\n"
        ))
        await self.start("teleport-proxy", config, port, name)
        return port

    async def login(self, proxy_port: int, user: str, password: str) -> tuple[int, dict]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await HTTPClient(Agent(reactor, contextFactory=_NoVerify(), pool=pool)).post(
            f"https://127.0.0.1:{proxy_port}/webapi/login",
            json={"user": user, "password": password, "public_key": _public_pem()},
        )
        return response.code, json.loads(await readBody(response))

    async def test_two_auth_servers_share_one_cluster(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        etcd = await shared_etcd(tls=True)
        prefix = unique_prefix("cluster").rstrip("/")
        ports = free_port(), free_port()
        configs = [self.auth_config(f"auth{i}", port, etcd, prefix) for i, port in enumerate(ports)]
        # Both at once: the CAs are created by whichever writes first.
        auths = await gatherResults([ensureDeferred(self.start("teleport-auth", config, port, f"auth{i}"))
                                     for i, (config, port) in enumerate(zip(configs, ports))])

        pins = [re.search(r"sha256:[0-9a-f]{64}", await self.tctl(config, "status")).group(0) for config in configs]
        self.assertEqual(pins[0], pins[1])

        invite = await self.tctl(configs[0], "users", "add", "alice", "--roles=access")
        token = re.search(r"https://\S+/web/invite/([0-9a-f]+)", invite).group(1)
        await self.tctl(configs[1], "users", "signup", token, stdin=PASSWORD.encode() + b"\n")
        invite = await self.tctl(configs[1], "users", "add", "bob", "--roles=access")
        token = re.search(r"https://\S+/web/invite/([0-9a-f]+)", invite).group(1)
        await self.tctl(configs[0], "users", "signup", token, stdin=PASSWORD.encode() + b"\n")

        # Each proxy joins with a token made through the other auth server.
        through_second = await self.proxy("proxy-a", [ports[1]], configs[0], pins[0])
        through_first = await self.proxy("proxy-b", [ports[0]], configs[1], pins[0])
        for proxy_port in (through_second, through_first):
            code, answer = await self.login(proxy_port, "alice", PASSWORD)
            self.assertEqual(code, 200, answer)
            self.assertIn("BEGIN CERTIFICATE", json.dumps(answer))

        # Five wrong passwords, split over both auth servers, lock alice on both.
        for attempt in range(5):
            code, _ = await self.login((through_second, through_first)[attempt % 2], "alice", "wrong password!!")
            self.assertEqual(code, 403)
        for proxy_port in (through_second, through_first):
            code, answer = await self.login(proxy_port, "alice", PASSWORD)
            self.assertEqual(code, 429, answer)

        # A proxy that knows both auth servers keeps working when the first dies.
        through_either = await self.proxy("proxy-c", list(ports), configs[1], pins[0])
        code, answer = await self.login(through_either, "bob", PASSWORD)
        self.assertEqual(code, 200, answer)
        await auths[0].kill9()
        code, answer = await self.login(through_either, "bob", PASSWORD)
        self.assertEqual(code, 200, answer)

        # tctl given both (the first dead) answers through the second.
        either = self.write("tctl-either.yaml", (
            "version: v3\n"
            f"teleport: {{data_dir: {self.dir}/auth1, auth_servers: ['127.0.0.1:{ports[0]}', '127.0.0.1:{ports[1]}']}}\n"
            "auth_service: {enabled: false}\n"
            "proxy_service: {enabled: false}\n"
        ))
        self.assertIn("sha256:", await self.tctl(either, "status"))
