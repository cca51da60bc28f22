"""The recording relay: what the agent does with a connection after a 101.

Bytes go both ways unchanged; each direction is first shown to a passive
`SessionObserver`, so a byte is forwarded only once it has been accounted
for. Bytes the observer cannot parse end THAT session (both connections are
aborted) and nothing else. Back-pressure stays hop by hop: the two transports
already throttle each other (the forwarder registered them as each other's
producers), and while the recording has more than its backlog waiting for
the disk, neither side is read.

Every session is audited (``session.start``, ``resize``, ``exec`` or
``port``, ``session.end``) and recorded (docs/recordings.md).
"""
from __future__ import annotations

import uuid
from typing import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import attrs
from twisted.logger import Logger

from teleport_py import events
from teleport_py.recording import format as rec
from teleport_py.recording.spool import RecordingSpool
from teleport_py.remotecommand import (
    Exit, PortForwardClosed, PortForwardData, PortForwardError, PortForwardOpened,
    RemoteCommandError, Resize, SessionObserver, Stderr, Stdin, Stdout,
)

log = Logger()

@attrs.frozen
class SessionInfo:
    """Who runs what where; the session.start line and every audit event carry it."""

    session_id: str
    user: str
    cluster_name: str
    kube_cluster: str
    kind: str  # exec, attach or portforward
    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    tty: bool
    protocol: str
    transport: str  # spdy or websocket
    client_addr: str
    kubernetes_users: tuple[str, ...] = ()
    kubernetes_groups: tuple[str, ...] = ()

    def audit_fields(self) -> dict:
        return {
            "sid": self.session_id, "user": self.user, "cluster_name": self.cluster_name,
            "kube_cluster": self.kube_cluster, "kubernetes_pod_namespace": self.namespace,
            "kubernetes_pod_name": self.pod, "kubernetes_container_name": self.container or None,
            "kubernetes_users": list(self.kubernetes_users), "kubernetes_groups": list(self.kubernetes_groups),
            "addr_remote": self.client_addr, "protocol": "kube", "session_kind": self.kind,
        }


def negotiated(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, str]:
    """(protocol, transport) from the API server's 101 headers."""
    found = {name.lower(): value.decode("latin-1") for name, value in headers}
    if found.get(b"upgrade", "").lower() == "websocket":
        return found.get(b"sec-websocket-protocol", ""), "websocket"
    return found.get(b"x-stream-protocol-version", ""), "spdy"


def session_info(target: bytes, response_headers, *, user: str, cluster_name: str, kube_cluster: str,
                 client_addr: str, kubernetes_users=(), kubernetes_groups=()) -> SessionInfo:
    """The session a request target (``/api/v1/namespaces/NS/pods/POD/exec?...``) starts."""
    url = urlsplit(target.decode("latin-1"))
    parts = url.path.strip("/").split("/")
    query = parse_qs(url.query)
    namespace = pod = kind = ""
    if len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
        namespace, pod, kind = parts[3], parts[5], parts[6]
    protocol, transport = negotiated(response_headers)
    return SessionInfo(
        session_id=str(uuid.uuid4()), user=user, cluster_name=cluster_name, kube_cluster=kube_cluster,
        kind=kind, namespace=namespace, pod=pod, container=query.get("container", [""])[0],
        command=tuple(query.get("command", [])),
        tty=query.get("tty", ["false"])[0].lower() in ("true", "1"),
        protocol=protocol, transport=transport, client_addr=client_addr,
        kubernetes_users=tuple(kubernetes_users), kubernetes_groups=tuple(kubernetes_groups),
    )


class SessionRecorder:
    """What the forwarder needs to start sessions: a clock, the audit spool,
    the recordings spool, and whether non-interactive output is recorded."""

    def __init__(self, reactor, emit: Callable[[dict], None], spool: RecordingSpool, *,
                 record_output: bool = True) -> None:
        self.reactor = reactor
        self.emit = emit
        self.spool = spool
        self.record_output = record_output

    def start(self, info: SessionInfo, client_transport, server_transport) -> "SessionRelay":
        """A relay for the session; raises RemoteCommandError for a protocol
        we could not record (the caller refuses the session)."""
        observer = SessionObserver(info.protocol, info.transport)
        return SessionRelay(self, info, observer, client_transport, server_transport)


@attrs.define
class _Forwarded:
    port: int
    bytes_in: int = 0
    bytes_out: int = 0


