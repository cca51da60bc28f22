"""The agent's HTTP/1.1 front end: one kubectl connection per `kube` tunnel stream.

Requests are parsed sans-IO by kube/http1_server.py (a strict head parser,
checked against h11), so a malformed or ambiguous one is a 400 and never
an exception on the reactor; each is made canonical, decided and forwarded
by the stream's `KubeCaller` (kube/authorize.py), one at a time. Responses are relayed event
by event, never buffered whole, because ``watch`` and ``logs -f`` never end.
An upgrade (exec, attach, port-forward) becomes a raw byte relay after the
API server's 101 (kube/sessions.py).
"""
from __future__ import annotations

from typing import Sequence

import attrs
import h11
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.kube.authorize import HeldRequest, KubeCaller
from teleport_py.kube.bodyframing import ChunkedBody, ContentLengthBody
from teleport_py.kube.canonical import CanonicalRequest
from teleport_py.kube.http1_server import DONE, END, IDLE, NEED_DATA, PAUSED, SEND_RESPONSE, ServerConnection
from teleport_py.kube.request_head import ProtocolError, started_request_line
from teleport_py.kube.interfaces import Upstream
from teleport_py.kube.sessions import SessionRelay, session_info
from teleport_py.kube.upstream import UpstreamRequest
from teleport_py.kube_status import KubeStatus
from teleport_py.remotecommand import RemoteCommandError

log = Logger()

#: What kubectl may send while its request is being authorized before the
#: connection stops being read. It is read meanwhile, not paused at once,
#: so that a kubectl that hangs up is noticed and its request never goes
#: upstream (a paused transport reads no end of connection).
MAX_READ_WHILE_AUTHORIZING = 64 * 1024
#: What kubectl may send past a request whose response is under way
#: (pipelining; or bytes before an upgrade's 101) before the connection
#: stops being read until that exchange ends.
MAX_PIPELINED = 64 * 1024


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


