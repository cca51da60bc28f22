"""p50 and p99 of each backend operation, etcd against SQLite, in one run.

Both backends are the ones Auth opens: ``SQLiteBackend`` on a file in a
temporary directory (WAL, synchronous=FULL), ``EtcdBackend`` on a real
single-member etcd 3.4 started here (with ``--tls``, as the configuration
requires in production: https and a client certificate). Operations are
timed one at a time, in turns (one SQLite call, then the same etcd call), so
machine load hits both alike; the ratio is etcd / SQLite per percentile.

Run: ``.venv/bin/python bench/backend_ops.py [--rounds 300] [--tls]``
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from teleport_py.backend import SQLiteBackend  # noqa: E402
from teleport_py.backend.etcd import EtcdBackend  # noqa: E402
from tests.support.etcd import EtcdServer  # noqa: E402

VALUE = b"x" * 1024  # about a role or a user


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def operations(reactor):
    """(name, setup(backend, n) or None, call(backend, n)) per operation."""
    now = reactor.seconds

    async def fill(backend, n):
        if n == 0:
            await backend.put_all([(f"/range/{i:04d}", VALUE, None) for i in range(100)])
        await backend.put(f"/cas/{n}", b"v0")

    return [
        ("get", fill, lambda b, n: b.get(f"/cas/{n}")),
        ("get_range (100 items, 100 KiB)", None, lambda b, n: b.get_range("/range/")),
        ("put", None, lambda b, n: b.put(f"/put/{n}", VALUE)),
        ("put with expires (a lease)", None, lambda b, n: b.put(f"/ttl/{n}", VALUE, expires=now() + 600)),
        ("create", None, lambda b, n: b.create(f"/create/{n}", VALUE)),
        ("compare_and_swap", None, lambda b, n: b.compare_and_swap(f"/cas/{n}", b"v0", b"v1")),
        ("put_all (10 entries)", None, lambda b, n: b.put_all([(f"/all/{n}/{i}", VALUE, None) for i in range(10)])),
        ("delete", None, lambda b, n: b.delete(f"/put/{n}")),
    ]


async def main(reactor, rounds: int, tls: bool):
    workdir = tempfile.mkdtemp(prefix="bench_backend.")
    etcd = await EtcdServer(reactor, workdir, tls=tls).start()
    backends = {}
    try:
        backends["sqlite"] = await SQLiteBackend.open(reactor, os.path.join(workdir, "backend.sqlite"))
        backends["etcd"] = await EtcdBackend.open(
            reactor, [etcd.url], "/bench", tls=etcd.client_tls if tls else None)
        print(f"{rounds} calls each, in turns; etcd {'https with a client certificate' if tls else 'http'}; "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"{'operation':34} {'SQLite p50/p99 ms':>20} {'etcd p50/p99 ms':>20} {'ratio p50/p99':>15}")
        for name, setup, call in operations(reactor):
            samples = {kind: [] for kind in backends}
            for n in range(rounds):
                for kind, backend in backends.items():
                    if setup is not None:
                        await setup(backend, n)
                    started = time.perf_counter()
                    await call(backend, n)
                    samples[kind].append((time.perf_counter() - started) * 1000)
            cells = {kind: (percentile(s, 0.5), percentile(s, 0.99)) for kind, s in samples.items()}
            sqlite, etcd_ = cells["sqlite"], cells["etcd"]
            print(f"{name:34} {sqlite[0]:9.2f} /{sqlite[1]:8.2f} {etcd_[0]:9.2f} /{etcd_[1]:8.2f} "
                  f"{etcd_[0] / sqlite[0]:6.1f}x /{etcd_[1] / sqlite[1]:5.1f}x")
    finally:
        for backend in backends.values():
            await backend.close()
        await etcd.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--tls", action="store_true", help="etcd over https with a client certificate")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options.rounds, options.tls)))
