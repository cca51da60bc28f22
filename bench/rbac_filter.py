"""What role-based filtering adds to a 5,000-pod LIST in the agent.

Uses the agent's own decision code: the seed's ``dev-namespace-access`` role
through ``AccessChecker`` (``needs_filtering``, ``item_filter``), feeding the
body in 64 KiB chunks to the ``ListFilter`` the forwarder would build, against
relaying the same body unfiltered (chunks passed through, as the forwarder does
when a rule covers the whole collection). The body comes from
``bench/filter_list.py`` (realistic pods, half of them in ``development``).

Run: ``.venv/bin/python bench/rbac_filter.py``
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from filter_list import CHUNK, PODS, best_times, peak_memory, pod_list_body  # noqa: E402

from teleport_py.rbac import AccessChecker, classify  # noqa: E402
from teleport_py.rbac.filters import response_filter  # noqa: E402
from teleport_py.resources import parse_yaml  # noqa: E402
from tests.support.seed import DEV_NAMESPACE_ACCESS_ROLE  # noqa: E402

LABELS = {"env": "development"}


def relay(body: bytes) -> int:
    """The unfiltered path: every chunk goes out as it came."""
    return sum(len(body[start:start + CHUNK]) for start in range(0, len(body), CHUNK))


def filtered(body: bytes, checker: AccessChecker, info, allow) -> int:
    assert checker.needs_filtering(info, LABELS)
    body_filter = response_filter("application/json", None, allow)
    for start in range(0, len(body), CHUNK):
        body_filter.feed(body[start:start + CHUNK])
    return len(body_filter.finish())


def main() -> None:
    body = pod_list_body()
    checker = AccessChecker("alice", parse_yaml(DEV_NAMESPACE_ACCESS_ROLE), {})
    info = classify("GET", "/api/v1/pods", {})
    kept = filtered(body, checker, info, checker.item_filter(info, LABELS))
    print(f"PodList: {PODS} pods, {len(body) / 2**20:.1f} MiB; the role keeps {kept / 2**20:.1f} MiB")
    cases = [
        ("unfiltered relay", lambda: relay(body)),
        ("filtered (item_filter)", lambda: filtered(body, checker, info, checker.item_filter(info, LABELS))),
        ("filtered (allows_item)", lambda: filtered(
            body, checker, info, lambda ns, name: checker.allows_item(info, ns, name, LABELS))),
    ]
    times = best_times([work for _, work in cases])
    peaks = [peak_memory(work) for _, work in cases]
    print(f"{'case':<24} {'time ms':>8} {'peak MiB':>9}")
    for (label, _), seconds, peak in zip(cases, times, peaks):
        print(f"{label:<24} {seconds * 1000:8.1f} {peak / 2**20:9.1f}")


if __name__ == "__main__":
    main()
