"""Limits of the agent end to end, through the real proxy and agent to the
real kube-apiserver: concurrent filtered LISTs past
``kubernetes_service.buffer_memory_limit`` get a 429 Status saying why and
when to retry (audited), never more memory, and kubectl retries by itself;
a watch ends when the user's certificate expires (audited)."""
from __future__ import annotations

import glob
import json
import os
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cryptography import x509

from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from teleport_py.kube.memory_budget import LIST_BYTE_COST
from tests.e2e import PASSWORD, Deployment, coroutine_test
from tests.support.clients import read_until_closed
from tests.support.seed import configmaps_role

NAMESPACE = "limits-e2e"
KUBE_SNI = "kube-teleport-proxy-alpn.teleport.cluster.local"
#: 8 ConfigMaps of 500 KiB, half of them visible: a ~4 MiB list to filter.
ITEM_KIB, ITEMS = 500, 8
#: One such list fits the budget, two at once do not.
BUDGET_MIB = 48
HALF_ROLE = configmaps_role("half-of-limits-e2e", NAMESPACE, "shown-*")


def _list_all_at_once(port: int, context: ssl.SSLContext, count: int) -> list[tuple[int, dict, dict]]:
    """``count`` LISTs on connections opened first, sent together."""
    sockets = []
    for _ in range(count):
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname=KUBE_SNI)
        sockets.append(sock)
    barrier = threading.Barrier(count)
    request = (f"GET /api/v1/namespaces/{NAMESPACE}/configmaps HTTP/1.1\r\nHost: {KUBE_SNI}\r\n"
               "Connection: close\r\n\r\n").encode()

    def one(sock):
        with sock:
            barrier.wait()
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = _unchunk(body)
        return int(lines[0].split()[1]), headers, json.loads(body)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, sockets))


def _unchunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2:]


class MemoryBudgetEndToEndTests(TestCase):
    timeout = 600

    @coroutine_test
    async def test_filtered_lists_past_the_budget_get_429_and_kubectl_retries(self):
        d = await Deployment(self, self.mktemp()).start()
        await d.agent.stop()
        with open(d.agent_config, "a") as f:
            f.write(f"  buffer_memory_limit: {BUDGET_MIB}Mi\n")
        await d.start_agent()
        await d.login_with_kube_access("alice")
        await d.tctl("create", "-f", d.write("half.yaml", HALF_ROLE))
        await d.tctl("users", "update", "alice", "--set-roles=half-of-limits-e2e")
        await d.login("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        await d.plane.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        padding = "x" * (ITEM_KIB * 1024)
        for i in range(ITEMS):
            name = f"{'shown' if i % 2 else 'hidden'}-{i}"
            manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE},
                        "data": {"padding": padding}}
            # create, not apply: apply would copy 500 KiB into an annotation (256 KiB at most)
            result = await d.plane.kubectl("create", "-f", "-", stdin=json.dumps(manifest).encode())
            self.assertTrue(result.code == 0 or b"AlreadyExists" in result.err or b"already exists" in result.err,
                            result.err)
        shown = sorted(f"shown-{i}" for i in range(ITEMS) if i % 2)
        self.assertLess(ITEMS * ITEM_KIB * LIST_BYTE_COST, BUDGET_MIB * 1024)  # one list fits alone

        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        context = ssl.create_default_context(cafile=os.path.join(keys, "host_ca.pem"))
        context.load_cert_chain(os.path.join(keys, "kube", "my-cluster", "cert.pem"), os.path.join(keys, "key.pem"))
        context.set_alpn_protocols(["http/1.1"])
        refusals = []
        for _ in range(5):  # lists sent together overlap in the agent; a round where none did is retried
            results = await threads.deferToThread(_list_all_at_once, d.proxy_port, context, 6)
            for code, headers, body in results:
                if code == 200:
                    self.assertEqual(sorted(item["metadata"]["name"] for item in body["items"]), shown)
                else:
                    self.assertEqual(code, 429, body)
                    refusals.append((headers, body))
            if refusals:
                break
        self.assertTrue(refusals, "six lists sent at once never exceeded a budget that holds one")
        headers, status = refusals[0]
        self.assertEqual(headers.get("retry-after"), "1")
        self.assertEqual((status["kind"], status["reason"], status["code"]), ("Status", "TooManyRequests", 429))
        self.assertIn("too many large lists at once", status["message"])
        self.assertTrue(d.agent.running)

        # kubectl (client-go) waits Retry-After and retries: six at once all succeed.
        results = [Deferred.fromCoroutine(d.kubectl("get", "configmaps", "-n", NAMESPACE, "-o", "name"))
                   for _ in range(6)]
        for result in results:
            out = (await result).out
            self.assertEqual(sorted(line.split("/", 1)[1] for line in out.split()), shown)

        events = [e for e in await d.events("kube.request") if e.get("response_code") == 429]
        self.assertTrue(events)
        self.assertIn("memory budget", events[0]["reason"])
        self.assertEqual(events[0]["user"], "alice")


def _watch_until_closed(port: int, context: ssl.SSLContext) -> tuple[bytes, float]:
    """Open a watch; return its response head and when (time.time()) the connection ended."""
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=120), server_hostname=KUBE_SNI)
    with sock:
        sock.sendall(f"GET /api/v1/namespaces/default/configmaps?watch=1 HTTP/1.1\r\nHost: {KUBE_SNI}\r\n\r\n"
                     .encode())
        return read_until_closed(sock).partition(b"\r\n\r\n")[0], time.time()


class CertificateExpiryEndToEndTests(TestCase):
    timeout = 300

    @coroutine_test
    async def test_a_watch_ends_when_the_certificate_expires(self):
        d = await Deployment(self, self.mktemp()).start()
        await d.login_with_kube_access("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("login", f"--proxy={d.proxy}", "--user=alice", "--insecure", "--ttl=30s",
                    stdin=PASSWORD.encode() + b"\n")
        await d.tsh("kube", "login", "my-cluster")
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        cert_path = os.path.join(keys, "kube", "my-cluster", "cert.pem")
        with open(cert_path, "rb") as f:
            expires = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
        self.assertLess(expires - time.time(), 31)
        context = ssl.create_default_context(cafile=os.path.join(keys, "host_ca.pem"))
        context.load_cert_chain(cert_path, os.path.join(keys, "key.pem"))
        context.set_alpn_protocols(["http/1.1"])

        head, ended = await threads.deferToThread(_watch_until_closed, d.proxy_port, context)
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertGreater(ended, expires - 1, "the watch ended before the certificate expired")
        self.assertLess(ended, expires + 15, "the watch outlived the certificate")
        for _ in range(60):  # the agent spools events and uploads them in the background
            disconnects = [e for e in await d.events("client.disconnect") if e.get("user") == "alice"]
            if disconnects:
                break
            await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual([e["reason"] for e in disconnects], ["client certificate expired"])
        self.assertEqual(disconnects[0]["kube_cluster"], "my-cluster")
