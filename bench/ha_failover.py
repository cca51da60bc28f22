"""The failure window per kind of failure, from the HA end-to-end test, repeated.

Each repeat runs ``tests.test_e2e_ha`` (a fresh deployment of real
processes: 3 etcd members, 2 auth servers, 2 proxies, 2 agents, one
kube-apiserver; tests/support/ha.py) in its own trial process and reads the
``HA result:`` line it prints: per kill (the etcd leader, an auth server,
an agent, a proxy) the failure window of the kubectl GET loops (from the
kill to the end of the last GET that failed), the GETs that failed, the
longest time between two answered GETs from the kill on, and the failure
window of the ``tsh login`` loop. The test also asserts its bounds; a repeat whose
test failed is reported as such, its numbers still counted if it printed
them.

Run from the repository root:

    TELEPORT_PY_KUBE_BIN=$HOME/.cache/teleport_py/kube-1.20.2/bin \\
    PATH=$PWD/.venv/bin:$TELEPORT_PY_KUBE_BIN:$PATH CI=true .venv/bin/python bench/ha_failover.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = "HA result: "


def one_run(directory: str) -> tuple[dict | None, bool, float]:
    """(the printed result, whether the test passed, wall seconds) of one trial run."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "twisted.trial", f"--temp-directory={directory}",
                           "tests.test_e2e_ha"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = done.stdout.decode("utf-8", "replace")
    lines = [line for line in out.splitlines() if RESULT in line]
    result = json.loads(lines[-1].split(RESULT, 1)[1]) if lines else None
    if done.returncode != 0:
        print(out[-3000:], file=sys.stderr)
    return result, done.returncode == 0, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_ha.") as scratch:
        for i in range(options.repeats):
            result, passed, wall = one_run(os.path.join(scratch, f"run{i}"))
            print(f"run {i + 1}: {'passed' if passed else 'FAILED'} in {wall:.0f}s: {json.dumps(result)}", flush=True)
            runs.append((result, passed))
    summary = {}
    for result, _ in runs:
        for kind, measured in (result or {}).get("kills", {}).items():
            entry = summary.setdefault(kind, {"windows_s": [], "failed_gets": [], "longest_gaps_s": [],
                                              "login_windows_s": [], "failed_logins": []})
            entry["longest_gaps_s"].append(measured.get("longest_gap_s"))
            entry["windows_s"].append(measured["window_s"])
            entry["failed_gets"].append(len(measured["failed_gets"]))
            entry["login_windows_s"].append(measured["login_window_s"])
            entry["failed_logins"].append(len(measured["failed_logins"]))
    for entry in summary.values():
        entry["window_median_s"] = statistics.median(entry["windows_s"])
        entry["window_max_s"] = max(entry["windows_s"])
    print(json.dumps({"repeats": options.repeats, "passed": sum(passed for _, passed in runs),
                      "gets_per_run": [(r or {}).get("gets") for r, _ in runs],
                      "load_average": os.getloadavg(), "kinds": summary}, indent=1))


if __name__ == "__main__":
    main()
