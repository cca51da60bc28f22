"""AgentRegistry and announce parsing, in memory."""
from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.pki import HostIdentity
from teleport_py.proxy.registry import AgentRegistry, AnnouncedCluster, AnnounceError, parse_announcement


class FakeTunnel:
    def __init__(self, streams=0):
        self.stream_count = streams
        self.closed = Deferred()
        self.transport = None


def agent(host_id):
    return HostIdentity(host_id, "node", "kube", "example")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


class ParseTests(SynchronousTestCase):
    def test_valid(self):
        self.assertEqual(
            parse_announcement({"clusters": [{"name": "k8s", "labels": {"env": "prod"}}, {"name": "dev"}]}),
            (AnnouncedCluster("k8s", {"env": "prod"}), AnnouncedCluster("dev", {})),
        )

    def test_invalid_names_the_field(self):
        for metadata, where in [
            ({}, "clusters"),
            ({"clusters": [{"name": ""}]}, "clusters[0].name"),
            ({"clusters": [{"name": "a", "labels": {"x": 1}}]}, "clusters[0].labels"),
            ({"clusters": [{"name": "a", "extra": 1}]}, "clusters[0]"),
        ]:
            with self.assertRaises(AnnounceError) as caught:
                parse_announcement(metadata)
            self.assertIn(where, str(caught.exception))

    @given(st.dictionaries(st.sampled_from(["clusters", "x"]), json_values))
    def test_never_crashes(self, metadata):
        try:
            parse_announcement(metadata)
        except AnnounceError:
            pass


class RegistryTests(SynchronousTestCase):
    def test_offline_until_announced(self):
        registry = AgentRegistry()
        tunnel = FakeTunnel()
        registry.add(tunnel, agent("a"))
        self.assertIsNone(registry.pick("k8s"))
        registry.announce(tunnel, (AnnouncedCluster("k8s"),))
        self.assertEqual(registry.pick("k8s"), (tunnel, agent("a")))
        self.assertEqual(registry.clusters(), {"k8s": {}})

    def test_least_busy_agent_wins(self):
        registry = AgentRegistry(choice=lambda candidates: candidates[-1])
        busy, idle, other = FakeTunnel(3), FakeTunnel(1), FakeTunnel(0)
        for i, tunnel in enumerate((busy, idle, other)):
            registry.add(tunnel, agent(f"a{i}"))
        registry.announce(busy, (AnnouncedCluster("k8s"),))
        registry.announce(idle, (AnnouncedCluster("k8s"),))
        registry.announce(other, (AnnouncedCluster("dev"),))
        self.assertIs(registry.pick("k8s")[0], idle)
        idle.stream_count = 5
        self.assertIs(registry.pick("k8s")[0], busy)

    def test_closed_tunnel_is_forgotten(self):
        registry = AgentRegistry()
        tunnel = FakeTunnel()
        registry.add(tunnel, agent("a"))
        registry.announce(tunnel, (AnnouncedCluster("k8s"),))
        tunnel.closed.callback(None)
        self.assertIsNone(registry.pick("k8s"))
        self.assertEqual(len(registry), 0)
        registry.announce(tunnel, (AnnouncedCluster("k8s"),))
        self.assertIsNone(registry.pick("k8s"))
