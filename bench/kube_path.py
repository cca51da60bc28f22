"""The kubectl path's cost, measured against one kube-apiserver in one run.

Three ways to the same API server, driven by the same blocking HTTP/1.1
client (threads, keep-alive where the path allows it):

- ``direct``: TLS with an admin client certificate straight to the apiserver;
- ``direct-impersonating``: TLS as the agent's own Kubernetes user
  (``teleport-agent``, allowed to impersonate by RBAC, not a
  ``system:masters`` admin) sending the ``Impersonate-*`` headers the agent
  sends for alice: what the API server's authentication, impersonation and
  RBAC checks cost, which no proxy that impersonates can avoid;
- ``kubectl-proxy``: the real ``kubectl proxy``, plain HTTP on 127.0.0.1;
- ``teleport``: TLS to the proxy's public port with the user's kube
  certificate and SNI ``kube-teleport-proxy-alpn.teleport.cluster.local``, as
  kubectl does (each connection is one tunnel stream; the agent forwards on
  its pool of keep-alive TLS connections to the apiserver).

The deployment is the end-to-end tests' (tests/e2e.py: real ``twistd``
processes, real tsh/tctl/kubectl). Run by hand from the repository root:

    TELEPORT_PY_KUBE_BIN=$HOME/.cache/teleport_py/kube-1.20.2/bin \\
    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/kube_path.py [--requests 2000]
"""
from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import attr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task, threads  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from bench.support import Harness, Sampled, cpu_seconds, rss_kib  # noqa: E402
from tests.e2e import Deployment  # noqa: E402
from tests.support.kubeenv import default_kubectl  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

KUBE_SNI = "kube-teleport-proxy-alpn.teleport.cluster.local"
SMALL_GET = "/api/v1/namespaces/default"
NAMESPACE = "bench"


