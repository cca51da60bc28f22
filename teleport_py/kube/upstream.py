"""Requests to the API server on keep-alive HTTP/1.1 connections shared by all.

A TLS handshake with the API server costs more than the small request it
carries, and the caller's identity travels in per-request ``Impersonate-*``
headers, so one connection can serve any user's requests one after another.
A connection is lent to one exchange at a time and comes back only when its
HTTP/1.1 client state (kube/http1_client.py) says both the request and the
response ended cleanly; anything else (a
broken-off response, a watch kubectl left, an upgrade to exec or
port-forward) closes it or keeps it out of the pool for good.

An `UpstreamRequest` is one exchange on a borrowed connection, for one
authorized request whose `RequestContext` (kube/context.py) says all it
needs: it sends the canonical request's rebuilt target (never the bytes
kubectl sent) and relays the response to kubectl's side through the
`Downstream` interface (kube/interfaces.py), which an HTTP/1.1 connection
(kube/http1.py) and an HTTP/2 stream (kube/http2.py) both implement,
filtering list and watch bodies by role when the decision says so. An unfiltered body goes to an HTTP/1.1 client
as the API server framed it (kube/bodyframing.py); anything else is
decoded (kube/http1_client.py) and re-framed by the client's protocol.
"""
from __future__ import annotations

from typing import Callable, Protocol as Interface, Sequence

import h11
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody, FramingError, body_framing
from teleport_py.kube.context import RequestContext
from teleport_py.kube.http1_client import ClientConnection
from teleport_py.kube.interfaces import Downstream
from teleport_py.kube.memory_budget import LIST_BYTE_COST, OverBudget, TooLarge
from teleport_py.kube.request_head import ProtocolError
from teleport_py.kube.sessions import SessionRelay
from teleport_py.kube_status import KubeStatus
from teleport_py.quiet import connect_protocol
from teleport_py.rbac.filters import FilterError, filterable_accept, response_filter
from teleport_py.tcp import no_delay

#: Seconds a list refused for the memory budget is told to wait (``Retry-After``).
RETRY_AFTER_BUDGET = 1

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


class Exchange(Interface):
    """What a connection reports to the request it is lent to."""

    def dataReceived(self, data: bytes) -> None: ...

    def connectionLost(self, reason) -> None: ...


class APIServerConnection(Protocol):
    """What both kinds of API server connection share: ``when_lost`` for a
    pool closing them on shutdown. ``connectionLost`` must call
    ``_notify_lost`` once it has done its own work."""

    lost = False

    def when_lost(self) -> Deferred:
        """Fires once the connection is closed."""
        waiter = Deferred()
        if self.lost:
            waiter.callback(None)
        else:
            self.__dict__.setdefault("_lost_waiters", []).append(waiter)
        return waiter

    def _notify_lost(self) -> None:
        self.lost = True
        waiters, self._lost_waiters = self.__dict__.get("_lost_waiters", []), []
        for waiter in waiters:
            waiter.callback(None)


class PooledConnection(APIServerConnection):
    """One TLS connection to the API server and its HTTP/1.1 client state."""

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.http = ClientConnection()
        self.exchange: Exchange | None = None
        #: How many exchanges this connection has been lent to.
        self.uses = 0
        self._expiry = None

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def lend(self, exchange: Exchange) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.exchange = exchange
        self.uses += 1

    def give_back(self) -> None:
        """The exchange is over: back to the pool if the connection can carry
        another request, otherwise closed. The exchange has unregistered the
        producers it set up; a transport it paused is resumed here so that an
        idle connection still notices the server closing it."""
        self.exchange = None
        if self.lost:
            return
        self.transport.resumeProducing()
        states = (self.http.our_state, self.http.their_state)
        if states == (h11.DONE, h11.DONE) and not self.http.trailing_data[0]:
            self.http.start_next_cycle()
            self.pool.take_back(self)
        elif states == (h11.IDLE, h11.IDLE):  # never used (the caller went away first), or read as is
            self.pool.take_back(self)
        else:
            self.transport.loseConnection()

    def next_cycle_read_as_is(self) -> None:
        """The exchange's request ended and its response was read to its
        exact end without the client state (relayed as framed,
        kube/bodyframing.py): a new one carries the next request."""
        self.http = ClientConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.exchange is None:
            # An idle HTTP/1.1 connection has nothing to say before a request.
            log.warn("unsolicited bytes from the API server on an idle connection")
            self.transport.abortConnection()
            return
        self.exchange.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        if self.pool is not None:
            self.pool.forget(self)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.connectionLost(reason)
        self._notify_lost()


