"""Password spraying through the real proxy: ``twistd -n teleport`` (auth +
proxy), 25 wrong logins for 25 user names, each on a fresh TCP connection to
``POST /webapi/login``, are throttled per client address; the headers a
client sets do not change which address that is; the throttling is audited."""
from __future__ import annotations

import json
import os
import sys

from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from tests.support.procs import ManagedProcess, free_port, run

BIN = os.path.dirname(sys.executable)


@implementer(IPolicyForHTTPS)
class _NoVerify:
    """The test plays an anonymous attacker: it trusts nothing and needs nothing."""

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions()


class LoginThrottleProcessTests(TestCase):
    timeout = 180

    async def test_wrong_logins_on_fresh_connections_are_throttled(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        auth_port, proxy_port = free_port(), free_port()
        config = os.path.join(directory, "teleport.yaml")
        with open(config, "w") as f:
            f.write(
                "version: v3\n"
                f"teleport: {{nodename: allinone, data_dir: {directory}/data}}\n"
                f"auth_service: {{listen_addr: '127.0.0.1:{auth_port}', cluster_name: example}}\n"
                f"proxy_service: {{web_listen_addr: '127.0.0.1:{proxy_port}'}}\n"
            )
        proc = ManagedProcess([os.path.join(BIN, "twistd"), "--pidfile=", "-n", "teleport", "--config", config],
                              os.path.join(directory, "teleport.log"), cwd=directory)
        proc.start()
        self.addCleanup(proc.stop)
        await proc.wait_for_port(proxy_port, timeout=60)

        codes = []
        for i in range(25):
            # A new pool per attempt, not persistent: every login is its own
            # TCP connection (its own source port), as a spray would be.
            pool = HTTPConnectionPool(reactor, persistent=False)
            http = HTTPClient(Agent(reactor, contextFactory=_NoVerify(), pool=pool))
            response = await http.post(
                f"https://127.0.0.1:{proxy_port}/webapi/login",
                json={"user": f"user{i}", "password": "not the password", "public_key": "x"},
                headers={"X-Forwarded-For": f"203.0.113.{i}", "Teleport-Client-Address": f"198.51.100.{i}:1",
                         "X-Real-IP": f"203.0.113.{i}"},
            )
            body = json.loads(await readBody(response))
            codes.append((response.code, body["error"]["kind"]))
        self.assertEqual(codes, [(403, "access_denied")] * 20 + [(429, "limit_exceeded")] * 5, proc.log_tail())

        tctl = os.path.join(BIN, "tctl")
        found = await run([tctl, "--config", config, "events", "--type=login.throttled", "--format=json"], timeout=60)
        self.assertEqual(found.code, 0, found.err)
        throttled = json.loads(found.out)
        self.assertEqual(len(throttled), 1, throttled)
        self.assertEqual((throttled[0]["limit"], throttled[0]["key"], throttled[0]["user"]),
                         ("client_network", "127.0.0.1", "user20"))
        self.assertTrue(throttled[0]["addr_remote"].startswith("127.0.0.1:"), throttled[0])