@attr.frozen
class Target:
    """Where one path starts: address, TLS (None: plain HTTP) and SNI."""

    name: str
    port: int
    context: ssl.SSLContext | None = None
    server_name: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def socket(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            return sock
        return self.context.wrap_socket(sock, server_hostname=self.server_name)


class Connection(http.client.HTTPConnection):
    """http.client over a Target's socket, reconnecting the same way."""

    def __init__(self, target: Target):
        super().__init__("127.0.0.1", target.port, timeout=120)
        self.target = target

    def connect(self) -> None:
        self.sock = self.target.socket()

    def fetch(self, method: str, path: str, body: bytes | None = None) -> bytes:
        self.putrequest(method, path)
        for name, value in self.target.headers:
            self.putheader(name, value)
        if body:
            self.putheader("Content-Type", "application/json")
            self.putheader("Content-Length", str(len(body)))
        self.endheaders(body)
        response = self.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{self.target.name} {method} {path}: {response.status} {data[:300]!r}")
        return data


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    return context


def latency(target: Target, count: int) -> dict:
    connection = Connection(target)
    connection.fetch("GET", SMALL_GET)  # connect and warm up outside the measurement
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        connection.fetch("GET", SMALL_GET)
        samples.append(time.perf_counter() - start)
    connection.close()
    samples.sort()
    return {"p50_ms": 1000 * samples[len(samples) // 2], "p99_ms": 1000 * samples[int(len(samples) * 0.99)]}


def throughput(target: Target, concurrency: int, per_client: int) -> float:
    def client(_):
        connection = Connection(target)
        for _ in range(per_client):
            connection.fetch("GET", SMALL_GET)
        connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return concurrency * per_client / (time.perf_counter() - start)


def big_list(target: Target, repeats: int, pids: dict[str, int]) -> dict:
    times, size = [], 0
    cpu_before = {process: cpu_seconds(pid) for process, pid in pids.items()}
    for _ in range(repeats):
        connection = Connection(target)
        start = time.perf_counter()
        size = len(connection.fetch("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps"))
        times.append(time.perf_counter() - start)
        connection.close()
    return {"median_s": statistics.median(times), "min_s": min(times), "mib": size / 2**20,
            "cpu_s_per_list": {process: (cpu_seconds(pid) - cpu_before[process]) / repeats
                               for process, pid in pids.items()}}


def create_configmaps(target: Target, total_mib: int) -> None:
    """About ``total_mib`` of ConfigMaps of 100 KiB each (the LIST to time)."""
    connection = Connection(target)
    connection.fetch("POST", "/api/v1/namespaces", json.dumps({"metadata": {"name": NAMESPACE}}).encode())
    padding = "x" * 100 * 1024
    for i in range(total_mib * 10):
        body = {"metadata": {"name": f"padded-{i:04d}"}, "data": {"padding": padding}}
        connection.fetch("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", json.dumps(body).encode())
    connection.close()


def open_watches(target: Target, count: int, into: list) -> None:
    """``count`` watches left open (headers read, body pending)."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1"
    for _ in range(count):
        sock = target.socket()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {target.server_name or '127.0.0.1'}\r\n\r\n".encode())
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"watch refused: {head[:200]!r}")
        into.append(sock)


async def idle_cpu_rate(reactor, pids: dict[str, int], seconds: float = 3.0) -> dict[str, float]:
    """CPU seconds per second each process uses with no requests."""
    before = {process: cpu_seconds(pid) for process, pid in pids.items()}
    await task.deferLater(reactor, seconds, lambda: None)
    return {process: (cpu_seconds(pid) - before[process]) / seconds for process, pid in pids.items()}


async def deploy(harness: Harness, workdir: str) -> tuple[Deployment, dict[str, Target]]:
    d = await Deployment(harness, workdir).start()
    await d.login_with_kube_access("alice")
    await d.wait_for_clusters({"my-cluster"})
    await d.tsh("kube", "login", "my-cluster")
    keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]

    admin = d.plane.issue_client_certificate("bench-admin", ("system:masters",))
    admin_cert, admin_key = d.write("admin.pem", admin.cert_pem.decode()), d.write("admin-key.pem", admin.key_pem.decode())
    apiserver_ca = d.write("apiserver-ca.pem", d.plane.serving_ca.cert_pem.decode())

    proxy_port = free_port()
    kubectl_proxy = d.spawn(
        "kubectl-proxy",
        [default_kubectl(), f"--kubeconfig={d.plane.admin_kubeconfig}", "proxy", f"--port={proxy_port}", "--address=127.0.0.1"],
    )
    await kubectl_proxy.wait_for_port(proxy_port, timeout=30)
    agent = d.plane.issue_client_certificate("teleport-agent")
    agent_tls = tls_context(apiserver_ca, d.write("agent.pem", agent.cert_pem.decode()),
                            d.write("agent-key.pem", agent.key_pem.decode()))
    return d, {
        "direct": Target("direct", d.plane.port, tls_context(apiserver_ca, admin_cert, admin_key), "127.0.0.1"),
        "direct-impersonating": Target("direct-impersonating", d.plane.port, agent_tls, "127.0.0.1", headers=(
            ("Impersonate-User", "alice"), ("Impersonate-Group", "viewers"),
            ("Impersonate-Group", "system:authenticated"))),
        "kubectl-proxy": Target("kubectl-proxy", proxy_port),
        "teleport": Target(
            "teleport",
            d.proxy_port,
            tls_context(
                os.path.join(keys, "host_ca.pem"),
                os.path.join(keys, "kube", "my-cluster", "cert.pem"),
                os.path.join(keys, "key.pem"),
            ),
            KUBE_SNI,
        ),
    }


async def measure(reactor, options) -> dict:
    harness = Harness()
    results = {"load_before": os.getloadavg()}
    try:
        d, targets = await deploy(harness, tempfile.mkdtemp(prefix="bench_kube_path."))
        await threads.deferToThread(create_configmaps, targets["direct"], options.list_mib)
        pids = {"proxy": d.main.pid, "agent": d.agent.pid, "apiserver": d.plane.apiserver.pid}
        for name, target in targets.items():
            print(f"{name}: latency, throughput, list", file=sys.stderr)
            idle_rate = await idle_cpu_rate(reactor, pids)
            cpu_before = {process: cpu_seconds(pid) for process, pid in pids.items()}
            started = time.monotonic()
            with Sampled(reactor, name == "teleport" and options.profile, "get", pids):
                get_latency = await threads.deferToThread(latency, target, options.requests)
            results[name] = {
                "latency": get_latency,
                # CPU per request of the sequential run, less what the process
                # burns when idle (timers, heartbeats) over the same time: what
                # each hop costs a request, whatever the load.
                "cpu_ms_per_request": {
                    process: 1000 * (cpu_seconds(pid) - cpu_before[process]
                                     - idle_rate[process] * (time.monotonic() - started)) / (options.requests + 1)
                    for process, pid in pids.items()},
                "rps_c32": await threads.deferToThread(throughput, target, 32, options.requests // 20),
            }
            with Sampled(reactor, name == "teleport" and options.profile, "list", pids):
                results[name]["list"] = await threads.deferToThread(big_list, target, options.list_repeats, pids)
        pids = {"proxy (auth+proxy process)": d.main.pid, "agent": d.agent.pid}
        watches: list = []
        memory = {"0": {name: rss_kib(pid) for name, pid in pids.items()}}
        for count in (100, options.watches):
            await threads.deferToThread(open_watches, targets["teleport"], count - len(watches), watches)
            await task.deferLater(reactor, 3, lambda: None)  # let buffers and GC settle
            memory[str(count)] = {name: rss_kib(pid) for name, pid in pids.items()}
        for sock in watches:
            sock.close()
        results["rss_kib"] = memory
        results["load_after"] = os.getloadavg()
    finally:
        await harness.close()
    return results


def report(results: dict, watches: int) -> str:
    direct = results["direct"]
    lines = [f"load average before {results['load_before']}, after {results['load_after']}"]
    for name in ("direct", "direct-impersonating", "kubectl-proxy", "teleport"):
        r = results[name]
        lines.append(
            f"{name:20} p50 {r['latency']['p50_ms']:.2f} ms  p99 {r['latency']['p99_ms']:.2f} ms  "
            f"c32 {r['rps_c32']:.0f} req/s ({r['rps_c32'] / direct['rps_c32']:.2f}x direct)  "
            f"LIST {r['list']['mib']:.1f} MiB median {r['list']['median_s']:.3f} s "
            f"({r['list']['median_s'] / direct['list']['median_s']:.2f}x direct)  CPU ms/request "
            + ", ".join(f"{process} {ms:.2f}" for process, ms in r["cpu_ms_per_request"].items())
            + "  CPU s/LIST " + ", ".join(f"{process} {s:.3f}" for process, s in r["list"]["cpu_s_per_list"].items())
        )
    teleport = results["teleport"]
    added = teleport["latency"]["p50_ms"] - direct["latency"]["p50_ms"]
    lines.append(f"teleport added p50: {added:.2f} ms (target <= 1 ms)")
    lines.append(f"teleport LIST ratio: {teleport['list']['median_s'] / direct['list']['median_s']:.2f} (target <= 1.25)")
    memory = results["rss_kib"]
    for count, by_process in memory.items():
        lines.append(f"RSS with {count:>5} watches: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in by_process.items()))
    per_watch = sum(memory[str(watches)][k] - memory["0"][k] for k in memory["0"]) / watches
    lines.append(f"proxy+agent per open watch: {per_watch:.1f} KiB (target <= 20 KB)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential small GETs per path")
    parser.add_argument("--list-mib", type=int, default=20, help="size of the LIST, MiB")
    parser.add_argument("--list-repeats", type=int, default=5)
    parser.add_argument("--watches", type=int, default=1000)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy stacks of the proxy and agent during teleport's GETs and LISTs")
    options = parser.parse_args()

    def run(reactor):
        return ensureDeferred(measure(reactor, options)).addCallback(done)

    def done(results):
        if options.json:
            with open(options.json, "w") as f:
                json.dump(results, f, indent=2)
        print(report(results, options.watches))

    task.react(run)


if __name__ == "__main__":
    main()
