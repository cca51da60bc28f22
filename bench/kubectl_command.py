"""A whole kubectl command, direct and through teleport_py, in one run.

What a person waits for: ``kubectl get ns`` from start to exit, each kubectl
build (the pinned 1.37 in the venv and the machine's 1.32), timed side by
side in turns (direct, teleport, direct, teleport, ...) so that a drift in
the machine's speed moves both:

- ``direct``: the API server's admin kubeconfig (client certificate, no plugin);
- ``teleport``: the kubeconfig ``tsh kube login`` writes (the exec plugin
  ``tsh kube credentials``, then the proxy, the tunnel and the agent);
- ``teleport-cert``: the same path with alice's kube certificate written into
  the kubeconfig (no exec plugin): what the proxy path alone adds;
- ``teleport-cat``: the same path with ``/bin/cat FILE`` as the exec plugin,
  FILE holding the ExecCredential tsh printed: kubectl's own cost of running
  an exec plugin at all, the floor for any plugin;
- ``teleport-compared`` (with ``--compare-tsh PATH``): the ``teleport``
  kubeconfig with PATH as the exec command (another build of tsh, e.g. the
  one before a change), measured in the same turns.

And the exec plugin alone as kubectl runs it, against ``python -c pass``
(the interpreter's own start-up) as the yardstick.

Every figure is the median over ``--runs`` runs of wall time (a monotonic
clock around the child) and the child's CPU (user + system, from
``getrusage``); ratios are of medians of the same run. With ``--hold N`` the
deployment stays up N seconds after the measurement, its commands and
environment printed, to time them with any other tool.

Run from the repository root:

    TELEPORT_PY_KUBE_BIN=$HOME/.cache/teleport_py/kube-1.20.2/bin \\
    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/kubectl_command.py [--runs 20]

``--profile DIR`` also needs py-spy in the venv (``.venv/bin/pip install py-spy``;
a benchmarking tool, not a dependency of teleport_py), and the right to
attach to the processes (root, or ptrace allowed).
"""
from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402

from bench.kube_path import idle_cpu_rate  # noqa: E402
from bench.support import Harness, Sampled, cpu_seconds  # noqa: E402
from tests.e2e import Deployment  # noqa: E402
from tests.support.kubeenv import kubectl_binaries  # noqa: E402

KUBE_CLUSTER = "my-cluster"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def in_turns(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int, warmup: int = 2) -> dict:
    """Each command ``runs`` times, in turns, after ``warmup`` uncounted turns."""
    for _ in range(warmup):
        for argv, env in commands.values():
            timed(argv, env)
    samples = {name: ([], []) for name in commands}
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            wall, cpu = timed(argv, env)
            samples[name][0].append(wall)
            samples[name][1].append(cpu)
    return {name: {"wall_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
                   "cpu_s": statistics.median(cpus)}
            for name, (walls, cpus) in samples.items()}


def certificate_kubeconfig(home: str, kubeconfig: str, path: str) -> str:
    """The kubeconfig ``tsh kube login`` wrote in ``home`` (``kubeconfig``)
    with alice's kube certificate and key in place of the exec plugin."""
    keys = glob.glob(os.path.join(home, ".tsh", "keys", "*", "alice"))[0]
    with open(kubeconfig) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(keys, "kube", KUBE_CLUSTER, "cert.pem"), "rb") as cert, \
            open(os.path.join(keys, "key.pem"), "rb") as key:
        user = {"client-certificate-data": base64.b64encode(cert.read()).decode(),
                "client-key-data": base64.b64encode(key.read()).decode()}
    for entry in config["users"]:
        entry["user"] = user
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    os.chmod(path, 0o600)
    return path


def exec_plugin(d: Deployment, command: str | None = None) -> list[str]:
    """The plugin as the kubeconfig says kubectl must run it (``command`` in place of its tsh)."""
    with open(d.kubeconfig) as f:
        plugin = yaml.safe_load(f)["users"][0]["user"]["exec"]
    return [command or plugin["command"], *plugin["args"]]


def plugin_kubeconfig(d: Deployment, path: str, command: str, args: list[str] | None = None) -> str:
    """The ``tsh kube login`` kubeconfig with ``command`` (and ``args``) as the exec plugin."""
    with open(d.kubeconfig) as f:
        config = yaml.safe_load(f)
    for entry in config["users"]:
        entry["user"]["exec"]["command"] = command
        if args is not None:
            entry["user"]["exec"]["args"] = args
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    os.chmod(path, 0o600)
    return path