class SessionRelay:
    """One upgraded session between kubectl (client) and the API server."""

    def __init__(self, recorder: SessionRecorder, info: SessionInfo, observer: SessionObserver,
                 client_transport, server_transport) -> None:
        self.info = info
        self._recorder = recorder
        self._reactor = recorder.reactor
        self._observer = observer
        self._client = self.client_transport = client_transport
        self._server = self.server_transport = server_transport
        self._started = self._reactor.seconds()
        self._bytes_in = self._bytes_out = 0
        self._exit: Exit | None = None
        self._ports: dict[str, _Forwarded] = {}
        self._error: str | None = None
        self._ended = False
        self._throttled = False
        self._record_output = info.tty or recorder.record_output
        self._writer = recorder.spool.open(info.session_id)
        self._writer.on_backlog = self._backlog
        start_fields = {k: v for k, v in attrs.asdict(info).items() if k != "kubernetes_groups"}
        self._record(rec.START, version=rec.VERSION, time=events.rfc3339(self._started), participants=[info.user], **start_fields)
        self._audit(events.SESSION_START)
        log.info("session started sid={sid} user={user} kind={kind} pod={pod}",
                 sid=info.session_id, user=info.user, kind=info.kind, pod=info.pod)

    # -- bytes from either side ------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self._relay(self._observer.feed_client, data, self._server, self._client)

    def from_server(self, data: bytes) -> None:
        self._relay(self._observer.feed_server, data, self._client, self._server)

    def _relay(self, observe, data: bytes, destination, source) -> None:
        if self._ended:
            return
        try:
            observed = observe(data)
        except RemoteCommandError as e:
            self._fail(str(e))
            return
        for event in observed:
            self._observed(event)
        destination.write(data)
        if self._throttled:
            source.pauseProducing()  # a peer's resume must not outrun the disk

    def _backlog(self, throttled: bool) -> None:
        self._throttled = throttled
        for transport in (self._client, self._server):
            if throttled:
                transport.pauseProducing()
            elif not self._ended:
                transport.resumeProducing()

    def _fail(self, reason: str) -> None:
        """Bytes we cannot account for: end this session, fail closed."""
        log.warn("closing session sid={sid}: unrecordable bytes ({reason})", sid=self.info.session_id, reason=reason)
        self._error = reason
        self._end()
        self._client.abortConnection()
        self._server.abortConnection()

    def connection_lost(self) -> None:
        """Either side closed; the forwarder closes the other."""
        if self._ended:
            return
        try:
            for event in self._observer.finish():
                self._observed(event)
        except RemoteCommandError as e:
            self._error = str(e)
        self._end()

    # -- what happened ---------------------------------------------------------

    def _observed(self, event) -> None:
        match event:
            case Stdin(data):
                self._bytes_in += len(data)
            case Stdout(data) | Stderr(data):
                self._bytes_out += len(data)
                if self._record_output:
                    self._writer.output("stdout" if type(event) is Stdout else "stderr", self._ms(), data)
            case Resize(width, height):
                self._record(rec.RESIZE, width=width, height=height)
                self._audit(events.RESIZE, terminal_size=f"{width}:{height}")
            case Exit(code, message):
                self._exit = event
                self._record(rec.EXIT, code=code, message=message)
            case PortForwardOpened(request_id, port):
                self._ports[request_id] = _Forwarded(port)
                self._record(rec.PORT_OPEN, request_id=request_id, port=port)
                self._audit(events.PORT_FORWARD, port=port, request_id=request_id)
            case PortForwardData(request_id, port, direction, data):
                forwarded = self._ports.setdefault(request_id, _Forwarded(port))
                if direction == "in":
                    forwarded.bytes_in += len(data)
                    self._bytes_in += len(data)
                else:
                    forwarded.bytes_out += len(data)
                    self._bytes_out += len(data)
            case PortForwardError(request_id, port, message):
                self._record(rec.PORT_ERROR, request_id=request_id, port=port, message=message)
            case PortForwardClosed(request_id, port):
                forwarded = self._ports.pop(request_id, _Forwarded(port))
                self._record(rec.PORT_CLOSE, request_id=request_id, port=port,
                             bytes_in=forwarded.bytes_in, bytes_out=forwarded.bytes_out)

    def _end(self) -> None:
        self._ended = True
        now = self._reactor.seconds()
        duration_ms = int((now - self._started) * 1000)
        for request_id, forwarded in sorted(self._ports.items()):
            self._record(rec.PORT_CLOSE, request_id=request_id, port=forwarded.port,
                         bytes_in=forwarded.bytes_in, bytes_out=forwarded.bytes_out)
        self._record(rec.END, bytes_in=self._bytes_in, bytes_out=self._bytes_out,
                     duration_ms=duration_ms, error=self._error)
        if self.info.kind in ("exec", "attach"):
            code = self._exit.code if self._exit else None
            self._audit(events.EXEC, success=self._error is None and code == 0,
                        command=" ".join(self.info.command), exitCode=None if code is None else str(code),
                        exitError=(self._exit.message or None) if self._exit else self._error)
        self._audit(events.SESSION_END, participants=[self.info.user], interactive=self.info.tty,
                    session_start=events.rfc3339(self._started), session_stop=events.rfc3339(now),
                    duration_ms=duration_ms, bytes_in=self._bytes_in, bytes_out=self._bytes_out,
                    error=self._error)
        self._writer.close().addErrback(
            lambda f: log.failure("recording of sid={sid} not closed", f, sid=self.info.session_id))
        log.info("session ended sid={sid} bytes_in={bytes_in} bytes_out={bytes_out}",
                 sid=self.info.session_id, bytes_in=self._bytes_in, bytes_out=self._bytes_out)

    def _ms(self) -> int:
        return int((self._reactor.seconds() - self._started) * 1000)

    def _record(self, event_type: str, **fields) -> None:
        self._writer.record({"type": event_type, "ms": self._ms(), **{k: v for k, v in fields.items() if v is not None}})

    def _audit(self, event_type: str, success: bool = True, **fields) -> None:
        self._recorder.emit(events.make_event(
            event_type, self._reactor.seconds(), success=success, **self.info.audit_fields(), **fields))
