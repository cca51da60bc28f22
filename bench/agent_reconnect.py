"""1,000 agents reconnecting to a proxy that was killed and started again.

A ``twistd -n teleport-auth`` (SQLite) and a ``twistd -n teleport-proxy``
joined to it run as real processes. Simulated agents live in a few worker
processes (``--workers``), each a plain Twisted reactor running many
``teleport_py.kube.agent_pool.AgentPool``s, the real agent's tunnels: each
joined with the real join (``kube.join.join``: CA pin, token, its own host
certificate), each dialling mutual TLS with ALPN ``teleport-reversetunnel``
to the proxy, the tunnel hello, the identifying announce, the announce of
its own cluster and the proxy's discovery stream; when the tunnel drops,
they retry on the real agent's schedule (``teleport_py.backoff``: 1, 2, 4,
8 s cap, each up to a quarter shorter at random). They do not heartbeat to
Auth nor serve kube streams.

Once all are up, the proxy is killed with SIGKILL and started again at
once. Measured: from the proxy's port accepting again to each agent's
announce being accepted (its tunnel up), the proxy's CPU (one core = 100 %)
per half second over that time, and how the reconnects spread.

Run from the repository root:

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/agent_reconnect.py [--agents 1000] [--workers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from bench.support import Harness, cpu_seconds, rss_kib  # noqa: E402

#: The goal of issue 13: every agent back within this long.
GOAL_SECONDS = 30.0
#: How often the proxy's CPU is read during the reconnects.
CPU_INTERVAL = 0.5
UP_LINE = re.compile(rb"^up (\d+) (\d+) ([0-9.]+)$", re.M)


# -- the worker: many tunnel clients in one reactor ---------------------------------

async def worker(reactor, options) -> None:
    from teleport_py.config import Address
    from teleport_py.kube.agent_pool import AgentPool
    from teleport_py.kube.join import join
    from teleport_py.tunnel import StreamRejected

    host, port = options.proxy.rsplit(":", 1)
    limit = defer.DeferredSemaphore(options.join_concurrency)

    def joined(n: int):
        return limit.run(lambda: defer.ensureDeferred(
            join(reactor, Address(host, int(port)), options.token, f"sim-{options.index}-{n}", ca_pins=(options.pin,))))

    identities = await defer.gatherResults([joined(n) for n in range(options.count)], consumeErrors=True)
    print(f"joined {len(identities)}", flush=True)

    def refuse(kind: str, metadata: dict):
        raise StreamRejected("a simulated agent serves nothing")

    def up(n: int) -> None:
        print(f"up {options.index} {n} {reactor.seconds():.6f}", flush=True)

    for n, identity in enumerate(identities):
        pool = AgentPool(reactor, Address(host, int(port)), identity,
                         clusters=[{"name": f"sim-{options.index}-{n}", "labels": {}}],
                         accept_stream=refuse, on_up=lambda n=n: up(n))
        pool.start()
        if n % 50 == 49:  # the first connections spread a little: not measured
            await task.deferLater(reactor, 0.2, lambda: None)
    await defer.Deferred()  # until killed


# -- the parent -------------------------------------------------------------------------

def listen_overflows() -> int:
    """The host's TcpExt ListenOverflows: connections dropped because a
    listening socket's accept queue (its backlog) was full."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1]))["ListenOverflows"])


def run_queue_wait(pid: int) -> float:
    """Seconds the process has spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def up_times(workers) -> dict[tuple[int, int], list[float]]:
    """Every announce accepted, per simulated agent, from the workers' logs."""
    seen: dict[tuple[int, int], list[float]] = {}
    for proc in workers:
        for index, n, when in UP_LINE.findall(proc.output()):
            seen.setdefault((int(index), int(n)), []).append(float(when))
    return seen


