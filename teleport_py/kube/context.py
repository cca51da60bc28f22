"""What one kubectl request carries down the agent, built once and frozen.

Teleport's ``lib/kube/proxy`` builds one ``authContext`` per request and
hands it to each handler; here a `RequestContext` is built by
``KubeCaller`` (kube/authorize.py) once the request is classified and
authorized, and the upstream exchange (kube/upstream.py) reads everything
it needs from it: the canonical request, the verified identity, the
decision, the cluster, the reactor and where audit events go. Nothing
below reaches back up for them.
"""
from __future__ import annotations

from typing import Callable, Mapping

import attrs

from teleport_py import events
from teleport_py.kube.canonical import CanonicalRequest
from teleport_py.config import ConnectionLimits
from teleport_py.kube.credentials import ClusterCredentials
from teleport_py.kube.memory_budget import MemoryBudget
from teleport_py.kube.request_event import KubeRequestEvents
from teleport_py.pki import UserIdentity
from teleport_py.rbac import RequestInfo


@attrs.frozen
class KubeCluster:
    """A cluster this agent serves: its name and labels as users' roles see them."""

    name: str
    labels: Mapping[str, str] = attrs.field(converter=dict, hash=False)
    credentials: ClusterCredentials


@attrs.frozen
class Decision:
    """Who the API server is told the caller is, what the request does, and
    whether its response is filtered item by item."""

    user: str
    groups: tuple[str, ...]
    info: RequestInfo
    #: ``(namespace, name) -> bool`` when the response must be filtered item by item.
    item_filter: Callable[[str, str], bool] | None = None


@attrs.frozen
class StreamContext:
    """What every request of one `kube` tunnel stream shares: the verified
    user, the cluster the certificate routes to, where kubectl connects
    from, where audit events go, and the agent's memory budget."""

    identity: UserIdentity
    cluster: KubeCluster
    client_addr: str
    reactor: object = attrs.field(repr=False)
    emit: Callable[[dict], None] = attrs.field(repr=False)
    #: The agent's one budget for bodies held whole (a LIST being filtered).
    buffers: MemoryBudget = attrs.field(repr=False)
    #: How long kubectl may take to send a request head, and to start the
    #: next one on a kept-alive HTTP/1.1 connection (``teleport.connection_limits``).
    limits: ConnectionLimits = ConnectionLimits()
    #: This Teleport cluster's name (the certificate's, when not configured).
    teleport_cluster: str = ""
    #: Where ``kube.request`` events go already encoded (EventSpool.emit_line);
    #: ``None``: they go to ``emit`` as dicts (in-memory audit logs of tests).
    emit_line: Callable[[bytes], None] | None = attrs.field(default=None, repr=False)
    #: The stream's fixed fields, encoded once (kube/request_event.py).
    request_events: KubeRequestEvents = attrs.field(init=False, repr=False, eq=False, default=attrs.Factory(
        lambda self: KubeRequestEvents(
            user=self.identity.username,
            cluster_name=self.teleport_cluster or self.identity.teleport_cluster,
            kube_cluster=self.cluster.name,
            addr_remote=self.client_addr,
            access_requests=self.identity.access_requests,
            allowed_resources=self.identity.allowed_resources,
        ), takes_self=True))

    def audit(self, method: str, path: str, info: RequestInfo | None, code: int, *,
              decision: Decision | None = None, reason: str | None = None) -> None:
        """One ``kube.request`` event; ``reason`` set means refused or failed."""
        if self.emit_line is not None:
            self.emit_line(self.request_events.line(
                self.reactor.seconds(), method, path, info, code,
                kubernetes_users=[decision.user] if decision else [],
                kubernetes_groups=list(decision.groups) if decision else [],
                reason=reason,
            ))
            return
        self.emit(events.make_event(
            events.KUBE_REQUEST,
            self.reactor.seconds(),
            success=reason is None,
            user=self.identity.username,
            cluster_name=self.teleport_cluster or self.identity.teleport_cluster,
            kube_cluster=self.cluster.name,
            http_method=method,
            verb=getattr(info, "verb", None),
            request_path=path,
            response_code=code,
            resource_api_group=getattr(info, "api_group", None),
            resource_kind=getattr(info, "resource", None),
            resource_namespace=getattr(info, "namespace", None),
            resource_name=getattr(info, "name", None),
            resource_subresource=getattr(info, "subresource", None),
            kubernetes_users=[decision.user] if decision else [],
            kubernetes_groups=list(decision.groups) if decision else [],
            addr_remote=self.client_addr,
            access_requests=list(self.identity.access_requests) or None,
            allowed_resources=[str(r) for r in self.identity.allowed_resources] or None,
            reason=reason,
        ))


@attrs.frozen
class RequestContext:
    """One authorized request: the stream it came on, the canonical request
    and the decision. The exchange forwards ``request`` (its rebuilt target,
    never the bytes received) as ``decision`` says."""

    stream: StreamContext
    request: CanonicalRequest
    decision: Decision

    identity = property(lambda self: self.stream.identity)
    cluster = property(lambda self: self.stream.cluster)
    reactor = property(lambda self: self.stream.reactor)

    def audit(self, code: int, reason: str | None = None) -> None:
        request = self.request
        self.stream.audit(request.method.decode("ascii"), request.target.decode("ascii"), self.decision.info,
                          code, decision=self.decision, reason=reason)
