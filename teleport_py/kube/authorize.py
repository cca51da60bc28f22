"""What the agent decides about each kubectl request, whichever HTTP version carried it.

A `KubeCaller` is the verified user of one `kube` tunnel stream. Each
request is first made canonical (kube/canonical.py: origin-form only, the
path decoded once and classified; anything else is a 400 and goes nowhere).
Then it checks the certificate's expiry, the ``Impersonate-*`` headers and
the caller's roles, answers denials as Kubernetes ``Status`` JSON, builds
the request's frozen `RequestContext` (kube/context.py) and hands it to an
upstream exchange (kube/upstream.py, kube/upstream_h2.py), unless kubectl
went away while it was being authorized; one audit event per request. The
HTTP front ends (kube/http1.py, kube/http2.py) only translate between their
wire and these calls.

Roles may grant only part of a collection (pods in one namespace), so the
decision says when list and watch responses must be filtered item by item
(``teleport_py.rbac.filters``). A ``create`` body is read first (bounded,
JSON or Kubernetes protobuf) so that rules restricting names apply to the
object's ``metadata.name``.
"""
from __future__ import annotations

import json
import weakref
from typing import Awaitable, Callable, Sequence

import attrs
from twisted.logger import Logger

from teleport_py.kube.api_get import APIGetError, api_get, api_path
from teleport_py.kube.canonical import BadRequestTarget, CanonicalRequest, canonical_request
from teleport_py.kube.context import Decision, KubeCluster, RequestContext, StreamContext
from teleport_py.kube.create_body import CreateBodyError, object_meta
from teleport_py.kube.credentials import ClusterCredentials, CredentialsError
from teleport_py.kube.interfaces import Downstream
from teleport_py.kube.locks import LockWatch
from teleport_py.kube.memory_budget import Claim, OverBudget, TooLarge
from teleport_py.kube.pools import ClusterConnections
from teleport_py.kube.sessions import SessionRecorder
from teleport_py.kube.upstream import UpstreamRequest
from teleport_py.kube.upstream_h2 import H2NotSupported, H2UpstreamRequest
from teleport_py.kube_status import KubeStatus
from teleport_py.pki import UserIdentity
from teleport_py.rbac import AccessChecker, AccessDenied, RequestInfo
from teleport_py.rbac.checker import BUILTIN_API_GROUPS
from teleport_py.resources import Role

log = Logger()

#: Largest ``create`` body read to learn the new object's name (the API
#: server's own limit for a request body is 3 MiB).
MAX_CREATE_BODY = 3 * 1024 * 1024
#: Largest APIResourceList read from discovery (the largest built-in group's is ~10 KiB).
MAX_DISCOVERY_BODY = 8 * 1024 * 1024


class RoleCache:
    """Roles by name, kept for ``ttl`` seconds: a kubectl command makes several
    requests and each must not cost a round trip to Auth, while an edited role
    still takes effect within seconds."""

    def __init__(self, reactor, fetch: Callable[[str], Awaitable[Role | None]], ttl: float = 10.0) -> None:
        self._reactor = reactor
        self._fetch = fetch
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Role | None]] = {}

    async def roles(self, names: Sequence[str]) -> list[Role]:
        """The named roles that exist; a lookup failure raises (fail closed)."""
        found = []
        for name in names:
            now = self._reactor.seconds()
            cached = self._cache.get(name)
            if cached is None or cached[0] <= now:
                cached = (now + self._ttl, await self._fetch(name))
                self._cache[name] = cached
            if cached[1] is not None:
                found.append(cached[1])
        return found


