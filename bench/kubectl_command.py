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

from bench.support import Harness  # noqa: E402
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


def certificate_kubeconfig(d: Deployment, path: str) -> str:
    """The ``tsh kube login`` kubeconfig with alice's kube certificate and key in place of the exec plugin."""
    keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
    with open(d.kubeconfig) as f:
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


def compared_kubeconfig(d: Deployment, path: str, command: str) -> str:
    with open(d.kubeconfig) as f:
        config = yaml.safe_load(f)
    for entry in config["users"]:
        entry["user"]["exec"]["command"] = command
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
        with_cert = certificate_kubeconfig(d, d.path("certificate.kubeconfig"))
        kubeconfigs = {"direct": d.plane.admin_kubeconfig, "teleport": d.kubeconfig, "teleport-cert": with_cert}
        plugins = {"tsh kube credentials": (exec_plugin(d), env),
                   "python -c pass": ([sys.executable, "-c", "pass"], env)}
        if options.compare_tsh:
            kubeconfigs["teleport-compared"] = compared_kubeconfig(
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
        results["load_after"] = os.getloadavg()
        if options.hold:
            print(report(results), flush=True)
            print(f"\nholding the deployment {options.hold:.0f} s; the commands' environment:", flush=True)
            for key, value in env.items():
                print(f"export {key}={shlex.quote(value)}", flush=True)
            await task.deferLater(reactor, options.hold, lambda: None)
    finally:
        await harness.close()
    return results


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
    for name, r in results["plugin"].items():
        lines.append(f"{name:32} wall median {r['wall_s'] * 1000:6.1f} ms (min {r['wall_min_s'] * 1000:.1f}, "
                     f"max {r['wall_max_s'] * 1000:.1f})  cpu {r['cpu_s'] * 1000:.1f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="counted runs of each command")
    parser.add_argument("--compare-tsh", metavar="PATH", help="another tsh to measure as the exec plugin, same turns")
    parser.add_argument("--json", help="also write the raw results here")
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