async def measure(reactor, options) -> dict:
    harness = Harness(tempfile.mkdtemp(prefix="bench_kubectl_command."))
    results = {"load_before": os.getloadavg(), "kubectl": {}}
    try:
        d = await Deployment(harness, harness.root).start()
        await d.login_with_kube_access("alice")
        await d.wait_for_clusters({KUBE_CLUSTER})
        await d.tsh("kube", "login", KUBE_CLUSTER)
        env = d.env()
        with_cert = certificate_kubeconfig(d.home, d.kubeconfig, d.path("certificate.kubeconfig"))
        printed = d.path("exec-credential.json")
        with open(os.open(printed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(subprocess.run(exec_plugin(d), env=env, capture_output=True, check=True).stdout)
        kubeconfigs = {"direct": d.plane.admin_kubeconfig, "teleport": d.kubeconfig, "teleport-cert": with_cert,
                       "teleport-cat": plugin_kubeconfig(d, d.path("cat.kubeconfig"), "/bin/cat", [printed])}
        plugins = {"tsh kube credentials": (exec_plugin(d), env),
                   "python -c pass": ([sys.executable, "-c", "pass"], env)}
        if options.compare_tsh:
            kubeconfigs["teleport-compared"] = plugin_kubeconfig(
                d, d.path("compared.kubeconfig"), options.compare_tsh)
            plugins["compared tsh kube credentials"] = (exec_plugin(d, options.compare_tsh), env)
        results["cache_written"] = bool(glob.glob(d.path("home", ".tsh", "keys", "*", "*", "kube", KUBE_CLUSTER,
                                                         "credential.json")))
        for kubectl in kubectl_binaries():
            version = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, check=True)
            name = json.loads(version.stdout)["clientVersion"]["gitVersion"]
            print(f"kubectl {name}: get ns, {options.runs} runs in turns", file=sys.stderr)
            commands = {path: ([kubectl, f"--kubeconfig={kubeconfig}", "get", "ns"], env)
                        for path, kubeconfig in kubeconfigs.items()}
            results["kubectl"][name] = await threads.deferToThread(in_turns, commands, options.runs)
            results["commands"] = {path: shlex.join(argv) for path, (argv, _) in commands.items()}
        print("the exec plugin alone", file=sys.stderr)
        results["plugin"] = await threads.deferToThread(in_turns, plugins, options.runs)
        results["plugin_commands"] = {name: shlex.join(argv) for name, (argv, _) in plugins.items()}
        if options.profile:
            print(f"profile: {options.profile_runs} commands each, CPU per process, then py-spy", file=sys.stderr)
            results["profile"] = await profile_path(reactor, d, commands, options)
        results["load_after"] = os.getloadavg()
        if options.hold:
            print(report(results), flush=True)
            print(f"\nholding the deployment {options.hold:.0f} s; the commands' environment:", flush=True)
            for key, value in env.items():
                print(f"export {key}={shlex.quote(value)}", flush=True)
            for name, command in {**results["commands"], **results["plugin_commands"]}.items():
                print(f"{name}: {command}", flush=True)
            await task.deferLater(reactor, options.hold, lambda: None)
    finally:
        await harness.close()
    return results


async def profile_path(reactor, d: Deployment, commands: dict, options) -> dict:
    """CPU per ``kubectl get ns`` of each process on the path, direct and
    through teleport_py (the kubeconfig with the certificate: the exec
    plugin is measured apart), the requests one command makes, and py-spy
    stacks (blocking mode) of the proxy and the agent during the teleport runs."""
    pids = {"proxy (auth+proxy process)": d.main.pid, "agent": d.agent.pid, "apiserver": d.plane.apiserver.pid}
    result = {}

    def loop(argv, env, count):
        for _ in range(count):
            timed(argv, env)

    for path in ("direct", "teleport-cert"):
        argv, env = commands[path]
        requests_before = len(await d.events("kube.request"))
        idle = await idle_cpu_rate(reactor, pids)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        await threads.deferToThread(loop, argv, env, options.profile_runs)
        elapsed = time.monotonic() - started
        result[path] = {
            "cpu_ms_per_command": {name: 1000 * (cpu_seconds(pid) - before[name] - idle[name] * elapsed)
                                   / options.profile_runs for name, pid in pids.items()},
            "kube_requests_per_command": (len(await d.events("kube.request")) - requests_before)
            / options.profile_runs,
        }
    argv, env = commands["teleport-cert"]
    python = {name: pid for name, pid in pids.items() if name != "apiserver"}
    with Sampled(reactor, options.profile, "kubectl-get-ns", python, rate=options.profile_rate, blocking=True):
        await threads.deferToThread(loop, argv, env, options.profile_runs)
    await task.deferLater(reactor, 5, lambda: None)  # py-spy writes its file once interrupted
    result["busy_shares"] = {name: summarize_stacks(os.path.join(options.profile, f"kubectl-get-ns-{name}.txt"))
                             for name in python}
    return result


#: A sample whose innermost frame is a socket system call (send, recv,
#: accept, epoll_ctl) is counted as such, whoever made it.
SYSCALL_LEAVES = ("untilConcludes (twisted/python/util.py", "Connection.doRead (twisted/internet/tcp.py:278)",
                  "socket.accept (", "EPollReactor._add (", "EPollReactor._remove (")
#: Otherwise its share goes to the first of these found anywhere in its stack
#: (a TLS read inside the tunnel's code is TLS; json inside audit is audit).
CATEGORIES = (
    ("TLS handshake", ("do_handshake",)),
    ("TLS records", ("OpenSSL/SSL.py",)),
    ("identity from certificate", ("teleport_py/pki/",)),
    ("audit (events, spool, upload, Auth's store)", (
        "teleport_py/kube/audit", "teleport_py/kube/event_spool", "teleport_py/uploader", "teleport_py/events",
        "teleport_py/disk", "teleport_py/backend", "teleport_py/auth/audit")),
    ("authorization", ("teleport_py/kube/authorize", "teleport_py/rbac/")),
    ("Auth API (twisted.web)", ("teleport_py/auth/", "twisted/web/")),
    ("HTTP/1.1 (h11)", ("h11/",)),
    ("HTTP/2 (h2)", ("h2/", "hpack/", "hyperframe/")),
    ("tunnel", ("teleport_py/tunnel/",)),
    ("kube relay", ("teleport_py/kube/",)),
    ("proxy", ("teleport_py/proxy/",)),
    ("Twisted (reactor, TCP, Deferreds, logging)", ("twisted/",)),
)
#: Where a thread waits: not work.
IDLE_LEAVES = ("Condition.wait (", "EPollReactor.doPoll (twisted/internet/epollreactor.py:227)", "sleep (")


def summarize_stacks(path: str) -> dict[str, float]:
    """Each category's share of the busy samples in py-spy's raw output
    (``frame;frame;... count`` lines, every thread), waiting leaves left out.
    Shares, not times: blocking mode stops the process for every sample, so
    sample counts overstate time; the measured CPU per command gives the scale."""
    busy = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or stack.rsplit(";", 1)[-1].startswith(IDLE_LEAVES):
                continue
            if stack.rsplit(";", 1)[-1].startswith(SYSCALL_LEAVES):
                category = "socket system calls"
            else:
                category = next((name for name, needles in CATEGORIES if any(n in stack for n in needles)), "other")
            busy[category] = busy.get(category, 0) + int(count)
    total = sum(busy.values()) or 1
    return {name: samples / total for name, samples in sorted(busy.items(), key=lambda i: -i[1])}


def report(results: dict) -> str:
    lines = [f"load average before {results['load_before']}, after {results.get('load_after')}",
             f"credential cache written by tsh kube login: {results['cache_written']}"]
    for version, paths in results["kubectl"].items():
        direct = paths["direct"]
        for path, r in paths.items():
            lines.append(
                f"kubectl {version:10} get ns  {path:18} wall median {r['wall_s'] * 1000:6.1f} ms "
                f"(min {r['wall_min_s'] * 1000:.1f}, max {r['wall_max_s'] * 1000:.1f})  "
                f"{r['wall_s'] / direct['wall_s']:.2f}x direct  cpu {r['cpu_s'] * 1000:.1f} ms")
    profile = dict(results.get("profile", {}))
    shares = profile.pop("busy_shares", {})
    for path, r in profile.items():
        lines.append(f"{path}: {r['kube_requests_per_command']:.1f} kube requests per command (audit), CPU ms per "
                     "command " + ", ".join(f"{name} {ms:.2f}" for name, ms in r["cpu_ms_per_command"].items()))
    for process, categories in shares.items():
        cpu_ms = profile["teleport-cert"]["cpu_ms_per_command"][process]
        lines.append(f"py-spy (blocking), {process}: share of busy samples (x {cpu_ms:.2f} CPU ms per command): "
                     + ", ".join(f"{name} {100 * share:.0f} % ({share * cpu_ms:.2f} ms)"
                                 for name, share in categories.items()))
    for name, r in results["plugin"].items():
        lines.append(f"{name:32} wall median {r['wall_s'] * 1000:6.1f} ms (min {r['wall_min_s'] * 1000:.1f}, "
                     f"max {r['wall_max_s'] * 1000:.1f})  cpu {r['cpu_s'] * 1000:.1f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="counted runs of each command")
    parser.add_argument("--compare-tsh", metavar="PATH", help="another tsh to measure as the exec plugin, same turns")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--profile", metavar="DIR", help="CPU per command of each process and py-spy stacks "
                        "(blocking mode) of the proxy and the agent, DIR/kubectl-get-ns-<process>.txt")
    parser.add_argument("--profile-runs", type=int, default=100)
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--hold", type=float, default=0, metavar="SECONDS",
                        help="keep the deployment up this long after measuring")
    options = parser.parse_args()

    def run(reactor):
        return defer.ensureDeferred(measure(reactor, options)).addCallback(done)

    def done(results):
        if options.json:
            with open(options.json, "w") as f:
                json.dump(results, f, indent=2)
        print(report(results))

    task.react(run)


if __name__ == "__main__":
    main()
