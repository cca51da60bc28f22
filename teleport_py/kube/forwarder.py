"""The agent's HTTP/1.1 front: one kubectl connection per `kube` tunnel stream.

For each request on a stream: authorize it against the caller's roles, then
replay it on a pooled keep-alive connection to the API server
(``teleport_py.kube.upstream``) with the agent's own credentials and
``Impersonate-*`` headers naming who the caller may act as.
Responses are relayed event by event, never buffered whole, because
``watch`` and ``logs -f`` never end. An upgrade (exec, attach, port-forward)
becomes a raw byte relay after the API server's 101.

Roles may grant only part of a collection (pods in one namespace), so list
and watch responses are filtered item by item (``teleport_py.rbac.filters``)
unless a rule provably covers the whole collection; a response that cannot be
filtered is refused, never forwarded. ``deletecollection`` is refused unless
the whole collection may be deleted (the API server would delete hidden items
too). A ``create`` body is read first (bounded) so that rules restricting
names apply to the object's ``metadata.name``.

Both HTTP directions are parsed by h11 (sans-IO), so a malformed request is a
400 and never an exception on the reactor.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Awaitable, Callable, Mapping, Sequence
from urllib.parse import parse_qs, quote

import attrs
import h11
from cryptography import x509
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from teleport_py import events
from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody, FramingError, body_framing
from teleport_py.kube.credentials import ClusterCredentials, CredentialsError
from teleport_py.kube.sessions import SessionRecorder, SessionRelay, session_info
from teleport_py.kube.upstream import PooledConnection, UpstreamPool
from teleport_py.pki import IdentityError, UserIdentity, identity_from_certificate
from teleport_py.remotecommand import RemoteCommandError
from teleport_py.rbac import AccessChecker, AccessDenied, RequestInfo, classify, status_body
from teleport_py.rbac.checker import BUILTIN_API_GROUPS
from teleport_py.rbac.filters import FilterError, filterable_accept, response_filter
from teleport_py.resources import Role
from teleport_py.tunnel import StreamRejected

log = Logger()

#: Request headers never passed upstream: the client's own credentials,
#: impersonation (we set it), and hop-by-hop headers of the client's connection.
_DROPPED_REQUEST_HEADERS = frozenset({
    b"authorization", b"proxy-authorization", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"upgrade",
})
_DROPPED_RESPONSE_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"trailer"})
#: Requests replayed once on a new connection when a pooled one turns out to
#: have been closed by the API server before answering (safe: no side effects).
_RETRYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Largest ``create`` body read to learn the new object's name (the API
#: server's own limit for a request body is 3 MiB).
MAX_CREATE_BODY = 3 * 1024 * 1024


@attrs.frozen
class KubeCluster:
    """A cluster this agent serves: its name and labels as users' roles see them."""

    name: str
    labels: Mapping[str, str] = attrs.field(converter=dict, hash=False)
    credentials: ClusterCredentials


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

    def checker(self, identity: UserIdentity, roles: list[Role]) -> AccessChecker:
        key = (identity.username, identity.traits, tuple(map(id, roles)))
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
            entry = self._entries[key] = (roles, AccessChecker(identity.username, roles, dict(identity.traits)))
        return entry[1]


class DiscoveryError(Exception):
    """The API server's discovery document could not be read."""


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _ClusterTLS:
    credentials: ClusterCredentials

    def creatorForNetloc(self, hostname, port):
        return self.credentials.tls_options()


async def fetch_api_resources(reactor, credentials: ClusterCredentials, group: str, version: str) -> dict[str, bool]:
    """``{resource: namespaced}`` from ``/apis/GROUP/VERSION``, asked with the
    agent's own credentials (discovery is open to every authenticated user)."""
    host = f"[{credentials.host}]" if ":" in credentials.host else credentials.host
    path = f"/apis/{quote(group, safe='')}/{quote(version, safe='')}" if group else f"/api/{quote(version, safe='')}"
    headers = Headers({b"accept": [b"application/json"]})
    token = credentials.bearer_token()
    if token:
        headers.addRawHeader(b"authorization", b"Bearer " + token.encode("ascii"))
    agent = Agent(reactor, contextFactory=_ClusterTLS(credentials))
    response = await agent.request(b"GET", f"https://{host}:{credentials.port}{path}".encode("ascii"), headers)
    body = await readBody(response)
    if response.code != 200:
        raise DiscoveryError(f"GET {path} answered {response.code}")
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

    async def namespace_scoped(self, cluster: "KubeCluster", info: RequestInfo) -> bool | None:
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


