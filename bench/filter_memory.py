"""The agent's peak memory under concurrent filtered LISTs (issue 11 part 4).

A user whose role grants only some ConfigMaps of a namespace lists all of
them: the agent buffers each LIST body whole, parses it, drops the items the
role hides and encodes it again (rbac/filters.py). ``--lists`` such LISTs of
about ``--mib`` MiB each go at once through the proxy to the real
kube-apiserver; the agent's peak RSS (VmHWM, read from /proc on a freshly
started agent) and what each LIST got (200, or 429 past the agent's
``kubernetes_service.buffer_memory_limit``) are reported. With ``--retry``
a 429 is retried after its ``Retry-After``, as client-go does.

The deployment is the end-to-end tests' (tests/e2e.py). From the repository root:

    TELEPORT_PY_KUBE_BIN=$HOME/.cache/teleport_py/kube-1.20.2/bin \\
    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/filter_memory.py [--lists 20 --mib 20]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task, threads  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from bench.kube_path import KUBE_SNI, NAMESPACE, Connection, Target, create_configmaps, tls_context  # noqa: E402
from bench.support import Harness, rss_kib  # noqa: E402
from tests.e2e import Deployment  # noqa: E402
from tests.support.seed import configmaps_role  # noqa: E402

#: Every ConfigMap of the namespace is listed; the role shows half of them
#: (padded-0000 to padded-0099 of the 200 that 20 MiB makes).
FILTERED_ROLE = configmaps_role("half-the-configmaps", NAMESPACE, "padded-00*")
LIST = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def small_get(target: Target) -> int:
    connection = Connection(target)
    connection.putrequest("GET", LIST + "/padded-0000")
    connection.endheaders()
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def one_list(target: Target, retry: bool) -> tuple[int, int, int]:
    """(final status, bytes, 429s seen before it)."""
    refused = 0
    while True:
        connection = Connection(target)
        connection.putrequest("GET", LIST)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        if response.status == 429 and retry:
            refused += 1
            time.sleep(float(response.getheader("Retry-After") or 1))
            continue
        return response.status, len(body), refused


async def measure(reactor, options) -> dict:
    harness = Harness(tempfile.mkdtemp(prefix="filter-memory-"))
    try:
        d = await Deployment(harness, harness.root).start()
        await d.login_with_kube_access("alice")
        await d.tctl("create", "-f", d.write("half.yaml", FILTERED_ROLE))
        await d.tctl("users", "update", "alice", "--set-roles=half-the-configmaps")
        await d.login("alice")
        await d.wait_for_clusters({"my-cluster"})
        await d.tsh("kube", "login", "my-cluster")
        keys = glob.glob(d.path("home", ".tsh", "keys", "*", "alice"))[0]
        admin = d.plane.issue_client_certificate("bench-admin", ("system:masters",))
        ca = d.write("apiserver-ca.pem", d.plane.serving_ca.cert_pem.decode())
        direct = Target("direct", d.plane.port, tls_context(
            ca, d.write("admin.pem", admin.cert_pem.decode()), d.write("admin-key.pem", admin.key_pem.decode())),
            "127.0.0.1")
        await threads.deferToThread(create_configmaps, direct, options.mib)
        teleport = Target("teleport", d.proxy_port, tls_context(
            os.path.join(keys, "host_ca.pem"), os.path.join(keys, "kube", "my-cluster", "cert.pem"),
            os.path.join(keys, "key.pem")), KUBE_SNI)
        status, size, _ = await threads.deferToThread(one_list, teleport, False)
        assert status == 200 and size < options.mib * 2**20 * 0.6, (status, size)  # half the items: filtered
        await d.agent.stop()  # a fresh agent: its peak is this phase's
        if options.budget_mib:
            with open(d.agent_config, "a") as f:
                f.write(f"  buffer_memory_limit: {options.budget_mib}Mi\n")
        await d.start_agent()
        while await threads.deferToThread(small_get, teleport) != 200:
            await task.deferLater(reactor, 0.2, lambda: None)
        pid = d.agent.pid
        before = rss_kib(pid)
        started = time.perf_counter()

        def all_lists():
            with ThreadPoolExecutor(options.lists) as pool:
                return list(pool.map(lambda _: one_list(teleport, options.retry), range(options.lists)))

        results = await threads.deferToThread(all_lists)
        seconds = time.perf_counter() - started
        codes: dict[int, int] = {}
        for code, _, _ in results:
            codes[code] = codes.get(code, 0) + 1
        return {
            "lists": options.lists, "unfiltered_mib": options.mib, "budget_mib": options.budget_mib or "default", "filtered_response_mib": round(size / 2**20, 2),
            "agent_rss_before_mib": round(before / 1024, 1), "agent_peak_rss_mib": round(peak_rss_kib(pid) / 1024, 1),
            "agent_rss_after_mib": round(rss_kib(pid) / 1024, 1), "codes": codes,
            "retried_429s": sum(r for _, _, r in results), "seconds": round(seconds, 2),
        }
    finally:
        await harness.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", type=int, default=20)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--budget-mib", type=int, default=0,
                        help="the agent's kubernetes_service.buffer_memory_limit (default: its own default)")
    parser.add_argument("--retry", action="store_true", help="retry a 429 after its Retry-After, as client-go does")
    options = parser.parse_args()

    async def run(reactor):
        print(json.dumps(await measure(reactor, options), indent=1))

    task.react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