class CheckerCache:
    """Access checkers by verified identity and the role objects the
    RoleCache returned: building one converts and expands every role, which
    every request of a user would otherwise repeat. An entry keeps its roles
    alive, so their ids in its key cannot be reused; roles fetched anew
    (edited, or past the RoleCache's TTL) are new objects, hence new entries.
    Bounded; the oldest entry goes first."""

    def __init__(self, max_entries: int = 256) -> None:
        self._max_entries = max_entries
        self._entries: dict[tuple, tuple[list[Role], AccessChecker]] = {}

    def checker(self, identity: UserIdentity, roles: list[Role], teleport_cluster: str = "") -> AccessChecker:
        """``teleport_cluster`` is the cluster whose resource ids apply (the
        certificate's when not given)."""
        teleport_cluster = teleport_cluster or identity.teleport_cluster
        key = (identity.username, identity.traits, tuple(map(id, roles)), identity.allowed_resources, teleport_cluster)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
            entry = self._entries[key] = (roles, AccessChecker(
                identity.username, roles, dict(identity.traits),
                allowed_resources=identity.allowed_resources, teleport_cluster=teleport_cluster))
        return entry[1]


class DiscoveryError(Exception):
    """The API server's discovery document could not be read."""


async def fetch_api_resources(reactor, credentials: ClusterCredentials, group: str, version: str) -> dict[str, bool]:
    """``{resource: namespaced}`` from ``/apis/GROUP/VERSION``, asked with the
    agent's own credentials (discovery is open to every authenticated user)."""
    path = api_path(api_group=group, version=version)
    try:
        code, body = await api_get(reactor, credentials, path, max_body=MAX_DISCOVERY_BODY)
    except APIGetError as e:
        raise DiscoveryError(str(e)) from None
    if code != 200:
        raise DiscoveryError(f"GET {path} answered {code}")
    try:
        resources = json.loads(body)["resources"]
        return {r["name"]: r["namespaced"] is True for r in resources}
    except (ValueError, KeyError, TypeError) as e:
        raise DiscoveryError(f"GET {path}: malformed APIResourceList ({e!r})") from None


class Discovery:
    """Whether resources outside Kubernetes' built-in API groups (CRDs,
    aggregated APIs) are namespaced, learnt from the API server and cached
    per cluster and group version: a rule scoped to a namespace must never
    reach a cluster-scoped custom resource, and no table of ours knows them."""

    def __init__(self, reactor, fetch=fetch_api_resources, ttl: float = 60.0, refresh_after: float = 1.0) -> None:
        self._reactor = reactor
        self._fetch = fetch
        self._ttl = ttl
        self._refresh_after = refresh_after
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, bool]]] = {}

    async def namespace_scoped(self, cluster: KubeCluster, info: RequestInfo) -> bool | None:
        """``None`` when the checker's own knowledge applies or discovery failed."""
        if not info.is_resource_request or not info.resource or info.api_group in BUILTIN_API_GROUPS:
            return None
        key = (cluster.name, info.api_group, info.api_version)
        now = self._reactor.seconds()
        fetched_at, resources = self._cache.get(key, (None, {}))
        stale = fetched_at is None or now >= fetched_at + self._ttl
        if stale or (info.resource not in resources and now >= fetched_at + self._refresh_after):
            # A CRD created a moment ago must not wait for the TTL.
            try:
                resources = await self._fetch(self._reactor, cluster.credentials, info.api_group, info.api_version)
            except Exception as e:
                log.warn("API discovery failed cluster={cluster} group={group} version={version} error={error}",
                         cluster=cluster.name, group=info.api_group, version=info.api_version, error=e)
                return None
            self._cache[key] = (now, resources)
        return resources.get(info.resource)


@attrs.define
class HeldRequest:
    """A ``create`` whose body is read before authorizing: bounded, and held
    on a ``claim`` of the agent's memory budget, given back when the body
    has gone upstream or, whatever else ends the request, when this object
    goes away (a front end drops it with its connection)."""

    request: CanonicalRequest
    claim: Claim | None = None
    body: bytearray = attrs.Factory(bytearray)
    too_large: bool = False
    #: The agent's memory budget was spent: the request gets a 429.
    over_budget: str = ""

    def __attrs_post_init__(self) -> None:
        if self.claim is not None:
            weakref.finalize(self, self.claim.release)

    def add(self, data: bytes) -> None:
        if self.too_large or self.over_budget:
            return
        if len(self.body) + len(data) > MAX_CREATE_BODY:
            self.too_large = True
            self.sent()
            return
        if self.claim is not None:
            try:
                self.claim.take(len(data))
            except (OverBudget, TooLarge) as e:
                self.over_budget = str(e)
                self.sent()
                return
        self.body += data

    def sent(self) -> None:
        """The body is no longer held."""
        self.body.clear()
        if self.claim is not None:
            self.claim.release()