class UpstreamPool:
    """Idle connections to one API server, most recently used first.

    ``idle_timeout`` is well below the API server's own idle timeout (90 s in
    Go's net/http defaults) so that we, not the server, close idle
    connections; the rare race where the server closes one just as a request
    goes out is covered by the exchange retrying idempotent requests once on
    a new connection.
    """

    def __init__(self, reactor, endpoint: Callable[[], IStreamClientEndpoint], *,
                 max_idle: int = 32, idle_timeout: float = 30.0) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle_connections: list[PooledConnection] = []
        self._closed = False

    async def acquire(self, *, fresh: bool = False) -> PooledConnection:
        """An idle connection (unless ``fresh``), or a new one."""
        if not fresh and self._idle_connections:
            return self._idle_connections.pop()
        connection = PooledConnection(self)
        await connect_protocol(self._endpoint(), connection)
        return connection

    @property
    def idle(self) -> int:
        return len(self._idle_connections)

    def close(self) -> Deferred:
        """Close the idle connections; fires when they are gone. Connections
        lent out close when their exchange ends."""
        self._closed = True
        connections, self._idle_connections = self._idle_connections, []
        waits = [connection.when_lost() for connection in connections]
        for connection in connections:
            connection.transport.loseConnection()
        return gatherResults(waits)

    def take_back(self, connection: PooledConnection) -> None:
        if self._closed or len(self._idle_connections) >= self._max_idle:
            connection.transport.loseConnection()
            return
        connection._expiry = self._reactor.callLater(self._idle_timeout, connection.transport.loseConnection)
        self._idle_connections.append(connection)

    def forget(self, connection: PooledConnection) -> None:
        if connection in self._idle_connections:
            self._idle_connections.remove(connection)


def _relayed_response(response: h11.Response) -> h11.Response:
    """The API server's response head as kubectl gets it: its own hop-by-hop
    headers are not kubectl's connection's (usually there are none, and
    the head, already validated, goes as it is)."""
    if not any(n in _DROPPED_RESPONSE_HEADERS for n, _ in response.headers):
        return response
    return h11.Response(status_code=response.status_code, reason=response.reason,
                        headers=[(n, v) for n, v in response.headers if n not in _DROPPED_RESPONSE_HEADERS])


