"""Whether the Kubernetes service agent is ready for kubectl (``/readyz``):
joined (it holds its identity), its reverse tunnel is up (the proxy took
its announce), and every API server it serves answers ``/readyz`` to the
agent's own credentials (``system:public-info-viewer`` lets any
authenticated caller ask). API server checks are cached for a few seconds
and shared by concurrent probes, so probing costs the API server little.
"""
from __future__ import annotations

from typing import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from teleport_py.kube.context import KubeCluster
from teleport_py.kube.credentials import ClusterCredentials, ClusterTLSPolicy

#: Seconds an API server answer stands for later probes.
API_SERVER_CHECK_TTL = 10.0
#: Seconds one API server check may take (the probes' own timeout is longer).
API_SERVER_CHECK_TIMEOUT = 5.0


async def api_server_ready(reactor, credentials: ClusterCredentials) -> str | None:
    """``None`` if ``GET /readyz`` answers 200 with our credentials, else why not."""
    host = f"[{credentials.host}]" if ":" in credentials.host else credentials.host
    headers = Headers({b"accept": [b"text/plain"]})
    token = credentials.bearer_token()
    if token:
        headers.addRawHeader(b"authorization", b"Bearer " + token.encode("ascii"))
    agent = Agent(reactor, contextFactory=ClusterTLSPolicy(credentials), connectTimeout=API_SERVER_CHECK_TIMEOUT)
    url = f"https://{host}:{credentials.port}/readyz".encode("ascii")
    try:
        d = agent.request(b"GET", url, headers)
        d.addTimeout(API_SERVER_CHECK_TIMEOUT, reactor)
        response = await d
        await readBody(response)
    except Exception as e:
        return f"API server of {credentials.name} unreachable ({e.__class__.__name__})"
    if response.code != 200:
        return f"API server of {credentials.name} answered /readyz with {response.code}"
    return None


class KubeReadiness:
    """The agent's readiness check; ``joined`` and ``tunnel_up`` are set by
    the service as it starts."""

    def __init__(self, reactor, clusters: Mapping[str, KubeCluster], check=api_server_ready) -> None:
        self.reactor = reactor
        self.clusters = clusters
        self.joined = False
        self.tunnel_up: Callable[[], bool] = lambda: False
        self._check = check
        self._answers: dict[str, tuple[float, str | None]] = {}
        self._running: dict[str, Deferred] = {}

    async def __call__(self) -> str | None:
        if not self.joined:
            return "not joined to the cluster yet"
        if not self.tunnel_up():
            return "reverse tunnel to the proxy is not up"
        for name in sorted(self.clusters):
            missing = await self._api_server(name)
            if missing is not None:
                return missing
        return None

    def _api_server(self, name: str) -> Deferred:
        now = self.reactor.seconds()
        answered = self._answers.get(name)
        if answered is not None and now - answered[0] < API_SERVER_CHECK_TTL:
            return Deferred.fromCoroutine(_value(answered[1]))
        d = self._running.get(name)
        if d is None:
            d = self._running[name] = Deferred.fromCoroutine(self._check(self.reactor, self.clusters[name].credentials))

            def done(answer):
                del self._running[name]
                self._answers[name] = (self.reactor.seconds(), answer)
                return answer

            d.addErrback(lambda failure: f"API server check of {name} failed: {failure.getErrorMessage()}")
            d.addCallback(done)
        waiting = Deferred()
        d.addCallback(lambda answer: (waiting.callback(answer), answer)[1])
        return waiting


async def _value(value):
    return value