@attrs.frozen
class AgentServices:
    """What the agent lends every request of every stream: built once by
    the stream acceptor (kube/acceptor.py) and handed to each `KubeCaller`."""

    reactor: object = attrs.field(repr=False)
    roles: RoleCache
    checkers: CheckerCache
    discovery: Discovery
    connections: ClusterConnections
    emit: Callable[[dict], None] = attrs.field(repr=False)
    teleport_cluster: str = ""
    sessions: SessionRecorder | None = None
    #: The locks in force (kube/locks.py); a locked user's requests are refused.
    locks: LockWatch | None = None


class KubeCaller:
    """The verified user of one tunnel stream and the cluster it is routed
    to: authorizes, forwards and audits each of its requests."""

    def __init__(self, services: AgentServices, stream: StreamContext) -> None:
        self.services = services
        self.stream = stream

    identity = property(lambda self: self.stream.identity)
    cluster = property(lambda self: self.stream.cluster)
    client_addr = property(lambda self: self.stream.client_addr)

    def hold(self, request: CanonicalRequest) -> HeldRequest:
        """A create whose body must be read before it is authorized, held on the agent's memory budget."""
        return HeldRequest(request, self.stream.buffers.claim())

    def canonical(self, downstream: Downstream, method: bytes, target: bytes, authority: bytes,
                  headers) -> CanonicalRequest | None:
        """The request made canonical, or ``None`` once kubectl has had a 400
        Status saying why it cannot be (audited as refused)."""
        try:
            return canonical_request(method, target, authority, headers)
        except BadRequestTarget as e:
            log.debug("refused a malformed request target user={user} error={error}",
                      user=self.identity.username, error=e)
            self.stream.audit(method.decode("latin-1"), target.decode("latin-1"), None, 400,
                              reason=f"malformed request: {e}")
            downstream.respond_status(KubeStatus(400, f"teleport refused the request: {e}"))
            return None

    def refused_unparsed(self, code: int, error: str) -> None:
        """Audit a request the HTTP parser refused before it could be made
        canonical (raw malformed HTTP/1.1, an HTTP/2 request h2 or this
        agent cannot carry): one ``kube.request`` event, ``success: false``,
        with no method or path (none was read) and ``error`` bounded and
        escaped, since it may quote the bytes kubectl sent."""
        reason = unparsed_reason(error)
        log.info("refused a malformed request user={user} client={client} error={error}",
                 user=self.identity.username, client=self.client_addr, error=reason)
        self.stream.audit("", "", None, code, reason=reason)

    def cut_short(self, code: int, reason: str, method: bytes = b"", target: bytes = b"") -> None:
        """Audit a request kubectl began but did not finish sending before
        the connection was ended (its head too slow, or a flood on its
        connection): one refused ``kube.request`` event with ``reason`` and,
        when read that far, the raw method and target, escaped and cut like
        `refused_unparsed`'s. A connection that ends between requests is
        not a request, and is not audited."""
        log.info("request cut short user={user} client={client} code={code} reason={reason}",
                 user=self.identity.username, client=self.client_addr, code=code, reason=reason)
        self.stream.audit(printable(method), printable(target), None, code, reason=printable(reason))

    async def forward(self, downstream: Downstream, request: CanonicalRequest, held: HeldRequest | None) -> None:
        """Authorize ``request`` and start it upstream, or answer kubectl
        with the reason it cannot go (a Status, audited). Returns once the
        request is on its way: the exchange is then ``downstream.upstream``."""
        if held is not None and held.too_large:
            self._audit(request, request.info, 413, reason="create body too large to authorize")
            downstream.respond_status(KubeStatus(
                413, f"request body larger than {MAX_CREATE_BODY} bytes cannot be authorized"))
            return
        if held is not None and held.over_budget:
            self._audit(request, request.info, 429, reason=f"memory budget: {held.over_budget}")
            downstream.respond_status(KubeStatus(
                429, "the teleport agent holds too many request bodies at once; retry in a few seconds",
                details={"retryAfterSeconds": 1}))
            return
        try:
            decision = await self._authorize(request, held)
        except AccessDenied as denied:
            info = getattr(denied, "info", None)
            self._audit(request, info, 403, reason=denied.reason)
            downstream.respond_status(denial_status(request, info, denied.message))
            return
        if downstream.closed:
            # kubectl went away while its request was being authorized: nothing goes upstream.
            log.debug("client gone before its request was sent user={user} path={path}",
                      user=self.identity.username, path=decision.info.path)
            return
        context = RequestContext(self.stream, request, decision)
        exchange, carrier = self._carrier(context)
        upstream = exchange(downstream, context)
        downstream.upstream = upstream
        if held is not None:
            upstream.request_data(bytes(held.body))
            upstream.request_done()
            held.sent()
        try:
            try:
                await upstream.start(carrier)
            except H2NotSupported:
                # An API server without HTTP/2: the watch takes a connection of its own.
                ended = upstream._request_ended
                if downstream.closed:
                    return
                upstream = downstream.upstream = UpstreamRequest(downstream, context)
                if ended:
                    upstream.request_done()
                await upstream.start(self.services.connections.pool(self.cluster))
        except CredentialsError as e:
            downstream.upstream = None
            log.error("cannot authenticate to the API server cluster={cluster} error={error}",
                      cluster=self.cluster.name, error=e)
            context.audit(502, "agent credentials unusable")
            downstream.respond_status(KubeStatus(
                502, f'the agent cannot authenticate to kubernetes cluster "{self.cluster.name}"'))
        except Exception as e:
            downstream.upstream = None
            log.warn("API server unreachable cluster={cluster} error={error}", cluster=self.cluster.name, error=e)
            context.audit(502, "API server unreachable")
            downstream.respond_status(KubeStatus(502, f'kubernetes cluster "{self.cluster.name}" is unreachable'))

    def _carrier(self, context: RequestContext):
        """What carries a request to the API server: the one place to choose
        it. A watch lives as long as kubectl keeps it, so it goes on a stream
        of the cluster's HTTP/2 connections (a few KiB, where a connection of
        its own holds about 37 KiB of TLS state); everything else borrows a
        keep-alive HTTP/1.1 connection, whose pass-through relay costs less
        CPU per request than HTTP/2's framing."""
        connections = self.services.connections
        if context.decision.info.verb == "watch":
            return H2UpstreamRequest, connections.h2_pool(self.cluster)
        return UpstreamRequest, connections.pool(self.cluster)

    async def _authorize(self, request: CanonicalRequest, held: HeldRequest | None) -> Decision:
        info = request.info
        if held is not None:
            info = attrs.evolve(info, name=name_from_body(request, held.body, info))
        try:
            return await self._decide(request, info)
        except AccessDenied as e:
            e.info = info
            raise

    async def _decide(self, request: CanonicalRequest, info: RequestInfo) -> Decision:
        identity, cluster, services = self.identity, self.cluster, self.services
        if services.reactor.seconds() >= identity.expires.timestamp():
            raise AccessDenied("your certificate has expired, please log in again", "certificate expired")
        lock = services.locks.lock_for(identity) if services.locks is not None else None
        if lock is not None:
            raise AccessDenied(lock.describe(), "locked")
        requested_user, requested_groups = None, []
        for name, value in request.headers:
            if name == b"impersonate-user":
                if requested_user is not None:
                    raise AccessDenied("impersonation request has been denied, more than one user requested")
                requested_user = value.decode("latin-1")
            elif name == b"impersonate-group":
                requested_groups.append(value.decode("latin-1"))
            elif name.startswith(b"impersonate-"):
                raise AccessDenied(
                    f"impersonation request has been denied, header {name.decode('latin-1')!r} is not allowed"
                )
        try:
            roles = await services.roles.roles(identity.roles)
        except Exception as e:
            log.warn("role lookup failed user={user} error={error}", user=identity.username, error=e)
            raise AccessDenied("access denied: roles could not be loaded", "role lookup failed") from None
        checker = services.checkers.checker(identity, roles, services.teleport_cluster)
        checker.check_cluster(cluster.name, cluster.labels)
        user, groups = checker.impersonation(cluster.labels, requested_user, requested_groups)
        namespace_scoped = await services.discovery.namespace_scoped(cluster, info)
        checker.check_request(info, cluster.labels, namespace_scoped=namespace_scoped, cluster_name=cluster.name)
        item_filter = None
        if checker.needs_filtering(info, cluster.labels, namespace_scoped=namespace_scoped, cluster_name=cluster.name):
            item_filter = checker.item_filter(info, cluster.labels, cluster_name=cluster.name)
        return Decision(user, groups, info, item_filter)

    def _audit(self, request: CanonicalRequest, info, code: int, *, reason: str) -> None:
        """A request refused before it had a context."""
        self.stream.audit(request.method.decode("ascii"), request.target.decode("ascii"), info, code, reason=reason)