class Forwarder:
    """Accepts `kube` streams for the clusters this agent serves."""

    def __init__(
        self,
        reactor,
        *,
        clusters: Mapping[str, KubeCluster],
        user_cas: Sequence[x509.Certificate],
        roles: RoleCache,
        emit: Callable[[dict], None],
        teleport_cluster: str = "",
        discovery: Discovery | None = None,
        sessions: SessionRecorder | None = None,
    ) -> None:
        self.reactor = reactor
        self.discovery = discovery or Discovery(reactor)
        self.clusters = dict(clusters)
        self.user_cas = tuple(user_cas)
        self.roles = roles
        self.emit = emit
        self.teleport_cluster = teleport_cluster
        self.sessions = sessions
        self.checkers = CheckerCache()
        self._pools: dict[str, UpstreamPool] = {}

    def accept_stream(self, metadata: Mapping) -> Protocol:
        """The stream's protocol, only for a user certificate our user CA signed
        that is valid now and routed to a cluster we serve."""
        identity = self._verified_user(metadata.get("user_cert"))
        cluster = self.clusters.get(metadata.get("kube_cluster"))
        if cluster is None or identity.kube_cluster != cluster.name:
            log.warn("refused kube stream user={user} cluster={cluster}",
                     user=identity.username, cluster=metadata.get("kube_cluster"))
            raise StreamRejected("kubernetes cluster not served here")
        return KubeConnection(self, identity, cluster, str(metadata.get("client_addr", "")))

    def _verified_user(self, pem) -> UserIdentity:
        now = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except (AttributeError, ValueError, UnicodeError):
            raise StreamRejected("missing or malformed user certificate") from None
        for ca in self.user_cas:
            try:
                identity = identity_from_certificate(cert, user_ca=ca, host_ca=None, now=now)
            except IdentityError:
                continue
            if isinstance(identity, UserIdentity):
                return identity
        raise StreamRejected("user certificate is not valid")

    def pool(self, cluster: KubeCluster) -> UpstreamPool:
        """The cluster's keep-alive connections to its API server. TLS options
        are built once per cluster: they load keys and make an OpenSSL
        context, a tenth of the agent's CPU when done per connection."""
        pool = self._pools.get(cluster.name)
        if pool is None:
            creds = cluster.credentials
            tls = creds.tls_options()
            pool = self._pools[cluster.name] = UpstreamPool(
                self.reactor, lambda: wrapClientTLS(tls, HostnameEndpoint(self.reactor, creds.host, creds.port)))
        return pool

    def close(self) -> Deferred:
        """Close idle API server connections (on shutdown); fires when they are closed."""
        pools, self._pools = list(self._pools.values()), {}
        return gatherResults([pool.close() for pool in pools])


