"""kube_server heartbeats: Auth lists a cluster only while an agent keeps
saying it serves it (the record expires 90 s after the last heartbeat).

The first heartbeat goes out as soon as the reverse tunnel is up (``beat_now``,
called by the tunnel client), so a new cluster shows in ``tsh kube ls``
within a moment rather than one interval later; on a clean stop the agent
says goodbye and Auth forgets its clusters at once."""
from __future__ import annotations

from typing import Awaitable, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

HEARTBEAT_INTERVAL = 30.0


def kube_server_resource(cluster: str, labels: Mapping[str, str], host_id: str, hostname: str) -> dict:
    """The kube_server resource Auth's heartbeat API expects."""
    return {
        "kind": "kube_server",
        "version": "v3",
        "metadata": {"name": cluster},
        "spec": {
            "host_id": host_id,
            "hostname": hostname,
            "version": "teleport_py",
            "cluster": {"kind": "kube_cluster", "version": "v3",
                        "metadata": {"name": cluster, "labels": dict(labels)}, "spec": {}},
        },
    }


class Heartbeat:
    """Every ``interval`` seconds, one heartbeat per served cluster; a failed
    one is logged and simply tried again next time."""

    def __init__(
        self,
        reactor,
        send: Callable[[dict], Awaitable],
        clusters: Sequence[tuple[str, Mapping[str, str]]],
        host_id: str,
        hostname: str,
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._send = send
        self._resources = [kube_server_resource(name, labels, host_id, hostname) for name, labels in clusters]
        self._interval = interval
        self._loop = LoopingCall(self._beat)
        self._loop.clock = reactor
        self._due = False

    def start(self) -> None:
        """Every interval from now; the first one comes with ``beat_now``
        (at once if it was asked for before)."""
        self._loop.start(self._interval, now=self._due).addErrback(
            lambda f: log.failure("kube heartbeat loop stopped", f))

    def beat_now(self) -> None:
        """Heartbeat at once (the tunnel just came up) and count the interval from here."""
        if not self._loop.running:
            self._due = True
            return
        self._loop.reset()
        self._beat()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def goodbye(self, say_goodbye: Callable[[str], Awaitable]) -> None:
        """Stop, and tell Auth we serve none of our clusters any more: they
        leave ``tsh kube ls`` now, not when the last heartbeat expires. A
        failure is only logged (the record then expires with its TTL)."""
        self.stop()
        for resource in self._resources:
            try:
                await say_goodbye(resource["metadata"]["name"])
            except Exception as e:
                log.warn("kube heartbeat goodbye failed cluster={cluster}: {error}",
                         cluster=resource["metadata"]["name"], error=e)

    def _beat(self) -> Deferred:
        return Deferred.fromCoroutine(self._beat_all())

    async def _beat_all(self) -> None:
        for resource in self._resources:
            try:
                await self._send(resource)
            except Exception as e:
                log.warn("kube heartbeat failed cluster={cluster}: {error}",
                         cluster=resource["metadata"]["name"], error=e)
