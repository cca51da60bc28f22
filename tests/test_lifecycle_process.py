"""Real twistd processes that cannot start: each exits 1 with one line naming
the cause and the setting to fix, and no traceback. Also the README's two
roles run from one directory without a pidfile clash, and SIGTERM to an idle
service exits 0 at once (nothing in flight to wait for)."""
from __future__ import annotations

import os
from datetime import datetime, timezone
import re
import socket
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from teleport_py.pki import CertAuthority, certificate_pem, private_key_pem
from tests.support.pki import authority, public_web_pair
from tests.support.procs import ManagedProcess, free_port, run

BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    return os.path.join(BIN, name)


class StartFailureTests(TestCase):
    timeout = 300

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.auth_port, self.proxy_port = free_port(), free_port()

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    async def start_main(self, proxy_extra: str = "") -> ManagedProcess:
        """auth+proxy, started from self.dir without --pidfile (as the README
        does); ``proxy_extra`` is more of proxy_service (flow-style YAML)."""
        config = self.write(
            "teleport.yaml",
            "version: v3\n"
            f"teleport: {{nodename: main, data_dir: {self.dir}/data}}\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_port}', cluster_name: example}}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{self.proxy_port}'{proxy_extra}}}\n",
        )
        main = ManagedProcess([tool("twistd"), "-n", "teleport", "--config", config],
                              os.path.join(self.dir, "main.log"), cwd=self.dir)
        main.start()
        self.addCleanup(main.stop)
        await main.wait_for_port(self.proxy_port, timeout=90)
        self.main_config = config
        return main

    async def tctl(self, *args) -> str:
        result = await run([tool("tctl"), "--config", self.main_config, *args], timeout=60)
        self.assertEqual(result.code, 0, result.err)
        return result.out

    def kubeconfig(self, name: str = "kubeconfig", insecure: bool = False) -> str:
        """A well-formed kubeconfig for an API server nobody runs (the agent
        need not reach it to start)."""
        ca = CertAuthority.generate("host", "fake-apiserver", datetime.now(timezone.utc))
        ca_path = self.write("apiserver-ca.pem", certificate_pem(ca.certificate).decode())
        trust = "insecure-skip-tls-verify: true" if insecure else f"certificate-authority: {ca_path}"
        return self.write(name, (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1', {trust}}}\n"
            "users:\n- name: u\n  user: {token: abc}\n"
            "contexts:\n- name: my-cluster\n  context: {cluster: c, user: u}\n"
            "current-context: my-cluster\n"
        ))

    def agent_config(self, name: str, *, token: str = "", pin: str | None = None, kubeconfig: str) -> str:
        pin_line = f"  ca_pin: {pin}\n" if pin else ""
        return self.write(name, (
            "version: v3\n"
            "teleport:\n"
            f"  nodename: {name}\n"
            f"  data_dir: {self.dir}/{name}-data\n"
            f"  proxy_server: 127.0.0.1:{self.proxy_port}\n"
            f"  join_params: {{token_name: '{token}'}}\n"
            f"{pin_line}"
            "  shutdown_timeout: 5s\n"
            "auth_service: {enabled: false}\nproxy_service: {enabled: false}\n"
            f"kubernetes_service: {{enabled: true, kubeconfig_file: {kubeconfig}}}\n"
        ))

    async def refuses(self, plugin: str, config: str, *expected: str) -> str:
        """twistd exits 1; its output has exactly one error line, containing
        every ``expected`` string, and no traceback."""
        result = await run([tool("twistd"), "-n", plugin, "--config", config], timeout=120, cwd=self.dir)
        output = result.out + result.err
        self.assertEqual(result.code, 1, output)
        self.assertNotIn("Traceback", output)
        errors = [line for line in output.splitlines()
                  if "failed to start" in line or line.startswith("ERROR:")]
        self.assertEqual(len(errors), 1, output)
        for text in expected:
            self.assertIn(text, errors[0])
        return errors[0]

    async def test_each_start_failure_is_one_line_and_exit_1(self):
        await self.start_main()
        pin = re.search(r"CA pin:\s+(sha256:[0-9a-f]{64})", await self.tctl("status")).group(1)
        token = (await self.tctl("tokens", "add", "--type=kube", "--format=text")).strip()
        kubeconfig = self.kubeconfig()

        # Invalid config: a misspelled key (refused before any service exists).
        bad = self.write("bad.yaml", "version: v3\nauth_service:\n  listen_adr: 127.0.0.1:1\n")
        await self.refuses("teleport-auth", bad, "auth_service.listen_adr", "did you mean listen_addr")
        # Port in use: the auth port of the running main.
        taken = self.write("taken.yaml", (
            f"version: v3\nteleport: {{data_dir: {self.dir}/taken-data}}\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{self.auth_port}'}}\n"))
        await self.refuses("teleport-auth", taken, f"auth_service.listen_addr 127.0.0.1:{self.auth_port}", "in use")
        # Missing and invalid kubeconfig: before the reactor runs (this used to hang forever).
        missing = self.agent_config("missing", token=token, pin=pin, kubeconfig=f"{self.dir}/nope")
        await self.refuses("teleport-kube", missing, "kubernetes_service.kubeconfig_file", "nope")
        insecure = self.agent_config("insecure", token=token, pin=pin,
                                     kubeconfig=self.kubeconfig("insecure-kubeconfig", insecure=True))
        await self.refuses("teleport-kube", insecure, "kubernetes_service.kubeconfig_file", "insecure-skip-tls-verify")
        # No pin and a proxy certificate the system does not trust (the
        # cluster's own), a wrong pin: never trusted on first use.
        await self.refuses("teleport-kube", self.agent_config("nopin", token=token, kubeconfig=kubeconfig),
                           "no teleport.ca_pin", "certificate", "refusing to join")
        wrong = "sha256:" + "0" * 64
        await self.refuses("teleport-kube", self.agent_config("wrongpin", token=token, pin=wrong, kubeconfig=kubeconfig),
                           "matches no teleport.ca_pin")
        # Join refused: a token Auth never issued.
        await self.refuses("teleport-kube", self.agent_config("badtoken", token="f" * 32, pin=pin, kubeconfig=kubeconfig),
                           "refused to join", "teleport.join_params.token_name")

        # The README's step 3: an agent started from the same directory as
        # auth+proxy, neither given --pidfile: each keeps its pidfile in its data_dir.
        good = self.agent_config("agent", token=token, pin=pin, kubeconfig=kubeconfig)
        agent = ManagedProcess([tool("twistd"), "-n", "teleport-kube", "--config", good],
                               os.path.join(self.dir, "agent.log"), cwd=self.dir)
        agent.start()
        self.addCleanup(agent.stop)
        await agent.wait_for_output(r"reverse tunnel up", timeout=90)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "data", "teleport.pid")))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "agent-data", "teleport-kube.pid")))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "twistd.pid")))
        # Idle: SIGTERM stops it at once, exit 0, and its pidfile is gone.
        started = reactor.seconds()
        self.assertEqual(await agent.stop(grace=30), 0, agent.log_tail())
        self.assertLess(reactor.seconds() - started, 5.0, agent.log_tail())
        self.assertFalse(os.path.exists(os.path.join(self.dir, "agent-data", "teleport-kube.pid")))
        self.assertNotIn(b"Starting factory", agent.output())

    async def test_no_pin_joins_a_proxy_with_a_certificate_the_system_trusts(self):
        """The Helm chart's default (no caPin): the agent joins a proxy whose
        https_keypairs certificate chains to a root in the platform trust store
        (a test root given through SSL_CERT_FILE), and is refused without it."""
        root = authority("host", "test-public-root")
        cert, key = public_web_pair()
        cert_file = self.write("web-cert.pem", certificate_pem(cert).decode())
        key_file = self.write("web-key.pem", private_key_pem(key).decode())
        os.chmod(key_file, 0o600)
        root_file = self.write("public-root.pem", certificate_pem(root.certificate).decode())
        await self.start_main(f", https_keypairs: [{{key_file: {key_file}, cert_file: {cert_file}}}]")
        token = (await self.tctl("tokens", "add", "--type=kube", "--format=text")).strip()
        config = self.agent_config("agent", token=token, kubeconfig=self.kubeconfig())
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}

        result = await run([tool("twistd"), "-n", "teleport-kube", "--config", config], env=env, timeout=120,
                           cwd=self.dir)
        output = result.out + result.err
        self.assertEqual(result.code, 1, output)
        self.assertNotIn("Traceback", output)
        errors = [line for line in output.splitlines() if "failed to start" in line or line.startswith("ERROR:")]
        self.assertEqual(len(errors), 1, output)
        for text in ("no teleport.ca_pin", "certificate verify failed", "refusing to join"):
            self.assertIn(text, errors[0])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "agent-data", "kube")))

        agent = ManagedProcess([tool("twistd"), "-n", "teleport-kube", "--config", config],
                               os.path.join(self.dir, "agent.log"), env={**env, "SSL_CERT_FILE": root_file},
                               cwd=self.dir)
        agent.start()
        self.addCleanup(agent.stop)
        await agent.wait_for_output(r"reverse tunnel up", timeout=90)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "agent-data", "kube", "key.pem")))

    async def test_a_standalone_proxy_that_cannot_join_is_one_line(self):
        await self.start_main()
        pin = re.search(r"CA pin:\s+(sha256:[0-9a-f]{64})", await self.tctl("status")).group(1)
        port = free_port()
        config = self.write("proxy.yaml", (
            "version: v3\n"
            f"teleport: {{nodename: proxy2, data_dir: {self.dir}/proxy2, auth_server: '127.0.0.1:{self.auth_port}',"
            f" ca_pin: {pin}, join_params: {{token_name: '{'e' * 32}'}}}}\n"
            f"auth_service: {{enabled: false}}\nproxy_service: {{web_listen_addr: '127.0.0.1:{port}'}}\n"))
        await self.refuses("teleport-proxy", config, "refused to join", "teleport.join_params.token_name")
        # No pin: Auth's certificate is the cluster's, which the system does not trust.
        nopin = self.write("proxy-nopin.yaml", open(config).read().replace(f" ca_pin: {pin},", ""))
        await self.refuses("teleport-proxy", nopin, "no teleport.ca_pin", "certificate verify failed")
        # Nothing listens on the auth address: one line too.
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
        closed.close()
        config = self.write("proxy-dead.yaml", open(config).read().replace(str(self.auth_port), str(dead)))
        await self.refuses("teleport-proxy", config, f"127.0.0.1:{dead}")