class UpstreamRequest:
    """HTTP/1.1 client side: one request (or one upgrade) to the API server,
    on a connection borrowed from the cluster's pool for its duration."""

    def __init__(self, downstream: Downstream, context: RequestContext) -> None:
        self.downstream = downstream
        self.context = context
        self.request = context.request
        self.decision = context.decision
        self.upgrade = context.request.upgrade
        self.connection: PooledConnection | None = None
        self._pool: UpstreamPool | None = None
        self.transport = None
        self.http: ClientConnection | None = None
        #: Request body bytes from kubectl not yet written upstream (None: its end).
        self._pending: list[bytes | None] = []
        self._has_body = False
        self._request_ended = False
        self._received = False
        self._retried = False
        self._responded = False
        self._finished = False
        self.session: SessionRelay | None = None
        self._filter = None
        #: A filtered list's share of the agent's memory budget.
        self._claim = None
        #: A filtered list's response head waits for the filtered body.
        self._held_response: h11.Response | None = None
        #: An unfiltered body relayed as framed: where it ends.
        self._body: ChunkedBody | ContentLengthBody | None = None

    # -- request, from kubectl -------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        creds = self.context.cluster.credentials
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
        self._pool = pool
        connection = await pool.acquire(fresh=fresh)
        if self._finished:  # kubectl went away while we were connecting
            connection.give_back()
            return
        connection.lend(self)
        self.connection, self.transport, self.http = connection, connection.transport, connection.http
        head = self.http.send_request(self.request.method, self.request.target, headers)
        pending, self._pending = self._pending, []
        out = [head] + [self.http.send_end() if data is None else self.http.send_data(data) for data in pending]
        self.transport.write(b"".join(out))
        self.downstream.throttle(self.transport)

    def request_data(self, data: bytes) -> None:
        self._has_body = True
        self._send(data)

    def request_done(self) -> None:
        self._request_ended = True
        self._send(None)

    def _send(self, data: bytes | None) -> None:
        if self.transport is None:
            self._pending.append(data)
        elif not self._finished:
            self.transport.write(self.http.send_end() if data is None else self.http.send_data(data))

    def downstream_lost(self) -> None:
        if self._finished:  # our side of the API server connection is already closing
            return
        self._finished = True
        self._release_buffers()
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
        sends what is collected, so order and the client state stay exact."""
        downstream = self.downstream
        relayed: list = []
        while not self._finished:
            try:
                event = self.http.next_event()
            except ProtocolError as e:
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
            if not self.upgrade and self.downstream.passes_framing:
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
        reserve = None
        if not watch:
            claim = self._claim = self.context.stream.buffers.claim()
            reserve = lambda size: claim.take(size * LIST_BYTE_COST)  # noqa: E731
        self._filter = response_filter(headers.get(b"content-type", ""), headers.get(b"content-encoding"),
                                       self.decision.item_filter, watch=watch, reserve=reserve)
        if self._filter is None:
            content = f"{headers.get(b'content-type', '')!r} ({headers.get(b'content-encoding', 'identity')})"
            self._refuse(500, f"the API server answered {content}, which teleport cannot filter by role; "
                         "your roles allow only part of this collection, so it is returned only as JSON",
                         f"unfilterable response {content}")
            return False
        # The body changes length: the front end frames it anew (chunked for HTTP/1.1).
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
        reactor = self.context.reactor
        list_filter, self._filter = self._filter, None
        self._finish()
        d = deferToThreadPool(reactor, reactor.getThreadPool(), list_filter.finish)
        d.addCallbacks(self._list_filtered, self._list_filter_failed)
        d.addErrback(lambda f: log.failure("sending a filtered list failed", f))
        d.addBoth(lambda _: self._release_buffers())

    def _list_filtered(self, body: bytes) -> None:
        downstream = self.downstream
        if downstream.closed:
            return
        self._audit(self._held_response.status_code)
        body_events = [h11.Data(data=body)] if body else []
        downstream.send(self._held_response, *body_events, h11.EndOfMessage())
        downstream.upstream_finished()

    def _list_filter_failed(self, failure) -> None:
        """The API server's connection is already closed; answer kubectl only."""
        failure.trap(FilterError)
        downstream = self.downstream
        if downstream.closed:
            return
        log.warn("refused an unfilterable list user={user} path={path} error={error}",
                 user=self.context.identity.username, path=self.decision.info.path, error=failure.value)
        self._audit(500, f"filter failed: {failure.value}")
        downstream.respond_status(KubeStatus(500, "teleport could not filter the response by role: "
                                             "the API server's response is malformed or too large"))
        downstream.upstream_finished()

    def _filter_step(self, data: bytes | None) -> bool:
        """Feed ``data`` (``None``: the body ended) to the filter and send
        what it lets through; False when the response had to be refused."""
        try:
            out = self._filter.finish() if data is None else self._filter.feed(data)
        except FilterError as e:
            log.warn("refused an unfilterable response user={user} path={path} error={error}",
                     user=self.context.identity.username, path=self.decision.info.path, error=e)
            self._refuse(500, "teleport could not filter the response by role: "
                         "the API server's response is malformed or too large", f"filter failed: {e}")
            return False
        except OverBudget as e:
            log.warn("list refused, buffer memory spent user={user} path={path} budget={budget}",
                     user=self.context.identity.username, path=self.decision.info.path, budget=str(e))
            self._refuse(429, "the teleport agent is filtering too many large lists at once; retry in a few "
                         "seconds, or list fewer items at a time (kubectl --chunk-size)", f"memory budget: {e}",
                         details={"retryAfterSeconds": RETRY_AFTER_BUDGET})
            return False
        except TooLarge as e:
            self._refuse(500, "this list is too large for the teleport agent to filter by role: it "
                         f"{e}; list fewer items at a time (kubectl --chunk-size)", f"memory budget: list {e}")
            return False
        if data is None and self._held_response is not None:
            self._audit(self._held_response.status_code)
            self.downstream.send(self._held_response)
        if out:
            self.downstream.send(h11.Data(data=out))
        return True

    def _refuse(self, code: int, message: str, audit_reason: str, details: dict | None = None) -> None:
        """Drop the API server's response: a Status instead, or, when a watch
        is already streaming, end kubectl's connection (fail closed)."""
        downstream = self.downstream
        self._finished = True
        self._release_buffers()
        downstream.unthrottle()
        self.transport.abortConnection()
        if downstream.response_started:
            downstream.abort()
            return
        self._audit(code, audit_reason)
        downstream.respond_status(KubeStatus(code, message, details=details))
        downstream.upstream_finished()

    def _switch(self, response: h11.InformationalResponse) -> None:
        self._finished = True
        self._audit(101)
        pending, _ = self.http.trailing_data
        self.downstream.switch_to_relay(self, response, pending)

    def _audit(self, code: int, reason: str | None = None) -> None:
        self.context.audit(code, reason)

    def _finish(self) -> None:
        """The exchange is complete: the connection goes back to the pool
        (if its state says it can carry another request) and kubectl's stream is
        read again if the API server connection had throttled it."""
        self._finished = True
        self.downstream.unthrottle()
        self.transport.unregisterProducer()
        self.connection.give_back()

    def _release_buffers(self) -> None:
        """A filtered list's buffers are gone (sent, refused or abandoned): give back its claim."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _fail(self) -> None:
        """The API server broke off: a Status if kubectl has no response yet, else cut the stream."""
        downstream = self.downstream
        self._finished = True
        self._release_buffers()
        downstream.unthrottle()
        if self.transport is not None:
            self.transport.abortConnection()
        if self._responded:
            downstream.abort()
            return
        self._audit(502)
        downstream.respond_status(KubeStatus(502, "the kubernetes API server closed the connection"))
        downstream.upstream_finished()

    def connectionLost(self, reason=None) -> None:
        if self.session is not None:
            self.session.connection_lost()
            self.downstream.session_ended()
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
        self.downstream.unthrottle()
        self.connection = self.transport = self.http = None
        self._pending = [None]
        log.info("API server closed a pooled connection before answering; retrying cluster={cluster}",
                 cluster=self.context.cluster.name)
        d = Deferred.fromCoroutine(self.start(self._pool, fresh=True))
        d.addErrback(self._retry_failed)

    def _retry_failed(self, failure) -> None:
        log.warn("API server unreachable on retry cluster={cluster} error={error}",
                 cluster=self.context.cluster.name, error=failure.value)
        self._fail()
