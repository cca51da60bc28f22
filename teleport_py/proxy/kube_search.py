"""``GET /webapi/kube/resources``: a user's ``tsh request search`` for pods
or namespaces, answered by an agent serving the cluster.

The proxy opens a ``kube_search`` tunnel stream to that agent with the
user certificate its own TLS verified (kube/resource_search.py verifies it
again and does the search) and relays the one JSON document the agent
writes, bounded in size and time. The proxy holds no cluster credential
and decides nothing.
"""
from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py.auth.errors import AccessDenied, AuthError, BadParameter, NotFound
from teleport_py.proxy.registry import AgentRegistry

log = Logger()

#: Largest answer read from an agent (MAX_ITEMS resources with labels).
MAX_ANSWER = 4 * 1024 * 1024
#: How long the agent has to answer (its own limit is 30 s).
ANSWER_TIMEOUT = 40.0


class _Answer(Protocol):
    """Collects the agent's answer until it closes the stream; more than
    MAX_ANSWER bytes abort it."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred()
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_ANSWER:
            self._too_large = True
            self._chunks = []
            self.transport.abortConnection()
            return
        self._chunks.append(data)

    def connectionLost(self, reason=None) -> None:
        if not self.done.called:
            self.done.callback(None if self._too_large else b"".join(self._chunks))


class Unavailable(AuthError):
    status = 502
    kind = "unavailable"


_ERRORS = {400: BadParameter, 403: AccessDenied, 404: NotFound}


class KubeResourceSearch:
    def __init__(self, reactor, registry: AgentRegistry) -> None:
        self._reactor = reactor
        self._registry = registry

    async def search(self, user_cert_pem: str, client_addr: str, kube_cluster: str, kind: str,
                     namespace: str) -> dict:
        picked = self._registry.pick(kube_cluster)
        if picked is None:
            raise NotFound(f'kubernetes cluster "{kube_cluster}" not found or offline')
        tunnel, agent = picked
        metadata = {"user_cert": user_cert_pem, "client_addr": client_addr, "kube_cluster": kube_cluster,
                    "kind": kind, "namespace": namespace}
        answer = _Answer()
        try:
            await tunnel.open_stream("kube_search", metadata, answer)
        except Exception as e:
            log.info("agent refused a search stream agent={agent} reason={reason}", agent=agent.host_id, reason=e)
            raise BadParameter(f"the kubernetes service refused the search: {e}") from None
        timer = self._reactor.callLater(ANSWER_TIMEOUT, lambda: answer.transport.abortConnection())
        try:
            body = await answer.done
        finally:
            if timer.active():
                timer.cancel()
        if not body:
            raise Unavailable("the kubernetes service gave no answer to the search (too large, or too slow)")
        try:
            result = json.loads(body)
            if "error" in result:
                error = result["error"]
                raise _ERRORS.get(error["code"], Unavailable)(str(error["message"]))
            items = result["items"]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise TypeError("items")
        except (ValueError, KeyError, TypeError):
            raise Unavailable("the kubernetes service's answer to the search is malformed") from None
        return {"items": items, "truncated": bool(result.get("truncated"))}
