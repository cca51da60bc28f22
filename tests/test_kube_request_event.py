"""A stream's ``kube.request`` events from the template (kube/request_event.py)
are byte for byte what the dict builder (``events.make_event``, encoded as
the spool encodes a dict) writes for the same request, and still unique."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from teleport_py.kube.context import Decision, KubeCluster, StreamContext
from teleport_py.kube.credentials import ClusterCredentials
from teleport_py.kube.memory_budget import MemoryBudget
from teleport_py.pki import UserIdentity
from teleport_py.rbac import RequestInfo
from teleport_py.resource_ids import ResourceID

text = st.text(max_size=12)
names = st.text(min_size=1, max_size=12)
infos = st.none() | st.builds(RequestInfo, verb=text, api_group=text, resource=text, subresource=text,
                              namespace=text, name=text)
decisions = st.none() | st.builds(Decision, user=text, groups=st.lists(names, max_size=3).map(tuple), info=infos)
resources = st.builds(ResourceID, cluster=names, kind=names, name=names, sub_resource=text)


def stream(identity: UserIdentity, cluster: str, addr: str, teleport_cluster: str, now: float, **sinks):
    clock = Clock()
    clock.advance(now)
    return StreamContext(identity=identity, cluster=KubeCluster(name=cluster, labels={}, credentials=CREDENTIALS),
                         client_addr=addr, reactor=clock, buffers=MemoryBudget(), teleport_cluster=teleport_cluster,
                         **sinks)


CREDENTIALS = ClusterCredentials.__new__(ClusterCredentials)


class TemplateMatchesBuilder(TestCase):
    @settings(max_examples=400, deadline=None)
    @given(
        user=names, roles=st.lists(names, min_size=1, max_size=3), identity_cluster=text, teleport_cluster=text,
        access_requests=st.lists(names, max_size=3), allowed=st.lists(resources, max_size=3),
        cluster=text, addr=text, now=st.floats(min_value=0, max_value=4e9),
        method=text, path=text, info=infos, code=st.integers(min_value=0, max_value=999),
        decision=decisions, reason=st.none() | text,
    )
    def test_same_bytes(self, user, roles, identity_cluster, teleport_cluster, access_requests, allowed,
                        cluster, addr, now, method, path, info, code, decision, reason):
        identity = UserIdentity(user, roles, teleport_cluster=identity_cluster, access_requests=access_requests,
                                allowed_resources=allowed, expires=datetime(2030, 1, 1, tzinfo=timezone.utc))
        lines, dicts = [], []
        stream(identity, cluster, addr, teleport_cluster, now, emit=None, emit_line=lines.append).audit(
            method, path, info, code, decision=decision, reason=reason)
        stream(identity, cluster, addr, teleport_cluster, now, emit=dicts.append).audit(
            method, path, info, code, decision=decision, reason=reason)
        [line], [event] = lines, dicts
        # The uid is random in both: the template's own goes into the builder's event, in its place.
        event["uid"] = json.loads(line)["uid"]
        self.assertEqual(line, json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")

    def test_uids_differ(self):
        identity = UserIdentity("alice", ["dev"], expires=datetime(2030, 1, 1, tzinfo=timezone.utc))
        lines = []
        context = stream(identity, "k", "127.0.0.1:5", "", 1.5, emit=None, emit_line=lines.append)
        for _ in range(3):
            context.audit("GET", "/api", None, 200)
        self.assertEqual(len({json.loads(line)["uid"] for line in lines}), 3)
