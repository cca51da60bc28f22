"""Bytes through teleport_py against straight to the API server, in one run
(issue 12, goal 3): a 20 MiB LIST, exec stdout and port-forward.

One deployment (tests/e2e.py: ``twistd`` auth+proxy and agent, kube-apiserver
1.20.2, the kubelet stand-in of tests/support/kubelet.py in this process).
Every round measures each metric on both paths back to back (direct first,
then teleport_py), so a change in the machine's speed moves both; the ratio
reported is the median of the rounds' own ratios, with every round shown:

- ``LIST``: ``GET`` of 200 ConfigMaps of 100 KiB (19.6 MiB) with a blocking
  HTTP/1.1 client (bench/kube_path.py's: direct with an admin certificate,
  teleport_py with alice's kube certificate and the kube SNI), median of
  ``--list-repeats`` LISTs on new connections; ``LIST h2`` the same as
  client-go sends it when the server offers h2;
- ``exec``: ``kubectl exec POD -- head -c N /dev/zero``, MiB/s of stdout
  (recorded in full by the agent, as by default);
- ``port-forward``: ``kubectl port-forward`` and one connection echoing N/2
  MiB through a local echo server, MiB/s each way.

Each teleport_py phase also gives the CPU the proxy (auth+proxy process) and
the agent spent per MiB moved, less their idle rate. ``--profile DIR`` adds a
last round whose teleport_py phases are sampled by py-spy in blocking mode
(DIR/<phase>-<process>.txt; summary by bench/profile_summary.py); the
profiled round is not in the ratios.

    TELEPORT_PY_KUBE_BIN=... PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/bulk_bytes.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, protocol, task, threads  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.protocols.wire import Echo  # noqa: E402

from bench.exec_throughput import _exec_throughput, _port_forward_throughput, _recordings_uploaded  # noqa: E402
from bench.h2client import KUBECTL_ALPN  # noqa: E402
from bench.kube_path import KUBE_SNI, NAMESPACE, Target, create_configmaps, idle_cpu_rate, tls_context  # noqa: E402
from bench.profile_summary import summarize  # noqa: E402
from bench.support import Harness, Sampled, cpu_seconds  # noqa: E402
from tests.e2e import KUBE_ACCESS_ROLE, Deployment  # noqa: E402
from tests.support.kubeenv import create_running_pod, kubectl_binaries, register_node  # noqa: E402
from tests.support.kubelet import KubeletStandin  # noqa: E402
from tests.support.session_roles import SESSIONS_RBAC, SESSIONS_ROLE  # noqa: E402

PATHS = ("direct", "teleport_py")


def list_seconds(target: Target, repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` LISTs, each on a new connection, and MiB."""
    times, size = [], 0
    for _ in range(repeats):
        connection = target.connect()
        started = time.perf_counter()
        size = len(connection.fetch("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps"))
        times.append(time.perf_counter() - started)
        connection.close()
    return statistics.median(times), size / 2**20


class Phase:
    """CPU seconds of the proxy and the agent over one phase, less their
    idle rate; with a directory, py-spy samples them in blocking mode."""

    def __init__(self, reactor, pids, idle, profile_dir, name):
        self.pids, self.idle = pids, idle
        self.sampled = Sampled(reactor, profile_dir, name, pids, blocking=True)

    def __enter__(self):
        self.sampled.__enter__()
        self.started = time.monotonic()
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc_info):
        elapsed = time.monotonic() - self.started
        self.cpu = {name: cpu_seconds(pid) - self.before[name] - self.idle[name] * elapsed
                    for name, pid in self.pids.items()}
        self.sampled.__exit__(*exc_info)


async def setup(reactor, harness: Harness, list_mib: int):
    d = await Deployment(harness, harness.root).start()
    await d.plane.apply(SESSIONS_RBAC)
    await d.tctl("create", "-f", d.write("sessions.yaml", SESSIONS_ROLE))
    await d.tctl("create", "-f", d.write("kube-access.yaml", KUBE_ACCESS_ROLE))
    await d.add_user("alice", "access")
    await d.tctl("users", "update", "alice", "--set-roles=access,kube-access,kube-sessions")
    await d.login("alice")
    await d.wait_for_clusters({"my-cluster"})
    await d.tsh("kube", "login", "my-cluster")
    os.makedirs(d.path("pod-root"))
    standin = KubeletStandin(reactor, d.path("pod-root"), websocket=True)
    harness.addCleanup(standin.stop)
    await register_node(d.plane, "bench-node", await standin.start())
    await create_running_pod(d.plane, "bench-pod", "default", "bench-node")
    echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Echo))
    harness.addCleanup(echo.stopListening)
    binary = kubectl_binaries()[-1]
    await d.kubectl("exec", "bench-pod", "--", "true", binary=binary)  # issues alice's kube certificate

    keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
    admin = d.plane.issue_client_certificate("bench-admin", ("system:masters",))
    admin_files = (d.write("apiserver-ca.pem", d.plane.serving_ca.cert_pem.decode()),
                   d.write("admin.pem", admin.cert_pem.decode()), d.write("admin-key.pem", admin.key_pem.decode()))
    alice_files = (os.path.join(keys, "host_ca.pem"), os.path.join(keys, "kube", "my-cluster", "cert.pem"),
                   os.path.join(keys, "key.pem"))
    targets = {
        ("LIST", "direct"): Target("direct", d.plane.port, tls_context(*admin_files), "127.0.0.1"),
        ("LIST", "teleport_py"): Target("teleport", d.proxy_port, tls_context(*alice_files), KUBE_SNI),
        ("LIST h2", "direct"): Target("direct-h2", d.plane.port, tls_context(*admin_files, KUBECTL_ALPN),
                                      "127.0.0.1", h2=True),
        ("LIST h2", "teleport_py"): Target("teleport-h2", d.proxy_port, tls_context(*alice_files, KUBECTL_ALPN),
                                           KUBE_SNI, h2=True),
    }
    await threads.deferToThread(create_configmaps, targets["LIST", "direct"], list_mib)
    envs = {"direct": dict(d.env(), KUBECONFIG=d.plane.admin_kubeconfig), "teleport_py": d.env()}
    return d, targets, envs, binary, echo.getHost().port