class KubeConnection(Protocol):
    """HTTP/1.1 server side of one kubectl connection (one tunnel stream)."""

    #: Body bytes the API server framed go to kubectl unchanged, HTTP/1.1 only.
    passes_framing = property(lambda self: self.http.their_http_version == b"1.1")
    response_started = property(lambda self: self.http.our_state is not SEND_RESPONSE)

    def __init__(self, caller: KubeCaller) -> None:
        self.caller = caller
        self.http = ServerConnection()
        self.upstream: Upstream | None = None
        self._held: HeldRequest | None = None
        self._authorizing = False
        #: Bytes read since authorizing began, and whether that paused reading.
        self._read_while_authorizing = 0
        self._paused_while_authorizing = False
        #: Reading stopped because too much waits behind the current exchange.
        self._paused_pipelined = False
        self._relay: SessionRelay | None = None
        self.closed = False
        #: kubectl sent what is not HTTP: nothing more is read.
        self._refused = False
        #: Waiting for a request: ``"idle"`` until its first byte, then
        #: ``"head"`` until the whole head is in (``teleport.connection_limits``).
        self._timer = None
        self._timer_kind: str | None = None

    # -- Protocol --------------------------------------------------------------

    def connectionMade(self) -> None:
        self._wait("idle")

    def dataReceived(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.from_client(data)
            return
        if self._refused:
            return
        if self._timer_kind == "idle":
            self._wait("head")
        self.http.receive_data(data)
        if self._authorizing:
            self._read_while_authorizing += len(data)
            if self._read_while_authorizing > MAX_READ_WHILE_AUTHORIZING and not self._paused_while_authorizing:
                self._paused_while_authorizing = True
                self.transport.pauseProducing()
            return
        self._next_events()
        self._bound_pipelined()

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        self._wait(None)
        if self.upstream is not None:
            self.upstream.downstream_lost()
        if self._relay is not None:
            self._relay.connection_lost()
            _close(self._relay.server_transport)

    # -- HTTP events from kubectl ----------------------------------------------

    def _next_events(self) -> None:
        while not self._authorizing and not self.closed and self._relay is None:
            try:
                event = self.http.next_event()
            except ProtocolError as e:
                self._bad_request(e)
                return
            if event is NEED_DATA or event is PAUSED:
                return
            if type(event) is bytes:
                if self._held is not None:
                    self._held.add(event)
                elif self.upstream is not None:
                    self.upstream.request_data(event)
            elif event is END:
                if self._held is not None:
                    held, self._held = self._held, None
                    self._begin(held.request, held)
                    return
                if self.upstream is not None:
                    self.upstream.request_done()
                self._maybe_next_cycle()
            else:  # a request head
                self._wait(None)
                request = self.caller.canonical(self, event.method, event.target, event.header(b"host") or b"",
                                                event.headers)
                if request is None:  # answered 400; its body, if any, is read and dropped
                    continue
                if request.names_object_in_body:
                    self._held = self.caller.hold(request)
                else:
                    self._begin(request)

    def _bound_pipelined(self) -> None:
        """What waits unread behind the current exchange is bounded: past
        MAX_PIPELINED, stop reading (again, if a throttle resumed it)."""
        if self.http.their_done and self.http.buffered > MAX_PIPELINED and not self.closed and self._relay is None:
            self._paused_pipelined = True
            self.transport.pauseProducing()

    def _resume_pipelined(self) -> None:
        if self._paused_pipelined:
            self._paused_pipelined = False
            if not self.closed:
                self.transport.resumeProducing()

    def _maybe_next_cycle(self) -> None:
        if self.http.our_state is DONE and self.http.their_done:
            self.http.start_next_cycle()
            self._wait("idle")
            self._resume_pipelined()
        elif self.http.must_close:
            self.transport.loseConnection()

    def _wait(self, kind: str | None) -> None:
        """Time the wait for a request: ``idle`` (``idle_timeout``: then
        close, as kubectl's own pool would), ``head`` (``read_header_timeout``
        from its first byte: then a 408), or ``None`` (a request is here)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_kind = None, kind
        if kind is None or self.closed:
            return
        limits, reactor = self.caller.stream.limits, self.caller.stream.reactor
        if kind == "idle":
            self._timer = reactor.callLater(limits.idle_timeout, self._idle)
        else:
            self._timer = reactor.callLater(limits.read_header_timeout, self._head_too_slow)

    def _idle(self) -> None:
        self._timer = self._timer_kind = None
        self.transport.loseConnection()

    def _head_too_slow(self) -> None:
        self._timer = self._timer_kind = None
        seconds = self.caller.stream.limits.read_header_timeout
        message = f"the request head did not arrive within {seconds:g} s"
        method, target = started_request_line(self.http.trailing_data)
        self.caller.cut_short(408, f"HTTP/1.1: {message}", method, target)
        self.transport.write(KubeStatus(408, message).http11())
        self.transport.loseConnection()

    def _begin(self, request: CanonicalRequest, held: HeldRequest | None = None) -> None:
        self._authorizing = True
        self._read_while_authorizing = 0
        d = Deferred.fromCoroutine(self._start(request, held))
        d.addErrback(self._internal_error)

    async def _start(self, request: CanonicalRequest, held: HeldRequest | None) -> None:
        await self.caller.forward(self, request, held)
        self._resume()

    def _resume(self) -> None:
        self._authorizing = False
        if self.closed:
            return
        if self._paused_while_authorizing:
            self._paused_while_authorizing = False
            self.transport.resumeProducing()
        self._maybe_next_cycle()
        self._next_events()

    # -- answering kubectl -----------------------------------------------------

    def send(self, *events) -> None:
        """One write for several events: each write is a tunnel frame."""
        if events and not self.closed:
            self.transport.write(b"".join([self.http.send(event) for event in events]))

    def send_framed(self, head: Sequence, body: bytes, framing: ChunkedBody | ContentLengthBody, end: bool) -> None:
        """``head`` events, then body bytes as the API server framed them, in
        one write, not framed again: our side of the connection only counts
        a Content-Length body and takes a chunked one's end as the response's."""
        if self.closed:
            return
        out = [self.http.send(event) for event in head]
        out.append(body)
        self.http.framed_body(body, end)
        self.transport.write(b"".join(out))

    def respond_status(self, status: KubeStatus) -> None:
        """A Kubernetes Status kubectl prints as the error."""
        if self.response_started:
            self.transport.abortConnection()
            return
        self.send(*status.h11_events())

    def throttle(self, upstream_transport) -> None:
        """Each side throttles the other (as twisted's portforward does)."""
        upstream_transport.registerProducer(_Throttle(self.transport), True)
        self.transport.registerProducer(_Throttle(upstream_transport), True)

    def unthrottle(self) -> None:
        self.transport.unregisterProducer()
        if not self.closed:
            self.transport.resumeProducing()

    def abort(self) -> None:
        self.transport.abortConnection()

    def session_ended(self) -> None:
        _close(self.transport)

    def upstream_finished(self) -> None:
        """The API server's response is complete: take the next request."""
        self.upstream = None
        if not self.closed:
            self._maybe_next_cycle()
            self._next_events()

    def switch_to_relay(self, upstream: UpstreamRequest, response: h11.InformationalResponse, pending: bytes) -> None:
        """After a 101: a recording relay both ways (kube/sessions.py), fed
        first what the client sent right after its request and the API server
        right after its 101. A session we could not record is refused."""
        self.upstream = None
        context = upstream.context
        decision, stream = context.decision, context.stream
        info = session_info(
            context.request.target, response.headers, user=stream.identity.username,
            cluster_name=stream.teleport_cluster or stream.identity.teleport_cluster,
            kube_cluster=stream.cluster.name, client_addr=stream.client_addr,
            kubernetes_users=[decision.user], kubernetes_groups=decision.groups,
        )
        sessions = self.caller.services.sessions
        try:
            if sessions is None:
                raise RemoteCommandError("session recording is not configured on this agent")
            relay = sessions.start(info, self.transport, upstream.transport)
        except RemoteCommandError as e:
            log.warn("refused unrecordable session user={user} error={error}", user=stream.identity.username, error=e)
            upstream.transport.abortConnection()
            context.audit(502, f"session not recordable: {e}")
            self.respond_status(KubeStatus(502, f"the session cannot be recorded: {e}", "BadGateway"))
            self.transport.loseConnection()
            return
        self.send(response)
        self._relay = upstream.session = relay
        client_bytes = self.http.trailing_data
        self._resume_pipelined()
        if client_bytes:
            relay.from_client(client_bytes)
        if pending:
            relay.from_server(pending)

    def _bad_request(self, error: Exception) -> None:
        """What we cannot parse is a 400 (audited as refused) and the end of
        the connection; if a response is already under way, only the end."""
        self._refused = True
        if self.http.our_state in (SEND_RESPONSE, IDLE):
            self.caller.refused_unparsed(400, f"HTTP/1.1: {error}")
            self.transport.write(KubeStatus(400, "malformed HTTP request").http11())
        self.transport.loseConnection()

    def _internal_error(self, failure) -> None:
        log.failure("kube request failed user={user}", failure, user=self.caller.identity.username)
        if not self.closed:
            self.transport.abortConnection()


def _close(transport) -> None:
    """A TLS transport closes only once its producer is gone."""
    transport.unregisterProducer()
    transport.loseConnection()
