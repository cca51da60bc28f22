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

And the way kubectl really talks when the server offers h2 in ALPN (client-go
multiplexes a process's requests, watches included, over one connection;
bench/h2client.py): ``direct-h2`` (admin certificate to the apiserver) and
``teleport-h2`` (alice's certificate via the proxy). A path that does not
negotiate h2 is reported as such, never measured over HTTP/1.1 instead.

Open watches cost memory in the proxy and the agent: 1,000 over HTTP/1.1
connections (as many ``kubectl get -w`` processes open) after the other
phases, as in earlier sessions; then, each on freshly restarted processes,
1,000 over HTTP/1.1 connections and 1,000 as streams of one h2 client.

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

from bench.h2client import KUBECTL_ALPN, H2Connection, NotNegotiated  # noqa: E402
from bench.support import Harness, Sampled, cpu_seconds, rss_kib  # noqa: E402
from tests.e2e import Deployment  # noqa: E402
from tests.support.kubeenv import default_kubectl  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

KUBE_SNI = "kube-teleport-proxy-alpn.teleport.cluster.local"
SMALL_GET = "/api/v1/namespaces/default"
NAMESPACE = "bench"
WATCH = f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1"
H2_PATHS = ("direct-h2", "teleport-h2")
#: Until the proxy offers h2 on the kube SNI, this path says so and the bench goes on.
MAY_REFUSE_H2 = ("teleport-h2",)


@attr.frozen
class Target:
    """Where one path starts: address, TLS (None: plain HTTP) and SNI."""

    name: str
    port: int
    context: ssl.SSLContext | None = None
    server_name: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    h2: bool = False

    def socket(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            return sock
        return self.context.wrap_socket(sock, server_hostname=self.server_name)

    def connect(self) -> "Connection | H2Connection":
        """A client for this path: HTTP/1.1 with keep-alive, or one h2 connection."""
        if self.h2:
            return H2Connection(self.socket(), f"127.0.0.1:{self.port}", self.headers)
        return Connection(self)

    def negotiated(self) -> str:
        """The protocol this path's ALPN offer gets from the server."""
        if self.context is None:
            return "http/1.1 (plain HTTP, no ALPN)"
        with self.socket() as sock:
            return sock.selected_alpn_protocol() or "none"


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


def tls_context(ca: str, cert: str, key: str, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(list(alpn))
    context.load_cert_chain(cert, key)
    return context


def latency(target: Target, count: int) -> dict:
    connection = target.connect()
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


def throughput_h2(target: Target, concurrency: int, total: int) -> dict:
    """``total`` GETs as client-go sends them from many goroutines: up to
    ``concurrency`` streams at once on ONE connection (fewer if the server's
    stream limit says so)."""
    start = time.perf_counter()
    connection = target.connect()
    sent = done = 0
    while done < total:
        while sent < total and sent - done < concurrency and connection.can_open():
            connection.start("GET", SMALL_GET)
            sent += 1
        for stream_id in connection.read():
            connection.finish(stream_id, "GET", SMALL_GET)
            done += 1
    rate = total / (time.perf_counter() - start)
    connection.close()
    return {"rps": rate, "streams": min(concurrency, connection.stream_limit)}


def big_list(target: Target, repeats: int, pids: dict[str, int]) -> dict:
    times, size = [], 0
    cpu_before = {process: cpu_seconds(pid) for process, pid in pids.items()}
    for _ in range(repeats):
        connection = target.connect()
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
    for _ in range(count):
        sock = target.socket()
        sock.sendall(f"GET {WATCH} HTTP/1.1\r\nHost: {target.server_name or '127.0.0.1'}\r\n\r\n".encode())
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"watch refused: {head[:200]!r}")
        into.append(sock)


def check_watches(socks: list) -> None:
    """Every HTTP/1.1 watch still open: none was closed by the other end."""
    for sock in socks:
        sock.settimeout(0)
        try:
            if sock.recv(4096) == b"":
                raise RuntimeError("an open watch was closed by the server")
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        finally:
            sock.settimeout(120)


def open_h2_watches(target: Target, count: int) -> list[H2Connection]:
    """``count`` watches as one client-go process opens them: streams of one
    connection, a new connection only when the server's stream limit is
    reached. Returns once every watch has its 200 head."""
    connections: list[H2Connection] = []
    for _ in range(count):
        if not connections or not connections[-1].can_open():
            connections.append(target.connect())
        connections[-1].start("GET", WATCH)
        connections[-1].poll()
    for connection in connections:
        while any(r.status is None and not r.ended for r in connection.responses.values()):
            connection.read()
    check_h2_watches(connections)
    return connections


def check_h2_watches(connections: list[H2Connection]) -> None:
    """Every h2 watch answered 200 and is still open."""
    for connection in connections:
        connection.poll()
        broken = [(stream_id, r) for stream_id, r in connection.responses.items() if r.status != 200 or r.ended]
        if broken:
            raise RuntimeError(f"{len(broken)} h2 watches not open, e.g. stream {broken[0][0]}: {broken[0][1]}")


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
    alice = (os.path.join(keys, "host_ca.pem"), os.path.join(keys, "kube", "my-cluster", "cert.pem"),
             os.path.join(keys, "key.pem"))
    return d, {
        "direct": Target("direct", d.plane.port, tls_context(apiserver_ca, admin_cert, admin_key), "127.0.0.1"),
        "direct-impersonating": Target("direct-impersonating", d.plane.port, agent_tls, "127.0.0.1", headers=(
            ("Impersonate-User", "alice"), ("Impersonate-Group", "viewers"),
            ("Impersonate-Group", "system:authenticated"))),
        "kubectl-proxy": Target("kubectl-proxy", proxy_port),
        "teleport": Target("teleport", d.proxy_port, tls_context(*alice), KUBE_SNI),
        "direct-h2": Target("direct-h2", d.plane.port, tls_context(apiserver_ca, admin_cert, admin_key, KUBECTL_ALPN),
                            "127.0.0.1", h2=True),
        "teleport-h2": Target("teleport-h2", d.proxy_port, tls_context(*alice, KUBECTL_ALPN), KUBE_SNI, h2=True),
    }


async def restart(reactor, d: Deployment, target: Target) -> None:
    """Fresh auth+proxy and agent processes, serving ``target`` again."""
    await d.agent.stop()
    await d.main.stop()
    await d.start_main()
    await d.start_agent()
    await d.wait_for_clusters({"my-cluster"})
    for _ in range(120):
        try:
            await threads.deferToThread(Connection(target).fetch, "GET", SMALL_GET)
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            await task.deferLater(reactor, 0.5, lambda: None)
    raise RuntimeError("the kube path did not come back after the restart")


async def fresh_watch_memory(reactor, d: Deployment, target: Target, h1: Target, count: int) -> dict:
    """RSS of fresh auth+proxy and agent processes before and after ``count``
    watches open through ``target`` (HTTP/1.1: a connection each; h2: streams
    of one client), each watch checked open before and after the settle;
    ``h1`` is the same path over HTTP/1.1, to see it serve after the restart."""
    await restart(reactor, d, h1)

    def warm_up():
        connection = target.connect()
        for _ in range(20):
            connection.fetch("GET", SMALL_GET)
        connection.close()

    await threads.deferToThread(warm_up)  # first-request costs are not per watch
    pids = {"proxy (auth+proxy process)": d.main.pid, "agent": d.agent.pid}
    await task.deferLater(reactor, 3, lambda: None)
    before = {name: rss_kib(pid) for name, pid in pids.items()}
    if target.h2:
        handles = await threads.deferToThread(open_h2_watches, target, count)
        check, connections = check_h2_watches, len(handles)
    else:
        handles = []
        await threads.deferToThread(open_watches, target, count, handles)
        check, connections = check_watches, len(handles)
    await task.deferLater(reactor, 3, lambda: None)  # let buffers and GC settle
    after = {name: rss_kib(pid) for name, pid in pids.items()}
    await threads.deferToThread(check, handles)
    for handle in handles:
        handle.close()
    return {"connections": connections, "before": before, "after": after,
            "kib_per_watch": sum(after[k] - before[k] for k in pids) / count}

async def measure_path(reactor, name: str, target: Target, pids: dict[str, int], options) -> dict:
    """Small GETs in a row (latency, CPU per request), at concurrency 32, and LISTs."""
    profile = name.startswith("teleport") and options.profile
    suffix = "-h2" if target.h2 else ""
    idle_rate = await idle_cpu_rate(reactor, pids)
    cpu_before = {process: cpu_seconds(pid) for process, pid in pids.items()}
    started = time.monotonic()
    with Sampled(reactor, profile, "get" + suffix, pids, blocking=options.profile_blocking):
        get_latency = await threads.deferToThread(latency, target, options.requests)
    result = {
        "latency": get_latency,
        # CPU per request of the sequential run, less what the process
        # burns when idle (timers, heartbeats) over the same time: what
        # each hop costs a request, whatever the load.
        "cpu_ms_per_request": {
            process: 1000 * (cpu_seconds(pid) - cpu_before[process]
                             - idle_rate[process] * (time.monotonic() - started)) / (options.requests + 1)
            for process, pid in pids.items()},
    }
    per_client = options.requests // 20
    if target.h2:
        c32 = await threads.deferToThread(throughput_h2, target, 32, 32 * per_client)
        result["rps_c32"], result["c32_streams"] = c32["rps"], c32["streams"]
    else:
        result["rps_c32"] = await threads.deferToThread(throughput, target, 32, per_client)
    with Sampled(reactor, profile, "list" + suffix, pids, blocking=options.profile_blocking):
        # The bench's own CPU too: a LIST's time may be the Python client's.
        result["list"] = await threads.deferToThread(big_list, target, options.list_repeats,
                                                     {**pids, "client": os.getpid()})
    return result


async def measure(reactor, options) -> dict:
    harness = Harness(tempfile.mkdtemp(prefix="bench_kube_path."))
    results = {"load_before": os.getloadavg()}
    try:
        d, targets = await deploy(harness, harness.root)
        await threads.deferToThread(create_configmaps, targets["direct"], options.list_mib)
        results["alpn"] = {name: await threads.deferToThread(target.negotiated) for name, target in targets.items()}
        pids = {"proxy": d.main.pid, "agent": d.agent.pid, "apiserver": d.plane.apiserver.pid}
        for name, target in targets.items():
            print(f"{name}: latency, throughput, list", file=sys.stderr)
            try:
                results[name] = await measure_path(reactor, name, target, pids, options)
            except NotNegotiated as refused:
                if name not in MAY_REFUSE_H2:
                    raise
                print(f"{name}: h2 not offered ({refused}); going on without it", file=sys.stderr)
                results[name] = {"not_offered": refused.negotiated}
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
        print("watches on fresh processes: HTTP/1.1, then h2", file=sys.stderr)
        results["fresh_watches"] = {"http/1.1": await fresh_watch_memory(
            reactor, d, targets["teleport"], targets["teleport"], options.watches)}
        if "not_offered" not in results["teleport-h2"]:
            results["fresh_watches"]["h2"] = await fresh_watch_memory(
                reactor, d, targets["teleport-h2"], targets["teleport"], options.watches)
        results["load_after"] = os.getloadavg()
    finally:
        await harness.close()
    return results


def path_line(name: str, r: dict, base_name: str, base: dict) -> str:
    c32 = f"c32 {r['rps_c32']:.0f} req/s"
    if "c32_streams" in r:
        c32 = f"c32 {r['rps_c32']:.0f} req/s on 1 conn x {r['c32_streams']} streams"
    return (
        f"{name:20} p50 {r['latency']['p50_ms']:.2f} ms  p99 {r['latency']['p99_ms']:.2f} ms  "
        f"{c32} ({r['rps_c32'] / base['rps_c32']:.2f}x {base_name})  "
        f"LIST {r['list']['mib']:.1f} MiB median {r['list']['median_s']:.3f} s "
        f"({r['list']['median_s'] / base['list']['median_s']:.2f}x {base_name})  CPU ms/request "
        + ", ".join(f"{process} {ms:.2f}" for process, ms in r["cpu_ms_per_request"].items())
        + "  CPU s/LIST " + ", ".join(f"{process} {s:.3f}" for process, s in r["list"]["cpu_s_per_list"].items())
    )


def report(results: dict, watches: int) -> str:
    direct = results["direct"]
    lines = [f"load average before {results['load_before']}, after {results['load_after']}"]
    for name in ("direct", "direct-impersonating", "kubectl-proxy", "teleport"):
        lines.append(path_line(name, results[name], "direct", direct))
    teleport = results["teleport"]
    added = teleport["latency"]["p50_ms"] - direct["latency"]["p50_ms"]
    lines.append(f"teleport added p50: {added:.2f} ms (target <= 1 ms)")
    lines.append(f"teleport LIST ratio: {teleport['list']['median_s'] / direct['list']['median_s']:.2f} (target <= 1.25)")
    memory = results["rss_kib"]
    for count, by_process in memory.items():
        lines.append(f"RSS with {count:>5} watches: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in by_process.items()))
    per_watch = sum(memory[str(watches)][k] - memory["0"][k] for k in memory["0"]) / watches
    lines.append(f"proxy+agent per open watch: {per_watch:.1f} KiB (target <= 20 KB)")

    lines.append("-- as kubectl talks when offered h2 (one connection per client, LIST: a new connection each) --")
    lines.append("ALPN negotiated: " + ", ".join(f"{name} {alpn}" for name, alpn in results["alpn"].items()))
    direct_h2 = results["direct-h2"]
    lines.append(path_line("direct-h2", direct_h2, "direct", direct))
    teleport_h2 = results["teleport-h2"]
    if "not_offered" in teleport_h2:
        lines.append(f"{'teleport-h2':20} h2 not offered: the proxy negotiated {teleport_h2['not_offered']}; "
                     "not measured (kubectl would talk HTTP/1.1 to it: the teleport row above)")
    else:
        lines.append(path_line("teleport-h2", teleport_h2, "direct-h2", direct_h2))
        added_h2 = teleport_h2["latency"]["p50_ms"] - direct_h2["latency"]["p50_ms"]
        lines.append(f"teleport-h2 added p50 over direct-h2: {added_h2:.2f} ms (target <= 1 ms)")
        lines.append(f"teleport-h2 LIST ratio to direct-h2: "
                     f"{teleport_h2['list']['median_s'] / direct_h2['list']['median_s']:.2f} (target <= 1.25)")
    for protocol, m in results["fresh_watches"].items():
        how = "a connection each" if protocol == "http/1.1" else f"streams of one client, {m['connections']} connection(s)"
        lines.append(
            f"fresh processes, {watches} watches over {protocol} ({how}): "
            + ", ".join(f"{k} {m['before'][k] / 1024:.1f} -> {m['after'][k] / 1024:.1f} MiB" for k in m["before"])
            + f"; proxy+agent per open watch: {m['kib_per_watch']:.1f} KiB (target <= 20 KB)")
    if "h2" not in results["fresh_watches"]:
        lines.append("fresh processes, watches over h2: not measured, the proxy does not offer h2")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential small GETs per path")
    parser.add_argument("--list-mib", type=int, default=20, help="size of the LIST, MiB")
    parser.add_argument("--list-repeats", type=int, default=5)
    parser.add_argument("--watches", type=int, default=1000)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy stacks of the proxy and agent during teleport's (and teleport-h2's) GETs and LISTs")
    parser.add_argument("--profile-blocking", action="store_true",
                        help="sample in py-spy's blocking mode: a truer CPU breakdown (nonblocking over-weights "
                             "system calls), at the price of slower processes while sampled")
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
