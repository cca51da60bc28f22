"""A session recording for tests: its id, the agents that may upload it, its first records, its readers."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from teleport_py.pki import HostIdentity, UserIdentity
from teleport_py.recording.format import encode

SID = "0b7f4f8e-6d1a-4c3e-9f59-3a1d2b9c0e11"
KUBE = HostIdentity(host_id="kube-1", nodename="k", system_role="kube", teleport_cluster="example")
OTHER_KUBE = HostIdentity(host_id="kube-2", nodename="k", system_role="kube", teleport_cluster="example")
START = encode({"type": "session.start", "ms": 0, "session_id": SID, "user": "alice", "pod": "web-0",
                "time": "2026-01-01T00:00:00.000000Z"})
BODY = encode({"type": "print", "ms": 10, "stream": "stdout", "data": b"hello"})


def user(name: str, *roles: str) -> UserIdentity:
    return UserIdentity(username=name, roles=roles, traits={}, kube_cluster="", teleport_cluster="example",
                        kube_users=(), kube_groups=(), expires=datetime.now(timezone.utc) + timedelta(hours=1))
