"""``tsh request search --kind=pod|namespace``: the resources of one cluster
a user could request, listed by the agent from the real API server.

The proxy opens a ``kube_search`` tunnel stream whose metadata carries the
user certificate its TLS verified (verified again here), the cluster, the
kind and the namespace. The agent answers one JSON document and closes the
stream: nothing of the cluster's credentials, and of its objects only
names, namespaces and labels, leaves the agent.

As Teleport's ``ListKubernetesResources`` with ``UseSearchAsRoles``: the
user's roles plus every role they may search as
(``allow.request.search_as_roles`` not denied) decide which cluster is
reachable and how the list is asked for (their kube users and groups
impersonated); each object is listed only if those roles would grant
something on it (``AccessChecker.requestable``, what a resource request
for it needs). Audited as ``access_request.search``.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from teleport_py import events
from teleport_py.kube.api_get import APIGetError, api_get, api_path
from teleport_py.kube.context import KubeCluster
from teleport_py.pki import UserIdentity
from teleport_py.rbac import AccessChecker, AccessDenied
from teleport_py.resource_ids import NAMESPACE, POD, ResourceID
from teleport_py.resources.role import allowed_search_as_roles

log = Logger()

#: Largest list body read from the API server (10,000 pods are ~40 MiB).
MAX_LIST_BODY = 64 * 1024 * 1024
#: Most resources one search answers; the rest are left out (``truncated``).
MAX_ITEMS = 2000
#: How long a search may take before its stream is cut.
SEARCH_TIMEOUT = 30.0
KINDS = (POD, NAMESPACE)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SearchRefused(Exception):
    """A search that gets no list: ``code`` (an HTTP status) and a message for the user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class SearchQuery:
    kind: str
    #: ``""``: every namespace (pods).
    namespace: str = ""


def parse_query(metadata: Mapping[str, Any]) -> SearchQuery:
    kind, namespace = metadata.get("kind"), metadata.get("namespace", "")
    if kind not in KINDS:
        raise SearchRefused(400, f"kind must be one of {', '.join(KINDS)}")
    if not isinstance(namespace, str) or (namespace and not _DNS_LABEL.fullmatch(namespace)):
        raise SearchRefused(400, "namespace must be a Kubernetes namespace name")
    return SearchQuery(kind, namespace if kind == POD else "")


class ResourceSearch:
    """Searches one cluster as a user and the roles they may search as."""

    def __init__(self, services) -> None:
        #: kube.authorize.AgentServices: roles, locks, audit, the reactor.
        self.services = services

    async def search(self, identity: UserIdentity, cluster: KubeCluster, query: SearchQuery) -> list[dict]:
        services = self.services
        lock = services.locks.lock_for(identity) if services.locks is not None else None
        if lock is not None:
            raise SearchRefused(403, lock.describe())
        try:
            roles = await services.roles.roles(identity.roles)
            search_as = allowed_search_as_roles(roles)
            roles += [r for r in await services.roles.roles(search_as) if r.name not in identity.roles]
        except Exception as e:
            log.warn("role lookup failed user={user} error={error}", user=identity.username, error=e)
            raise SearchRefused(403, "access denied: roles could not be loaded") from None
        checker = AccessChecker(identity.username, roles, dict(identity.traits))
        try:
            checker.check_cluster(cluster.name, cluster.labels)
            user, groups = checker.impersonation(cluster.labels, None, [])
        except AccessDenied as e:
            raise SearchRefused(403, e.message) from None
        if query.kind == NAMESPACE:
            path = api_path("namespaces")
        elif query.namespace:
            path = api_path("namespaces", query.namespace, "pods")
        else:
            path = api_path("pods")
        try:
            code, body = await api_get(services.reactor, cluster.credentials, path, max_body=MAX_LIST_BODY,
                                       impersonate=(user, groups))
        except APIGetError as e:
            raise SearchRefused(502, str(e)) from None
        if code != 200:
            raise SearchRefused(code if code in (403, 404) else 502,
                                f'kubernetes cluster "{cluster.name}" refused to list {query.kind}s (HTTP {code})')
        teleport_cluster = services.teleport_cluster or identity.teleport_cluster
        found = []
        for namespace, name, labels in _objects(body):
            sub_resource = f"{namespace}/{name}" if query.kind == POD else name
            resource = ResourceID(teleport_cluster, query.kind, cluster.name, sub_resource)
            if checker.requestable(resource, cluster.labels):
                found.append({"kind": query.kind, "name": name, "namespace": namespace if query.kind == POD else "",
                              "labels": labels, "id": str(resource)})
        services.emit(events.make_event(
            events.ACCESS_REQUEST_SEARCH, services.reactor.seconds(), user=identity.username,
            cluster_name=teleport_cluster, kube_cluster=cluster.name, resource_type=query.kind,
            namespace=query.namespace or None, search_as_roles=search_as, found=len(found),
        ))
        return found


def _objects(body: bytes):
    """``(namespace, name, labels)`` of each item of a JSON list; SearchRefused if it is not one."""
    try:
        items = json.loads(body)["items"]
        if not isinstance(items, list):
            raise TypeError("items is not a list")
        for item in items:
            metadata = item["metadata"]
            labels = metadata.get("labels") or {}
            if not isinstance(labels, dict):
                raise TypeError("labels is not a map")
            yield str(metadata.get("namespace", "")), str(metadata["name"]), {str(k): str(v) for k, v in labels.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SearchRefused(502, f"the API server's list is malformed ({type(e).__name__})") from None


class SearchStream(Protocol):
    """One ``kube_search`` stream: runs the search once connected, writes
    ``{"items": [...]}`` (at most MAX_ITEMS, ``truncated`` if more) or
    ``{"error": {"code", "message"}}``, and closes. Anything the proxy
    sends is ignored; the stream is cut after SEARCH_TIMEOUT."""

    def __init__(self, search: ResourceSearch, identity: UserIdentity, cluster: KubeCluster, query: SearchQuery):
        self._search = search
        self._identity = identity
        self._cluster = cluster
        self._query = query
        self._timer = None
        self._running: Deferred | None = None

    def connectionMade(self) -> None:
        reactor = self._search.services.reactor
        self._timer = reactor.callLater(SEARCH_TIMEOUT, self._timed_out)
        self._running = Deferred.fromCoroutine(self._search.search(self._identity, self._cluster, self._query))
        self._running.addCallbacks(self._found, self._failed)

    def _found(self, items: list[dict]) -> None:
        answer: dict[str, Any] = {"items": items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            answer["truncated"] = True
        self._answer(answer)

    def _failed(self, failure) -> None:
        if failure.check(CancelledError):
            return  # timed out: the stream is cut already
        if failure.check(SearchRefused):
            error = failure.value
            log.info("resource search refused user={user} cluster={cluster} code={code} reason={reason}",
                     user=self._identity.username, cluster=self._cluster.name, code=error.code, reason=error.message)
            self._answer({"error": {"code": error.code, "message": error.message}})
        elif failure.check(Exception):
            log.failure("resource search failed", failure)
            self._answer({"error": {"code": 500, "message": "the resource search failed on the kubernetes service"}})

    def _answer(self, answer: dict) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.transport is not None and self.connected:
            self.transport.write(json.dumps(answer).encode("utf-8"))
            self.transport.loseConnection()

    def _timed_out(self) -> None:
        log.warn("resource search timed out user={user} cluster={cluster}",
                 user=self._identity.username, cluster=self._cluster.name)
        if self._running is not None:
            self._running.cancel()
        if self.connected:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.connected = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
