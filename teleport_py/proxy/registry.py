"""Which live agent tunnels serve which kube clusters.

The proxy learns this from the agents themselves (``announce`` streams), not
from Auth: a tunnel is the only thing it can route over, and a tunnel that
closes is forgotten at once, so a dead agent is never picked.
"""
from __future__ import annotations

import random

import attrs
from twisted.logger import Logger

from teleport_py.pki import HostIdentity

log = Logger()


@attrs.frozen
class AnnouncedCluster:
    name: str
    labels: dict = attrs.field(factory=dict, hash=False)


class AnnounceError(ValueError):
    """An announce stream's metadata is not ``{"clusters": [{"name", "labels"}]}``."""


def parse_announcement(metadata: dict) -> tuple[AnnouncedCluster, ...]:
    clusters = metadata.get("clusters")
    if not isinstance(clusters, list):
        raise AnnounceError("clusters: must be a list")
    parsed = {}
    for i, entry in enumerate(clusters):
        if not isinstance(entry, dict) or set(entry) - {"name", "labels"}:
            raise AnnounceError(f"clusters[{i}]: must be an object with name and labels")
        name, labels = entry.get("name"), entry.get("labels", {})
        if not isinstance(name, str) or not name or len(name) > 253:
            raise AnnounceError(f"clusters[{i}].name: must be a non-empty string")
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise AnnounceError(f"clusters[{i}].labels: must map strings to strings")
        parsed[name] = AnnouncedCluster(name, dict(labels))
    return tuple(parsed.values())


@attrs.define(eq=False)
class _Agent:
    tunnel: object
    identity: HostIdentity
    clusters: tuple[AnnouncedCluster, ...] = ()


class AgentRegistry:
    """Several agents may serve one cluster (HA); ``pick`` spreads connections
    by choosing among the least busy tunnels at random."""

    def __init__(self, choice=random.choice):
        self._agents: dict[object, _Agent] = {}
        self._choice = choice

    def add(self, tunnel, identity: HostIdentity) -> None:
        """Track a tunnel until its ``closed`` Deferred fires."""
        self._agents[tunnel] = _Agent(tunnel, identity)
        log.info("tunnel connected host_id={host_id}", host_id=identity.host_id)
        tunnel.closed.addCallback(lambda _: self._remove(tunnel))

    def announce(self, tunnel, clusters: tuple[AnnouncedCluster, ...]) -> None:
        agent = self._agents.get(tunnel)
        if agent is None:
            return
        agent.clusters = clusters
        log.info(
            "tunnel announced host_id={host_id} clusters={clusters}",
            host_id=agent.identity.host_id, clusters=[c.name for c in clusters],
        )

    def _remove(self, tunnel) -> None:
        agent = self._agents.pop(tunnel, None)
        if agent is not None:
            log.info(
                "tunnel disconnected host_id={host_id} clusters={clusters}",
                host_id=agent.identity.host_id, clusters=[c.name for c in agent.clusters],
            )

    def pick(self, cluster: str) -> tuple[object, HostIdentity] | None:
        """A (tunnel, agent identity) serving ``cluster``, or None when it is offline."""
        serving = [a for a in self._agents.values() if any(c.name == cluster for c in a.clusters)]
        if not serving:
            return None
        fewest = min(a.tunnel.stream_count for a in serving)
        agent = self._choice([a for a in serving if a.tunnel.stream_count == fewest])
        return agent.tunnel, agent.identity

    def clusters(self) -> dict[str, dict]:
        """Cluster name -> labels, over every live tunnel."""
        found: dict[str, dict] = {}
        for agent in self._agents.values():
            for cluster in agent.clusters:
                found.setdefault(cluster.name, dict(cluster.labels))
        return found

    def tunnels(self, cluster: str) -> list:
        return [a.tunnel for a in self._agents.values() if any(c.name == cluster for c in a.clusters)]

    def all_tunnels(self) -> list:
        """Every live agent tunnel (announced or not)."""
        return list(self._agents)

    def disconnect_all(self) -> None:
        """Abort every tunnel: agents reconnect (to us after a restart, or to another proxy)."""
        for tunnel in list(self._agents):
            if tunnel.transport is not None:
                tunnel.transport.abortConnection()

    def __len__(self) -> int:
        return len(self._agents)
