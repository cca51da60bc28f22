"""CPU per small GET in the agent and the auth+proxy process, and nothing else.

bench/kube_path.py measures this among many other things and takes minutes;
comparing one change against the code before it needs the same figure
repeated quickly, in back-to-back runs on a shared machine. One deployment
(tests/e2e.py, real processes), then ``--rounds`` rounds of ``--requests``
sequential keep-alive GETs over HTTP/1.1 (and h2 unless ``--no-h2``), each
counted from /proc exactly as bench/kube_path.py counts it: the process's
CPU less its idle rate over the same time, divided by the requests.

``--compare-with DIR`` also deploys a second auth+proxy and agent whose
processes import ``teleport_py`` from DIR (a checkout of the code before a
change, ``git worktree add --detach DIR main``), on the same API server,
and measures the two in alternating rounds: the load of a shared machine
then weighs on both alike.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/get_cpu.py [--requests 1000] [--rounds 3] [--compare-with DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task, threads  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from bench.kube_path import deploy, idle_cpu_rate, latency  # noqa: E402
from bench.support import Harness, Sampled, cpu_seconds  # noqa: E402


async def one_round(reactor, target, pids: dict[str, int], requests: int, profile: str | None, phase: str) -> dict:
    idle_rate = await idle_cpu_rate(reactor, pids)
    before = {process: cpu_seconds(pid) for process, pid in pids.items()}
    started = time.monotonic()
    with Sampled(reactor, profile, phase, pids, blocking=True):
        timing = await threads.deferToThread(latency, target, requests)
    elapsed = time.monotonic() - started
    cpu = {process: 1000 * (cpu_seconds(pid) - before[process] - idle_rate[process] * elapsed) / (requests + 1)
           for process, pid in pids.items()}
    return {"cpu_ms": cpu, "p50_ms": timing["p50_ms"], "load": os.getloadavg()[0]}


async def deploy_from(harness: Harness, code: str | None):
    """A deployment whose processes import teleport_py from ``code`` (None: this tree)."""
    saved = os.environ.get("PYTHONPATH")
    if code is not None:
        os.environ["PYTHONPATH"] = os.path.abspath(code)
    try:
        return await deploy(harness, tempfile.mkdtemp(dir=harness.root))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


async def measure(reactor, options) -> None:
    harness = Harness(tempfile.mkdtemp(prefix="bench_get_cpu."))
    try:
        stacks = {"this": await deploy_from(harness, None)}
        if options.compare_with:
            stacks["before"] = await deploy_from(harness, options.compare_with)
        paths = ["teleport"] + ([] if options.no_h2 else ["teleport-h2"])
        results: dict[tuple[str, str], list] = {}
        for number in range(options.rounds):
            for name in paths:
                for code, (d, targets) in stacks.items():
                    pids = {"proxy": d.main.pid, "agent": d.agent.pid}
                    r = await one_round(reactor, targets[name], pids, options.requests, None, "")
                    results.setdefault((code, name), []).append(r)
                    print(f"{code:6} {name:12} round {number + 1}: load {r['load']:.1f}  p50 {r['p50_ms']:.2f} ms  "
                          "CPU ms/GET " + ", ".join(f"{p} {ms:.3f}" for p, ms in r["cpu_ms"].items()), flush=True)
        for (code, name), rounds in results.items():
            print(f"{code:6} {name:12} median of {len(rounds)}: CPU ms/GET "
                  + ", ".join(f"{p} {statistics.median(r['cpu_ms'][p] for r in rounds):.3f}" for p in ("proxy", "agent"))
                  + f"  p50 {statistics.median(r['p50_ms'] for r in rounds):.2f} ms"
                  + f"  load {min(r['load'] for r in rounds):.1f}-{max(r['load'] for r in rounds):.1f}", flush=True)
        if options.profile:  # sampling slows the processes: a round of its own, not counted
            d, targets = stacks["this"]
            for name in paths:
                await one_round(reactor, targets[name], {"proxy": d.main.pid, "agent": d.agent.pid},
                                options.requests, options.profile, "get" + ("-h2" if name.endswith("h2") else ""))
            print(f"profiles in {options.profile} (bench/profile_summary.py)", flush=True)
    finally:
        await harness.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-h2", action="store_true")
    parser.add_argument("--compare-with", metavar="DIR", help="a checkout of the code to compare against")
    parser.add_argument("--profile", metavar="DIR", help="blocking py-spy stacks of one more round, not counted")
    options = parser.parse_args()
    task.react(lambda reactor: ensureDeferred(measure(reactor, options)))


if __name__ == "__main__":
    main()