#: Longest reason audited for a request the HTTP parser refused: enough to
#: name the problem and quote the start of what was sent, never a whole head.
MAX_UNPARSED_REASON = 160


def unparsed_reason(error: str) -> str:
    """``error`` as one printable ASCII line of at most `MAX_UNPARSED_REASON`
    characters: control and non-ASCII characters escaped, the rest cut."""
    return printable(f"malformed request: {error}")


def printable(text: str | bytes) -> str:
    """``text`` (bytes read as latin-1) as one printable ASCII line of at
    most `MAX_UNPARSED_REASON` characters: control and non-ASCII characters
    escaped, the rest cut."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in escaped)
    if len(escaped) > MAX_UNPARSED_REASON:
        escaped = escaped[:MAX_UNPARSED_REASON - 3] + "..."
    return escaped


def name_from_body(request: CanonicalRequest, body: bytes, info: RequestInfo) -> str:
    """``metadata.name`` of the object a create sends (``""`` with only
    ``generateName``), from a JSON or protobuf body (kube/create_body.py).
    A body we cannot read the way the API server will is refused: guessing
    ``""`` would slip past deny rules on names."""
    try:
        return object_meta(request.header(b"content-type") or b"", body, info.namespace).name
    except CreateBodyError as e:
        raise _denied(e.message, e.reason, info) from None


def _denied(message: str, reason: str, info) -> AccessDenied:
    denied = AccessDenied(message, reason)
    denied.info = info
    return denied


def denial_status(request: CanonicalRequest, info: RequestInfo | None, message: str) -> KubeStatus:
    """The 403 kubectl shows. On a resource it says which object was
    refused, as the API server's Forbidden Status does. On discovery
    (``/api``, ``/apis``, ``/version``: what kubectl asks first, and where
    a refusal that holds for every request, like a choice of
    ``kubernetes_users`` to make, lands) it is plain text: client-go reads
    those answers raw and shows the body only when it is ``text/*``; a JSON
    Status there, even the API server's own, prints ``Error from server
    (Forbidden): unknown`` (measured with kubectl 1.32 and 1.37)."""
    if info is None or not info.is_resource_request or not info.resource:
        return KubeStatus(403, message, text=not request.info.is_resource_request)
    return KubeStatus(403, message, details={"name": info.name, "group": info.api_group, "kind": info.resource})
