"""A small kubectl GET through a deployment of two proxies against one of one proxy.

Two deployments of tests/support/ha.py run at once (each: 3 etcd members,
2 auth servers, 2 agents serving one cluster of the same kube-apiserver),
one with one proxy, one with two. ``kubectl get namespace default`` (a
small GET, alice's kube certificate in the kubeconfig, no exec plugin:
bench/kubectl_command.py's ``teleport-cert``) runs in turns through the
single proxy, the first of the two and the second of the two, so a drift in
the machine's speed moves all alike; medians (p50) and p90 of wall time.

Run from the repository root:

    TELEPORT_PY_KUBE_BIN=$HOME/.cache/teleport_py/kube-1.20.2/bin \\
    PATH=$PWD/.venv/bin:$TELEPORT_PY_KUBE_BIN:$PATH .venv/bin/python bench/ha_kubectl_get.py [--runs 60]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402

from bench.kubectl_command import certificate_kubeconfig, timed  # noqa: E402
from bench.support import Harness  # noqa: E402
from tests.e2e import KUBE_ACCESS_ROLE, PASSWORD  # noqa: E402
from tests.support.ha import HADeployment  # noqa: E402
from tests.support.kubeenv import kubectl_binaries  # noqa: E402


async def deployment(harness: Harness, name: str, proxies: int) -> HADeployment:
    d = await HADeployment(harness, os.path.join(harness.root, name), proxies=proxies).start()
    await d.tctl("create", "-f", d.write("kube-access.yaml", KUBE_ACCESS_ROLE))
    await d.add_user("alice", "access")
    await d.tctl("users", "update", "alice", "--set-roles=access,kube-access")
    await d.login_everywhere("alice", PASSWORD)
    return d


def small_gets(runs: int, commands: dict) -> dict:
    """Each command ``runs`` times in turns, after two uncounted turns."""
    walls = {name: [] for name in commands}
    for turn in range(runs + 2):
        for name, (argv, env) in commands.items():
            wall, _ = timed(argv, env)
            if turn >= 2:
                walls[name].append(wall)
    return {name: {"p50_ms": round(statistics.median(w) * 1000, 1),
                   "p90_ms": round(sorted(w)[int(len(w) * 0.9)] * 1000, 1),
                   "min_ms": round(min(w) * 1000, 1)} for name, w in walls.items()}


async def measure(reactor, options) -> dict:
    harness = Harness(tempfile.mkdtemp(prefix="bench_ha_get."))
    try:
        one = await deployment(harness, "one", 1)
        two = await deployment(harness, "two", 2)
        binary = kubectl_binaries()[-1]
        commands = {}
        for label, d, i in (("one proxy", one, 0), ("two proxies, via the first", two, 0),
                            ("two proxies, via the second", two, 1)):
            env = d.env(i)
            kubeconfig = certificate_kubeconfig(env["HOME"], env["KUBECONFIG"], d.path(f"cert{i}.kubeconfig"))
            argv = [binary, f"--kubeconfig={kubeconfig}", "get", "namespace", "default", "-o", "name"]
            # The agents learn the second proxy from the first's discovery
            # (its heartbeat every 10 s), then dial it: wait for that.
            for attempt in range(120):
                try:
                    await threads.deferToThread(timed, argv, env)
                    commands[label] = (argv, env)
                    break
                except RuntimeError as e:
                    failure = str(e)[-300:]
                    await task.deferLater(reactor, 0.5, lambda: None)
            else:
                print(f"{label}: not measured, kubectl fails after 60 s: {failure}")
        results = await threads.deferToThread(small_gets, options.runs, commands)
        if "one proxy" in results:
            base = results["one proxy"]["p50_ms"]
            for name, r in results.items():
                r["p50_ratio_to_one_proxy"] = round(r["p50_ms"] / base, 3)
        return {"runs": options.runs, "kubectl": binary, "load_average": os.getloadavg(), "results": results}
    finally:
        await harness.close(keep=options.keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(measure(reactor, options)).addCallback(
        lambda results: print(json.dumps(results, indent=1))))


if __name__ == "__main__":
    main()