async def wait_for(reactor, condition, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise RuntimeError(f"{what} not within {timeout:.0f}s")
        await task.deferLater(reactor, interval, lambda: None)


async def measure(reactor, options) -> dict:
    from tests.e2e import Deployment, tool
    from tests.support.procs import free_port

    harness = Harness(tempfile.mkdtemp(prefix="bench_reconnect."))
    d = Deployment(harness, harness.root)
    try:
        auth_port, proxy_port = free_port(), free_port()
        d.config = d.write("auth.yaml", (
            "version: v3\nteleport:\n  nodename: auth\n"
            f"  data_dir: {d.path('auth-data')}\n"
            f"auth_service: {{listen_addr: '127.0.0.1:{auth_port}', cluster_name: example}}\n"
            "proxy_service: {enabled: false}\n"))
        auth = d.spawn("auth", [tool("twistd"), "--pidfile=", "-n", "teleport-auth", "--config", d.config])
        await auth.wait_for_port(auth_port, 90)
        pin = re.search(r"sha256:[0-9a-f]{64}", (await d.tctl("status")).out).group(0)
        proxy_token = (await d.tctl("tokens", "add", "--type=proxy", "--format=text")).out.strip()
        kube_token = (await d.tctl("tokens", "add", "--type=kube", "--format=text", "--ttl=2h")).out.strip()
        proxy_config = d.write("proxy.yaml", (
            "version: v3\nteleport:\n  nodename: proxy\n"
            f"  data_dir: {d.path('proxy-data')}\n"
            f"  auth_servers: ['127.0.0.1:{auth_port}']\n  ca_pin: {pin}\n"
            f"  join_params: {{token_name: {proxy_token}}}\n"
            "auth_service: {enabled: false}\n"
            f"proxy_service: {{web_listen_addr: '127.0.0.1:{proxy_port}'}}\n"))
        proxy_args = [tool("twistd"), "--pidfile=", "-n", "teleport-proxy", "--config", proxy_config]
        proxy = d.spawn("proxy", proxy_args)
        await proxy.wait_for_port(proxy_port, 90)

        counts = [options.agents // options.workers + (i < options.agents % options.workers)
                  for i in range(options.workers)]
        workers = [d.spawn(f"worker{i}", [sys.executable, os.path.abspath(__file__), "--worker", f"--index={i}",
                                          f"--count={count}", f"--proxy=127.0.0.1:{proxy_port}",
                                          f"--token={kube_token}", f"--pin={pin}"])
                   for i, count in enumerate(counts)]
        if options.nice:
            for pid in [proxy.pid] + [w.pid for w in workers]:
                os.setpriority(os.PRIO_PROCESS, pid, options.nice)
        started = reactor.seconds()
        await wait_for(reactor, lambda: len(up_times(workers)) >= options.agents, 900, "all agents up at first")
        first_up = reactor.seconds() - started
        print(f"{options.agents} agents up after {first_up:.1f}s (joins included); proxy RSS {rss_kib(proxy.pid)} KiB")
        await task.deferLater(reactor, 3, lambda: None)
        idle_before = cpu_seconds(proxy.pid)
        await task.deferLater(reactor, 2, lambda: None)
        idle_rate = (cpu_seconds(proxy.pid) - idle_before) / 2

        killed = reactor.seconds()
        await proxy.kill9()
        proxy = d.spawn("proxy", proxy_args)
        if options.nice:
            os.setpriority(os.PRIO_PROCESS, proxy.pid, options.nice)
        await proxy.wait_for_port(proxy_port, 90)
        ready = reactor.seconds()
        samples: list[tuple[float, float]] = [(ready, cpu_seconds(proxy.pid))]
        overflows, waited = listen_overflows(), run_queue_wait(proxy.pid)
        workers_cpu = sum(cpu_seconds(w.pid) for w in workers)

        def all_back() -> bool:
            samples.append((reactor.seconds(), cpu_seconds(proxy.pid)))
            return sum(any(t > killed for t in times) for times in up_times(workers).values()) >= options.agents

        await wait_for(reactor, all_back, 300, "all agents back after the restart", interval=CPU_INTERVAL)
        done = reactor.seconds()
        overflows, waited = listen_overflows() - overflows, run_queue_wait(proxy.pid) - waited
        workers_cpu = sum(cpu_seconds(w.pid) for w in workers) - workers_cpu
        await task.deferLater(reactor, 2, lambda: None)
        back = sorted(min(t for t in times if t > killed) - ready for times in up_times(workers).values())
        rates = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in zip(samples, samples[1:]) if t1 > t0]
        per_second: dict[int, int] = {}
        for t in back:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        return {
            "agents": options.agents,
            "workers": options.workers,
            "first_up_s": round(first_up, 1),
            "proxy_start_s": round(ready - killed, 2),
            "all_back_after_ready_s": round(back[-1], 2),
            "all_back_after_kill_s": round(back[-1] + ready - killed, 2),
            "back_p50_s": round(statistics.median(back), 2),
            "back_p90_s": round(back[int(len(back) * 0.9)], 2),
            "first_back_s": round(back[0], 2),
            "within_goal": back[-1] <= GOAL_SECONDS,
            "reconnects_per_second": [per_second.get(s, 0) for s in range(int(back[-1]) + 1)],
            "proxy_cpu_idle_with_all": round(idle_rate, 3),
            "proxy_cpu_during_reconnect": round((samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]), 3),
            "proxy_cpu_max_half_second": round(max(rates), 3) if rates else None,
            "proxy_rss_kib_after": rss_kib(proxy.pid),
            # The simulated agents' own CPU (all workers, one core = 1.0):
            # near the number of workers means they, not the proxy, set the pace.
            "workers_cpu_during_reconnect": round(workers_cpu / (done - ready), 3),
            "measured_until_s": round(done - ready, 2),
            # Dropped SYNs (the whole host's count; the client retransmits
            # after 1, 3, 7 s) and the proxy's time runnable but not running
            # (the machine's other load), per second of the reconnects.
            "listen_overflows": overflows,
            "proxy_run_queue_wait": round(waited / (done - ready), 3),
            "nice": options.nice,
            "load_average": os.getloadavg(),
        }
    finally:
        await harness.close(keep=options.keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    parser.add_argument("--nice", type=int, default=0,
                        help="scheduling priority of the proxy and the workers (e.g. -10, as root: on a shared "
                             "machine, closer to each on a host of its own)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--proxy", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--pin", help=argparse.SUPPRESS)
    parser.add_argument("--join-concurrency", type=int, default=8, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        task.react(lambda reactor: defer.ensureDeferred(worker(reactor, options)))
        return

    def run(reactor):
        return defer.ensureDeferred(measure(reactor, options)).addCallback(
            lambda results: print(json.dumps(results, indent=1)))

    task.react(run)


if __name__ == "__main__":
    main()
