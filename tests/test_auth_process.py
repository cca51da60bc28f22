"""The seed's admin steps against a real ``twistd -n teleport-auth`` process,
driven by the real ``tctl`` command, including a kill -9 and restart."""
from __future__ import annotations

import json
import os
import re
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support.procs import ManagedProcess, free_port, run
from tests.support.seed import KUBE_ACCESS_ROLE as KUBE_ACCESS


BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    return os.path.join(BIN, name)


class AuthProcessTests(TestCase):
    timeout = 180

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = os.path.join(self.dir, "teleport.yaml")
        with open(self.config, "w") as f:
            f.write(
                "version: v3\n"
                "teleport:\n"
                "  nodename: auth-test\n"
                f"  data_dir: {self.dir}/data\n"
                "auth_service:\n"
                "  enabled: true\n"
                f"  listen_addr: 127.0.0.1:{self.port}\n"
                "  cluster_name: example\n"
                "proxy_service:\n"
                "  enabled: false\n"
            )
        self.processes = []

    async def start_auth(self) -> ManagedProcess:
        proc = ManagedProcess(
            [tool("twistd"), "--pidfile=", "-n", "teleport-auth", "--config", self.config],
            os.path.join(self.dir, f"auth-{len(self.processes)}.log"),
            cwd=self.dir,
        )
        proc.start()
        self.processes.append(proc)
        self.addCleanup(proc.stop)
        await proc.wait_for_port(self.port, timeout=60)
        return proc

    async def tctl(self, *args, stdin=b"", expect=0):
        result = await run([tool("tctl"), "--config", self.config, *args], stdin=stdin, timeout=60)
        self.assertEqual(
            result.code, expect, f"tctl {' '.join(args)} exited {result.code}:\n{result.out}\n{result.err}"
        )
        return result

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_seed_admin_steps_survive_kill9(self):
        return Deferred.fromCoroutine(self._seed_admin_steps())

    async def _seed_admin_steps(self):
        auth = await self.start_auth()
        role_file = self.write("kube-access.yaml", KUBE_ACCESS)

        # Step 1 of the seed, verbatim.
        result = await self.tctl("create", "-f", role_file)
        self.assertIn('role "kube-access" has been created', result.out)
        result = await self.tctl("users", "add", "alice", "--roles=access")
        link = re.search(r"https://\S+/web/invite/([0-9a-f]+)", result.out)
        self.assertIsNotNone(link, result.out)
        await self.tctl("users", "update", "alice", "--set-roles=access,kube-access")
        await self.tctl("users", "signup", link.group(1), stdin=b"correct horse battery\n")

        # Step 3: a join token, printed alone.
        result = await self.tctl("tokens", "add", "--type=kube", "--format=text")
        token = result.out.strip()
        self.assertRegex(token, r"^[0-9a-f]{32}$")

        # A broken role is refused with the field named, and nothing changes.
        bad = self.write("bad.yaml", KUBE_ACCESS.replace("kubernetes_groups:", "kubernetes_group:"))
        result = await self.tctl("create", "-f", bad, "--force", expect=1)
        self.assertIn("kubernetes_group", result.err)
        bad_verb = self.write("bad-verb.yaml", KUBE_ACCESS.replace("verbs: ['*']", "verbs: ['gett']"))
        result = await self.tctl("create", "-f", bad_verb, "--force", expect=1)
        self.assertIn("verbs", result.err)
        broken = self.write("broken.yaml", "kind: role\nmetadata: {name: x\n")
        result = await self.tctl("create", "-f", broken, expect=1)
        self.assertIn("line", result.err)
        result = await self.tctl("get", "role/kube-access")
        self.assertIn("viewers", result.out)

        # tctl get output round-trips through tctl create.
        dumped = self.write("dump.yaml", (await self.tctl("get", "roles")).out)
        result = await self.tctl("create", "--force", "-f", dumped)
        self.assertIn('role "kube-access" has been updated', result.out)

        status_before = (await self.tctl("status")).out

        # kill -9, restart: everything is still there.
        auth.kill9()
        await auth.exited
        await self.start_auth()
        self.assertEqual((await self.tctl("status")).out, status_before)
        self.assertIn("viewers", (await self.tctl("get", "role/kube-access")).out)
        users = (await self.tctl("users", "ls")).out
        self.assertRegex(users, r"alice\s+access,kube-access")
        self.assertIn(token, (await self.tctl("tokens", "ls")).out)
        events = json.loads((await self.tctl("events", "--format=json")).out)
        kinds = [e["event"] for e in events]
        for expected in ("role.created", "user.create", "user.update", "join_token.create", "user.password_change"):
            self.assertIn(expected, kinds)
        self.assertTrue(all(token not in json.dumps(e) for e in events), "join token leaked into the audit log")

        # Deleting works and is audited.
        await self.tctl("tokens", "rm", token)
        self.assertNotIn(token, (await self.tctl("tokens", "ls")).out)
        role_events = json.loads((await self.tctl("events", "--type=join_token.delete", "--format=json")).out)
        self.assertEqual(len(role_events), 1)

    def test_tctl_without_identity_fails_clearly(self):
        async def go():
            result = await self.tctl("status", expect=1)
            self.assertIn("no admin identity", result.err)

        return Deferred.fromCoroutine(go())

    def test_misspelled_config_key_refuses_to_start(self):
        async def go():
            bad = self.write("bad.yaml", "version: v3\nauth_service:\n  listen_adr: 127.0.0.1:1\n")
            result = await run([tool("twistd"), "--pidfile=", "-n", "teleport-auth", "--config", bad], timeout=60)
            self.assertNotEqual(result.code, 0)
            self.assertIn("auth_service.listen_adr", result.out + result.err)

        return Deferred.fromCoroutine(go())
