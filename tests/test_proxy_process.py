"""Real processes: ``twistd -n teleport`` (auth + proxy) answering /webapi/ping,
and a standalone ``twistd -n teleport-proxy`` joining it with a token and CA pin."""
from __future__ import annotations

import json
import os
import socket
import sys

from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py.identityfile import IdentityFile
from tests.support.procs import ManagedProcess, free_port, run

BIN = os.path.dirname(sys.executable)


@implementer(IPolicyForHTTPS)
class _NoVerify:
    """ping needs no trust: the test only checks what the proxy answers."""

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions()


class ProxyProcessTests(TestCase):
    timeout = 180

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.auth_port, self.proxy_port = free_port(), free_port()

    def write_config(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def all_in_one_config(self) -> str:
        return self.write_config(
            "teleport.yaml",
            "version: v3\n"
            f"teleport: {{nodename: allinone, data_dir: {self.dir}/data}}\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_port}', cluster_name: example}}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{self.proxy_port}'}}\n",
        )

    async def start(self, plugin: str, config: str, port: int) -> ManagedProcess:
        proc = ManagedProcess(
            [os.path.join(BIN, "twistd"), "--pidfile=", "-n", plugin, "--config", config],
            os.path.join(self.dir, f"{plugin}-{port}.log"),
            cwd=self.dir,
        )
        proc.start()
        self.addCleanup(proc.stop)
        await proc.wait_for_port(port, timeout=60)
        return proc

    async def ping(self, port: int) -> dict:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await HTTPClient(Agent(reactor, contextFactory=_NoVerify(), pool=pool)).get(
            f"https://127.0.0.1:{port}/webapi/ping"
        )
        self.assertEqual(response.code, 200)
        return json.loads(await readBody(response))

    async def test_all_in_one_and_standalone_proxy(self):
        config = self.all_in_one_config()
        await self.start("teleport", config, self.proxy_port)
        self.assertEqual(
            await self.ping(self.proxy_port),
            {"cluster_name": "example", "proxy_public_addr": f"127.0.0.1:{self.proxy_port}", "second_factor": "off"},
        )

        tctl = os.path.join(BIN, "tctl")
        status = await run([tctl, "--config", config, "status"], timeout=60)
        pin = next(word for word in status.out.split() if word.startswith("sha256:"))
        token = await run([tctl, "--config", config, "tokens", "add", "--type=proxy", "--format=text"], timeout=60)
        self.assertEqual(token.code, 0, token.err)
        secret = token.out.strip()

        second_port = free_port()
        proxy_config = self.write_config(
            "proxy.yaml",
            "version: v3\n"
            "teleport:\n"
            "  nodename: proxy2\n"
            f"  data_dir: {self.dir}/proxy2\n"
            f"  auth_server: 127.0.0.1:{self.auth_port}\n"
            f"  ca_pin: {pin}\n"
            f"  join_params: {{token_name: {secret}}}\n"
            "auth_service: {enabled: false}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{second_port}'}}\n",
        )
        await self.start("teleport-proxy", proxy_config, second_port)
        self.assertEqual((await self.ping(second_port))["cluster_name"], "example")
        self.assertTrue(IdentityFile.exists(os.path.join(self.dir, "proxy2", "proxy")))

    async def test_a_service_that_cannot_start_exits_non_zero(self):
        """systemd's Restart=on-failure restarts only a process that exits non-zero."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", self.proxy_port))
        taken.listen(1)
        config = self.all_in_one_config()
        proc = ManagedProcess(
            [os.path.join(BIN, "twistd"), "--pidfile=", "-n", "teleport", "--config", config],
            os.path.join(self.dir, "taken.log"),
            cwd=self.dir,
        )
        proc.start()
        self.addCleanup(proc.stop)
        self.assertEqual(await proc.exited, 1, proc.log_tail())
        self.assertIn(b"proxy service failed to start", proc.output())
        self.assertIn(b"Address already in use", proc.output())