@implementer(IPushProducer)
@attrs.define
class _Throttle:
    """Lets one transport pause another without being able to stop it: a
    transport stops its producer when it closes, and one finished request
    must not tear down the kubectl connection it came from."""

    transport: object

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Closing is decided by the protocols, not by the peer transport."""


@attrs.frozen
class _Decision:
    user: str
    groups: tuple[str, ...]
    info: RequestInfo
    #: ``(namespace, name) -> bool`` when the response must be filtered item by item.
    item_filter: Callable[[str, str], bool] | None = None


@attrs.define
class _HeldRequest:
    """A ``create`` whose body is read before authorizing (bounded)."""

    request: h11.Request
    body: bytearray = attrs.Factory(bytearray)
    too_large: bool = False

    def add(self, data: bytes) -> None:
        if self.too_large:
            return
        if len(self.body) + len(data) > MAX_CREATE_BODY:
            self.too_large = True
            self.body.clear()
        else:
            self.body += data


class KubeConnection(Protocol):
    """HTTP/1.1 server side of one kubectl connection (one tunnel stream)."""

    def __init__(self, forwarder: Forwarder, identity: UserIdentity, cluster: KubeCluster, client_addr: str):
        self.forwarder = forwarder
        self.identity = identity
        self.cluster = cluster
        self.client_addr = client_addr
        self.http = h11.Connection(h11.SERVER)
        self.upstream: UpstreamRequest | None = None
        self._held: _HeldRequest | None = None
        self._authorizing = False
        self._relay: SessionRelay | None = None
        self._closed = False

    # -- Protocol --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.from_client(data)
            return
        self.http.receive_data(data)
        self._next_events()

    def connectionLost(self, reason=None) -> None:
        self._closed = True
        if self.upstream is not None:
            self.upstream.downstream_lost()
        if self._relay is not None:
            self._relay.connection_lost()
            _close(self._relay.server_transport)

    # -- HTTP events from kubectl ----------------------------------------------

    def _next_events(self) -> None:
        while not self._authorizing and not self._closed and self._relay is None:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as e:
                self._bad_request(e)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                if _names_object_in_body(event):
                    self._held = _HeldRequest(event)
                else:
                    self._begin(event)
            elif isinstance(event, h11.Data):
                if self._held is not None:
                    self._held.add(event.data)
                elif self.upstream is not None:
                    self.upstream.request_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if self._held is not None:
                    held, self._held = self._held, None
                    self._begin(held.request, held)
                    return
                if self.upstream is not None:
                    self.upstream.request_done()
                self._maybe_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.loseConnection()
                return

    def _maybe_next_cycle(self) -> None:
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
            self.http.start_next_cycle()
        elif self.http.our_state is h11.MUST_CLOSE:
            self.transport.loseConnection()

    def _begin(self, request: h11.Request, held: _HeldRequest | None = None) -> None:
        self._authorizing = True
        self.transport.pauseProducing()
        d = Deferred.fromCoroutine(self._start(request, held))
        d.addErrback(self._internal_error)

    async def _start(self, request: h11.Request, held: _HeldRequest | None) -> None:
        if held is not None and held.too_large:
            self._audit(request, None, 413, reason="create body too large to authorize")
            self.respond_status(413, "RequestEntityTooLarge",
                                f"request body larger than {MAX_CREATE_BODY} bytes cannot be authorized")
            self._resume()
            return
        try:
            decision = await self._authorize(request, held)
        except AccessDenied as denied:
            info = getattr(denied, "info", None)
            self._audit(request, info, 403, reason=denied.reason)
            self.respond_status(403, "Forbidden", denied.message, details=_status_details(info))
            self._resume()
            return
        upstream = UpstreamRequest(self, request, decision)
        self.upstream = upstream
        if held is not None:
            upstream.request_data(bytes(held.body))
            upstream.request_done()
        try:
            await upstream.start(self.forwarder.pool(self.cluster))
        except CredentialsError as e:
            self.upstream = None
            log.error("cannot authenticate to the API server cluster={cluster} error={error}",
                      cluster=self.cluster.name, error=e)
            self._audit(request, decision.info, 502, decision=decision, reason="agent credentials unusable")
            self.respond_status(502, "ServiceUnavailable",
                                f'the agent cannot authenticate to kubernetes cluster "{self.cluster.name}"')
        except Exception as e:
            self.upstream = None
            log.warn("API server unreachable cluster={cluster} error={error}", cluster=self.cluster.name, error=e)
            self._audit(request, decision.info, 502, decision=decision, reason="API server unreachable")
            self.respond_status(502, "ServiceUnavailable", f'kubernetes cluster "{self.cluster.name}" is unreachable')
        self._resume()

    def _resume(self) -> None:
        self._authorizing = False
        if self._closed:
            return
        self.transport.resumeProducing()
        self._maybe_next_cycle()
        self._next_events()

    async def _authorize(self, request: h11.Request, held: _HeldRequest | None) -> _Decision:
        path, _, query = request.target.decode("latin-1").partition("?")
        info = classify(request.method.decode("latin-1"), path, parse_qs(query, keep_blank_values=True))
        if held is not None:
            info = attrs.evolve(info, name=_name_from_body(request, held.body, info))
        try:
            return await self._decide(request, info)
        except AccessDenied as e:
            e.info = info
            raise

    async def _decide(self, request: h11.Request, info: RequestInfo) -> _Decision:
        identity, cluster = self.identity, self.cluster
        if self.forwarder.reactor.seconds() >= identity.expires.timestamp():
            raise AccessDenied("your certificate has expired, please log in again", "certificate expired")
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
            roles = await self.forwarder.roles.roles(identity.roles)
        except Exception as e:
            log.warn("role lookup failed user={user} error={error}", user=identity.username, error=e)
            raise AccessDenied("access denied: roles could not be loaded", "role lookup failed") from None
        checker = self.forwarder.checkers.checker(identity, roles)
        checker.check_cluster(cluster.name, cluster.labels)
        user, groups = checker.impersonation(cluster.labels, requested_user, requested_groups)
        namespace_scoped = await self.forwarder.discovery.namespace_scoped(cluster, info)
        checker.check_request(info, cluster.labels, namespace_scoped=namespace_scoped)
        item_filter = None
        if checker.needs_filtering(info, cluster.labels, namespace_scoped=namespace_scoped):
            item_filter = checker.item_filter(info, cluster.labels)
        return _Decision(user, groups, info, item_filter)

    # -- answering kubectl -----------------------------------------------------

    def send(self, *events) -> None:
        """One write for several events: each write is a tunnel frame."""
        if events and not self._closed:
            self.transport.write(b"".join([self.http.send(event) for event in events]))

    def send_framed(self, head: Sequence, body: bytes, framing: ChunkedBody | ContentLengthBody, end: bool) -> None:
        """``head`` events, then body bytes as the API server framed them, in
        one write; h11 follows our response without encoding it again: a
        Content-Length body passes through it as is (it only counts), a
        chunked one already holds its last chunk, so h11's is not sent."""
        if self._closed:
            return
        out = [self.http.send(event) for event in head]
        out.append(self.http.send(h11.Data(data=body)) if body and not framing.chunked else body)
        if end:
            eom = self.http.send(h11.EndOfMessage())
            if not framing.chunked:
                out.append(eom)
        self.transport.write(b"".join(out))

    def respond_status(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        """A Kubernetes Status body kubectl prints as the error."""
        if self.http.our_state is not h11.SEND_RESPONSE:
            self.transport.abortConnection()
            return
        body = status_body(code, reason, message, details)
        self.send(h11.Response(status_code=code, headers=[
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        ]), h11.Data(data=body), h11.EndOfMessage())

    def upstream_finished(self) -> None:
        """The API server's response is complete: take the next request."""
        self.upstream = None
        if not self._closed:
            self._maybe_next_cycle()
            self._next_events()

    def switch_to_relay(self, upstream: UpstreamRequest, response: h11.InformationalResponse, pending: bytes) -> None:
        """After a 101: a recording relay both ways (kube/sessions.py), fed
        first what the client sent right after its request and the API server
        right after its 101. A session we could not record is refused."""
        self.upstream = None
        decision = upstream.decision
        info = session_info(
            upstream.request.target, response.headers, user=self.identity.username,
            cluster_name=self.forwarder.teleport_cluster or self.identity.teleport_cluster,
            kube_cluster=self.cluster.name, client_addr=self.client_addr,
            kubernetes_users=[decision.user], kubernetes_groups=decision.groups,
        )
        try:
            if self.forwarder.sessions is None:
                raise RemoteCommandError("session recording is not configured on this agent")
            relay = self.forwarder.sessions.start(info, self.transport, upstream.transport)
        except RemoteCommandError as e:
            log.warn("refused unrecordable session user={user} error={error}", user=self.identity.username, error=e)
            upstream.transport.abortConnection()
            self._audit(upstream.request, decision.info, 502, decision=decision, reason=f"session not recordable: {e}")
            self.respond_status(502, "BadGateway", f"the session cannot be recorded: {e}")
            self.transport.loseConnection()
            return
        self.send(response)
        self._relay = upstream.session = relay
        client_bytes, _ = self.http.trailing_data
        if client_bytes:
            relay.from_client(client_bytes)
        if pending:
            relay.from_server(pending)

    def _bad_request(self, error: Exception) -> None:
        log.info("malformed HTTP from kubectl client={client} error={error}", client=self.client_addr, error=error)
        if self.http.our_state in (h11.SEND_RESPONSE, h11.IDLE):
            body = status_body(400, "BadRequest", "malformed HTTP request")
            self.transport.write(h11.Connection(h11.SERVER).send(h11.Response(
                status_code=400,
                headers=[(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                         (b"connection", b"close")],
            )) + body)
        self.transport.loseConnection()

    def _internal_error(self, failure) -> None:
        log.failure("kube request failed user={user}", failure, user=self.identity.username)
        if not self._closed:
            self.transport.abortConnection()

    def _audit(self, request: h11.Request, info, code: int, *, decision: _Decision | None = None,
               reason: str | None = None) -> None:
        self.forwarder.emit(events.make_event(
            events.KUBE_REQUEST,
            self.forwarder.reactor.seconds(),
            success=reason is None,
            user=self.identity.username,
            cluster_name=self.forwarder.teleport_cluster or self.identity.teleport_cluster,
            kube_cluster=self.cluster.name,
            http_method=request.method.decode("latin-1"),
            verb=getattr(info, "verb", None),
            request_path=request.target.decode("latin-1"),
            response_code=code,
            resource_api_group=getattr(info, "api_group", None),
            resource_kind=getattr(info, "resource", None),
            resource_namespace=getattr(info, "namespace", None),
            resource_name=getattr(info, "name", None),
            kubernetes_users=[decision.user] if decision else [],
            kubernetes_groups=list(decision.groups) if decision else [],
            addr_remote=self.client_addr,
            reason=reason,
        ))


def _relayed_response(response: h11.Response) -> h11.Response:
    """The API server's response head as kubectl gets it: its own hop-by-hop
    headers are not kubectl's connection's (usually there are none, and
    the head, already validated by h11, goes as it is)."""
    if not any(n in _DROPPED_RESPONSE_HEADERS for n, _ in response.headers):
        return response
    return h11.Response(status_code=response.status_code, reason=response.reason,
                        headers=[(n, v) for n, v in response.headers if n not in _DROPPED_RESPONSE_HEADERS])


def _close(transport) -> None:
    """A TLS transport closes only once its producer is gone."""
    transport.unregisterProducer()
    transport.loseConnection()


def _names_object_in_body(request: h11.Request) -> bool:
    """A create without a name in the path: the name is in the body."""
    if request.method != b"POST" or any(n == b"connection" and b"upgrade" in v.lower() for n, v in request.headers):
        return False
    path, _, query = request.target.decode("latin-1").partition("?")
    info = classify("POST", path, parse_qs(query, keep_blank_values=True))
    return info.is_resource_request and info.verb == "create" and not info.name


def _name_from_body(request: h11.Request, body: bytes, info: RequestInfo) -> str:
    """``metadata.name`` of the object a create sends (``""`` with only
    ``generateName``). A body we cannot read the way the API server will is
    refused: guessing ``""`` would slip past deny rules on names."""
    content_type = next((v for n, v in request.headers if n == b"content-type"), b"")
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise _denied("teleport can only authorize create requests with a JSON body",
                      f"create body of type {content_type.decode('latin-1')!r}", info)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise _denied("teleport could not read the object's name: malformed JSON body",
                      "malformed create body", info) from None
    metadata = obj.get("metadata", {}) if isinstance(obj, dict) else None
    name = metadata.get("name", "") if isinstance(metadata, dict) else None
    if not isinstance(name, str):
        raise _denied("teleport could not read the object's name from the body", "malformed create body", info)
    return name


def _denied(message: str, reason: str, info) -> AccessDenied:
    denied = AccessDenied(message, reason)
    denied.info = info
    return denied


def _status_details(info: RequestInfo | None) -> dict | None:
    """Which object was refused, as the API server's Forbidden Status says it."""
    if info is None or not info.is_resource_request or not info.resource:
        return None
    return {"name": info.name, "group": info.api_group, "kind": info.resource}


class UpstreamRequest:
    """HTTP/1.1 client side: one request (or one upgrade) to the API server,
    on a connection borrowed from the cluster's pool for its duration."""

    def __init__(self, downstream: KubeConnection, request: h11.Request, decision: _Decision) -> None:
        self.downstream = downstream
        self.request = request
        self.decision = decision
        self.upgrade = any(n == b"connection" and b"upgrade" in v.lower() for n, v in request.headers)
        self.connection: PooledConnection | None = None
        self.transport = None
        self.http: h11.Connection | None = None
        #: Request events from kubectl not yet written upstream.
        self._pending: list = []
        self._has_body = False
        self._request_ended = False
        self._received = False
        self._retried = False
        self._responded = False
        self._finished = False
        self.session: SessionRelay | None = None
        self._filter = None
        #: A filtered list's response head waits for the filtered body.
        self._held_response: h11.Response | None = None
        #: An unfiltered body relayed as framed: where it ends.
        self._body: ChunkedBody | ContentLengthBody | None = None

    # -- request, from kubectl -------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        creds = self.downstream.cluster.credentials
        headers = [(b"host", f"{creds.host}:{creds.port}".encode("idna"))]
        filtering = self.decision.item_filter is not None
        for name, value in self.request.headers:
            if name in _DROPPED_REQUEST_HEADERS or name.startswith(b"impersonate-"):
                if self.upgrade and name in (b"connection", b"upgrade"):
                    headers.append((name, value))
                continue
            if filtering and name in (b"accept", b"accept-encoding"):
                continue
            headers.append((name, value))
        if filtering:
            # Only JSON (plain or gzip) can be filtered item by item.
            accept = b",".join(v for n, v in self.request.headers if n == b"accept").decode("latin-1")
            headers.append((b"accept", filterable_accept(accept).encode("latin-1")))
            encodings = b",".join(v for n, v in self.request.headers if n == b"accept-encoding").lower()
            if b"gzip" in encodings:
                headers.append((b"accept-encoding", b"gzip"))
        headers.append((b"impersonate-user", self.decision.user.encode("utf-8")))
        headers += [(b"impersonate-group", group.encode("utf-8")) for group in self.decision.groups]
        token = creds.bearer_token()
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode("ascii")))
        return headers

    async def start(self, pool: UpstreamPool, *, fresh: bool = False) -> None:
        """Send the request on a pooled connection (a new one if ``fresh``).
        Raises ``CredentialsError`` when the agent cannot authenticate and
        the connection error when the API server is unreachable."""
        headers = self._headers()
        connection = await pool.acquire(fresh=fresh)
        if self._finished:  # kubectl went away while we were connecting
            connection.give_back()
            return
        connection.lend(self)
        self.connection, self.transport, self.http = connection, connection.transport, connection.http
        self.transport.write(self.http.send(h11.Request(
            method=self.request.method, target=self.request.target, headers=headers,
        )))
        # Each side throttles the other (as twisted's portforward does).
        self.transport.registerProducer(_Throttle(self.downstream.transport), True)
        self.downstream.transport.registerProducer(_Throttle(self.transport), True)
        pending, self._pending = self._pending, []
        for event in pending:
            self.transport.write(self.http.send(event))

    def request_data(self, data: bytes) -> None:
        self._has_body = True
        self._send(h11.Data(data=data))

    def request_done(self) -> None:
        self._request_ended = True
        self._send(h11.EndOfMessage())

    def _send(self, event) -> None:
        if self.transport is None:
            self._pending.append(event)
        elif not self._finished:
            self.transport.write(self.http.send(event))

    def downstream_lost(self) -> None:
        if self._finished:  # our side of the API server connection is already closing
            return
        self._finished = True
        if self.transport is not None:
            self.transport.abortConnection()

    # -- response, from the API server -------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.from_server(data)
            return
        if self._body is not None:
            if not self._finished:
                self._relay_body(data)
            return
        self._received = True
        self.http.receive_data(data)
        self._next_events()

    def _next_events(self) -> None:
        """Relay what the API server sent. Events that go straight to kubectl
        are sent together, in one write once this read is parsed (a small
        response is then one tunnel frame, not three); anything else first
        sends what is collected, so order and h11's state stay exact."""
        downstream = self.downstream
        relayed: list = []
        while not self._finished:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as e:
                downstream.send(*relayed)
                log.warn("malformed response from the API server: {error}", error=e)
                self._fail()
                return
            if self._relay_as_is(event, relayed):
                if self._body is not None:
                    self._relay_body(self.http.trailing_data[0], relayed)
                    return
                continue
            downstream.send(*relayed)
            relayed = []
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and self.http.our_state is h11.SWITCHED_PROTOCOL:
                    self._switch(event)
                    return
            elif isinstance(event, h11.Response):  # a list or watch to filter
                self._responded = True
                if not self._start_filter(_relayed_response(event)):
                    return
            elif isinstance(event, h11.Data):
                if not self._filter_step(event.data):
                    return
            elif isinstance(event, h11.EndOfMessage):
                if self._held_response is not None:
                    self._filter_list_off_reactor()
                    return
                if self._filter is not None and not self._filter_step(None):
                    return
                downstream.send(h11.EndOfMessage())
                self._end_of_response()
                return
            else:
                return
        downstream.send(*relayed)

    def _relay_as_is(self, event, relayed: list) -> bool:
        """Collect ``event`` for kubectl if it needs no decision of ours:
        an unfiltered response's head, body or end. The exchange's end is
        sent at once, before the connection goes back to the pool."""
        if self._filter is not None or self._held_response is not None:
            return False
        if type(event) is h11.Data:
            relayed.append(event)
            return True
        if type(event) is h11.Response and (
                self.decision.item_filter is None or not 200 <= event.status_code < 300):
            self._responded = True
            self._audit(event.status_code)
            relayed.append(_relayed_response(event))
            if not self.upgrade and self.downstream.http.their_http_version == b"1.1":
                self._body = body_framing(self.request.method, event)
            return True
        if type(event) is h11.EndOfMessage:
            relayed.append(event)
            self.downstream.send(*relayed)
            relayed.clear()
            self._end_of_response()
            return True
        return False

    def _relay_body(self, data: bytes, head: Sequence = ()) -> None:
        """Relay body bytes as they are, up to the body's end. Bytes past it
        are a server out of step with its own framing: nothing of them reaches
        kubectl and the connection is dropped, as for malformed framing."""
        try:
            taken, ended = self._body.feed(data)
        except FramingError as e:
            self.downstream.send(*head)
            log.warn("malformed response body from the API server: {error}", error=e)
            self._fail()
            return
        if taken < len(data):
            self.downstream.send(*head)
            log.warn("API server sent {extra} bytes past the end of a response", extra=len(data) - taken)
            self._fail()
            return
        self.downstream.send_framed(head, data, self._body, ended)
        if ended:
            if self.http.our_state is h11.DONE:  # our request ended and the response keeps the connection alive
                self.connection.next_cycle_read_as_is()
            self._end_of_response()

    def _end_of_response(self) -> None:
        self._finish()
        self.downstream.upstream_finished()

    def _start_filter(self, response: h11.Response) -> bool:
        """Set up item filtering of a 2xx list/watch response; refuse the
        response (and say so) when its body cannot be filtered."""
        headers = {n: v.decode("latin-1") for n, v in response.headers}
        watch = self.decision.info.verb == "watch"
        self._filter = response_filter(headers.get(b"content-type", ""), headers.get(b"content-encoding"),
                                       self.decision.item_filter, watch=watch)
        if self._filter is None:
            content = f"{headers.get(b'content-type', '')!r} ({headers.get(b'content-encoding', 'identity')})"
            self._refuse(500, "InternalError",
                         f"the API server answered {content}, which teleport cannot filter by role; "
                         "your roles allow only part of this collection, so it is returned only as JSON",
                         f"unfilterable response {content}")
            return False
        # The body changes length: h11 sends it chunked.
        response = h11.Response(status_code=response.status_code, reason=response.reason, headers=[
            (n, v) for n, v in response.headers if n not in (b"content-length", b"transfer-encoding")])
        if watch:
            self._audit(response.status_code)
            self.downstream.send(response)
        else:
            self._held_response = response
        return True

    def _filter_list_off_reactor(self) -> None:
        """Parse and filter a whole list on a worker thread: a list of
        thousands of objects takes long enough to stall every other connection
        of this agent if done on the reactor thread."""
        reactor = self.downstream.forwarder.reactor
        list_filter, self._filter = self._filter, None
        self._finish()
        d = deferToThreadPool(reactor, reactor.getThreadPool(), list_filter.finish)
        d.addCallbacks(self._list_filtered, self._list_filter_failed)
        d.addErrback(lambda f: log.failure("sending a filtered list failed", f))

    def _list_filtered(self, body: bytes) -> None:
        downstream = self.downstream
        if downstream._closed:
            return
        self._audit(self._held_response.status_code)
        body_events = [h11.Data(data=body)] if body else []
        downstream.send(self._held_response, *body_events, h11.EndOfMessage())
        downstream.upstream_finished()

    def _list_filter_failed(self, failure) -> None:
        """The API server's connection is already closed; answer kubectl only."""
        failure.trap(FilterError)
        downstream = self.downstream
        if downstream._closed:
            return
        log.warn("refused an unfilterable list user={user} path={path} error={error}",
                 user=downstream.identity.username, path=self.decision.info.path, error=failure.value)
        self._audit(500, f"filter failed: {failure.value}")
        downstream.respond_status(500, "InternalError", "teleport could not filter the response by role: "
                                  "the API server's response is malformed or too large")
        downstream.upstream_finished()

    def _filter_step(self, data: bytes | None) -> bool:
        """Feed ``data`` (``None``: the body ended) to the filter and send
        what it lets through; False when the response had to be refused."""
        try:
            out = self._filter.finish() if data is None else self._filter.feed(data)
        except FilterError as e:
            log.warn("refused an unfilterable response user={user} path={path} error={error}",
                     user=self.downstream.identity.username, path=self.decision.info.path, error=e)
            self._refuse(500, "InternalError", "teleport could not filter the response by role: "
                         "the API server's response is malformed or too large", f"filter failed: {e}")
            return False
        if data is None and self._held_response is not None:
            self._audit(self._held_response.status_code)
            self.downstream.send(self._held_response)
        if out:
            self.downstream.send(h11.Data(data=out))
        return True

    def _refuse(self, code: int, status_reason: str, message: str, audit_reason: str) -> None:
        """Drop the API server's response: a Status instead, or, when a watch
        is already streaming, end kubectl's connection (fail closed)."""
        downstream = self.downstream
        self._finished = True
        downstream.transport.unregisterProducer()
        self.transport.abortConnection()
        if downstream.http.our_state is not h11.SEND_RESPONSE:
            downstream.transport.abortConnection()
            return
        self._audit(code, audit_reason)
        downstream.respond_status(code, status_reason, message)
        downstream.upstream_finished()

    def _switch(self, response: h11.InformationalResponse) -> None:
        self._finished = True
        self._audit(101)
        pending, _ = self.http.trailing_data
        self.downstream.switch_to_relay(self, response, pending)

    def _audit(self, code: int, reason: str | None = None) -> None:
        self.downstream._audit(self.request, self.decision.info, code, decision=self.decision, reason=reason)

    def _finish(self) -> None:
        """The exchange is complete: the connection goes back to the pool
        (if h11 says it can carry another request) and kubectl's stream is
        read again if the API server connection had throttled it."""
        self._finished = True
        downstream = self.downstream
        downstream.transport.unregisterProducer()
        self.transport.unregisterProducer()
        self.connection.give_back()
        if not downstream._closed:
            downstream.transport.resumeProducing()

    def _fail(self) -> None:
        """The API server broke off: a Status if kubectl has no response yet, else cut the stream."""
        downstream = self.downstream
        self._finished = True
        self.downstream.transport.unregisterProducer()
        if self.transport is not None:
            self.transport.abortConnection()
        if self._responded:
            downstream.transport.abortConnection()
            return
        self._audit(502)
        downstream.respond_status(502, "ServiceUnavailable", "the kubernetes API server closed the connection")
        downstream.upstream_finished()

    def connectionLost(self, reason=None) -> None:
        if self.session is not None:
            self.session.connection_lost()
            _close(self.downstream.transport)
            return
        if self._finished:
            return
        if self._body is not None:  # the body's end never came
            self._fail()
            return
        if self._may_retry():
            self._retry()
            return
        # A response delimited by the end of the connection ends here.
        self.http.receive_data(b"")
        self._next_events()
        if not self._finished:
            self._fail()

    def _may_retry(self) -> bool:
        """A reused connection the API server closed before answering a
        request without side effects: most likely its idle timeout raced our
        request (it never read it), so the request goes once more on a new
        connection, as Go's HTTP client does."""
        return (not self._retried and not self._received and self.connection.uses > 1
                and self._request_ended and not self._has_body and self.request.method in _RETRYABLE_METHODS)

    def _retry(self) -> None:
        self._retried = True
        self.downstream.transport.unregisterProducer()
        self.connection = self.transport = self.http = None
        self._pending = [h11.EndOfMessage()]
        log.info("API server closed a pooled connection before answering; retrying cluster={cluster}",
                 cluster=self.downstream.cluster.name)
        d = Deferred.fromCoroutine(self.start(self.downstream.forwarder.pool(self.downstream.cluster), fresh=True))
        d.addErrback(self._retry_failed)

    def _retry_failed(self, failure) -> None:
        log.warn("API server unreachable on retry cluster={cluster} error={error}",
                 cluster=self.downstream.cluster.name, error=failure.value)
        self._fail()