async def one_round(reactor, d, targets, envs, binary, echo_port, options, idle, profile_dir=None) -> dict:
    """Each metric on both paths, direct first: {metric: {path: (value, {process: cpu s}, MiB)}}."""
    pids = {"proxy": d.main.pid, "agent": d.agent.pid}
    size = options.mb * 2**20
    results: dict = {}
    for metric in ("LIST", "LIST h2", "exec", "port-forward"):
        for path in PATHS:
            await _recordings_uploaded(reactor, d)
            profiled = profile_dir if path == "teleport_py" else None
            with Phase(reactor, pids, idle, profiled, metric.replace(" ", "-")) as phase:
                if metric.startswith("LIST"):
                    seconds, mib = await threads.deferToThread(list_seconds, targets[metric, path], options.list_repeats)
                    value, moved = seconds, mib * options.list_repeats
                elif metric == "exec":
                    value = await _exec_throughput(reactor, binary, envs[path], "bench-pod", size)
                    moved = options.mb
                    await _recordings_uploaded(reactor, d)  # storing the recording is part of its cost
                else:
                    value = await _port_forward_throughput(reactor, binary, envs[path], "bench-pod", echo_port, size // 2)
                    moved = options.mb  # half each way
            results.setdefault(metric, {})[path] = (value, phase.cpu, moved)
    return results


def ratio(metric: str, by_path: dict) -> float:
    """teleport_py's cost against direct's: time for a LIST, throughput otherwise."""
    direct, through = by_path["direct"][0], by_path["teleport_py"][0]
    return through / direct


def report(rounds: list[dict], loads: list, options) -> str:
    lines = [f"load average at each round's start: " + ", ".join(f"{l[0]:.1f}" for l in loads)
             + f"; at the end {os.getloadavg()[0]:.1f}"]
    goals = {"LIST": ("x direct (time)", "<= 1.1"), "LIST h2": ("x direct-h2 (time)", "<= 1.1"),
             "exec": ("x direct (MiB/s)", ">= 0.7"), "port-forward": ("x direct (MiB/s each way)", ">= 0.7")}
    for metric, (unit, goal) in goals.items():
        ratios = [ratio(metric, r[metric]) for r in rounds]
        values = " / ".join(
            f"{r[metric]['direct'][0]:.3f}->{r[metric]['teleport_py'][0]:.3f}" if metric.startswith("LIST")
            else f"{r[metric]['direct'][0]:.1f}->{r[metric]['teleport_py'][0]:.1f}" for r in rounds)
        cpu = {process: statistics.median(1000 * r[metric]["teleport_py"][1][process] / r[metric]["teleport_py"][2]
                                          for r in rounds) for process in ("proxy", "agent")}
        lines.append(
            f"{metric:13} median ratio {statistics.median(ratios):.2f} {unit} (goal {goal}); rounds "
            + ", ".join(f"{x:.2f}" for x in ratios) + f"; {'s' if metric.startswith('LIST') else 'MiB/s'} "
            + values + "; CPU ms per MiB through teleport_py: "
            + ", ".join(f"{process} {ms:.1f}" for process, ms in cpu.items()))
    return "\n".join(lines)


async def main(reactor, options):
    harness = Harness(tempfile.mkdtemp(prefix="bulk_bytes."))
    try:
        d, targets, envs, binary, echo_port = await setup(reactor, harness, options.list_mib)
        idle = await idle_cpu_rate(reactor, {"proxy": d.main.pid, "agent": d.agent.pid})
        rounds, loads = [], []
        for number in range(options.rounds):
            loads.append(os.getloadavg())
            rounds.append(await one_round(reactor, d, targets, envs, binary, echo_port, options, idle))
            print(f"round {number + 1}: " + ", ".join(
                f"{metric} {ratio(metric, r):.2f}" for metric, r in rounds[-1].items()), flush=True)
        print(report(rounds, loads, options), flush=True)
        if options.json:
            with open(options.json, "w") as f:
                json.dump({"rounds": rounds, "loads": loads}, f, indent=1)
        if options.profile:
            await one_round(reactor, d, targets, envs, binary, echo_port, options, idle, options.profile)
            await task.deferLater(reactor, 5, lambda: None)  # py-spy writes its stacks once stopped
            for name in sorted(os.listdir(options.profile)):
                total, parts = summarize(os.path.join(options.profile, name))
                print(f"{name}: {total} samples on CPU: " + ", ".join(
                    f"{part} {100 * count / max(total, 1):.0f} %" for part, count in parts.most_common()))
    except BaseException:
        await harness.close(keep=True)
        raise
    await harness.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200, help="MiB through exec (half of it each way for port-forward)")
    parser.add_argument("--list-mib", type=int, default=20, help="size of the LIST, MiB")
    parser.add_argument("--list-repeats", type=int, default=5, help="LISTs per path and round (median)")
    parser.add_argument("--profile", metavar="DIR", help="a last, profiled round (py-spy, blocking mode)")
    parser.add_argument("--json", help="also write the raw results here")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
