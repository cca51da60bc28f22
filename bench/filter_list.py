"""Cost of filtering a large LIST response, against merely parsing it.

Builds a 5,000-pod PodList (about 2.5 KB a pod, as a real cluster returns),
then measures wall time (best of several runs) and peak traced memory
(tracemalloc, in a separate run so tracing does not skew the times) of:

- ``json.loads`` of the body: the least any item-by-item filter must do;
- ``ListFilter`` keeping half the pods (parse, filter, re-encode);
- ``ListFilter`` keeping every pod (parse only: the body goes back unchanged);
- ``ListFilter`` on the gzip body keeping half (inflate, filter, deflate).

Run: ``.venv/bin/python bench/filter_list.py``
"""
from __future__ import annotations

import gc
import gzip
import json
import time
import tracemalloc
from typing import Callable

from teleport_py.rbac.filters import ListFilter

PODS = 5_000
CHUNK = 64 * 1024
RUNS = 7


def pod(index: int) -> dict:
    namespace = "development" if index % 2 else "production"
    name = f"web-{index:05d}-7d9f8b6c5d-x{index % 97:02d}q"
    return {
        "metadata": {
            "name": name, "generateName": "web-7d9f8b6c5d-", "namespace": namespace,
            "uid": f"5f1e0c9a-3b2d-4c1e-9a7f-{index:012d}", "resourceVersion": str(480_000 + index),
            "creationTimestamp": "2024-03-01T09:12:44Z",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d", "team": "payments"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                                 "uid": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2024-03-01T09:12:44Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {},
                                            "f:app": {}, "f:pod-template-hash": {}}},
                                            "f:spec": {"f:containers": {'k:{"name":"web"}': {".": {},
                                                       "f:image": {}, "f:name": {}}}}}}],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "containers": [{
                "name": "web", "image": "registry.example.com/payments/web:1.25.3",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                              "requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": f"node-{index % 40}",
            "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running", "hostIP": f"10.0.{index % 40}.11", "podIP": f"10.244.{index % 250}.{index % 200}",
            "podIPs": [{"ip": f"10.244.{index % 250}.{index % 200}"}], "startTime": "2024-03-01T09:12:44Z",
            "qosClass": "Burstable",
            "conditions": [{"type": kind, "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2024-03-01T09:12:50Z"}
                           for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0, "started": True,
                                   "state": {"running": {"startedAt": "2024-03-01T09:12:47Z"}},
                                   "image": "registry.example.com/payments/web:1.25.3",
                                   "imageID": "registry.example.com/payments/web@sha256:" + "ab" * 32,
                                   "containerID": "containerd://" + f"{index:064x}"}],
        },
    }


def pod_list_body() -> bytes:
    listing = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "490001"},
               "items": [pod(index) for index in range(PODS)]}
    return json.dumps(listing, separators=(",", ":")).encode()


def half(namespace: str, name: str) -> bool:
    return namespace == "development"


def everything(namespace: str, name: str) -> bool:
    return True


def run_filter(body: bytes, allow, gzipped: bool = False) -> bytes:
    list_filter = ListFilter(allow, gzipped=gzipped)
    for start in range(0, len(body), CHUNK):
        list_filter.feed(body[start:start + CHUNK])
    return list_filter.finish()


def best_times(works: list[Callable[[], object]]) -> list[float]:
    """Best of RUNS rounds; each round runs every case, so load drifts hit all alike."""
    best = [float("inf")] * len(works)
    for _ in range(RUNS):
        for index, work in enumerate(works):
            gc.collect()
            started = time.perf_counter()
            work()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def peak_memory(work: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    body = pod_list_body()
    compressed = gzip.compress(body, compresslevel=1)
    print(f"PodList: {PODS} pods, {len(body) / 2**20:.1f} MiB ({len(body) // PODS} bytes a pod), "
          f"gzip {len(compressed) / 2**20:.1f} MiB")
    cases = [
        ("json.loads (baseline)", lambda: json.loads(body)),
        ("ListFilter, keep half", lambda: run_filter(body, half)),
        ("ListFilter, keep all", lambda: run_filter(body, everything)),
        ("ListFilter gzip, keep half", lambda: run_filter(compressed, half, gzipped=True)),
    ]
    times = best_times([work for _, work in cases])
    peaks = [peak_memory(work) for _, work in cases]
    print(f"{'case':<28} {'time s':>8} {'x base':>7} {'peak MiB':>9} {'x base':>7}")
    for (label, _), seconds, peak in zip(cases, times, peaks):
        print(f"{label:<28} {seconds:8.3f} {seconds / times[0]:7.2f} "
              f"{peak / 2**20:9.1f} {peak / peaks[0]:7.2f}")


if __name__ == "__main__":
    main()
