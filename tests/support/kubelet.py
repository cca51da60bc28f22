"""
A kubelet stand-in for end-to-end tests: the three streaming endpoints a real
kube-apiserver relays kubectl's exec, attach, cp and port-forward to.

Commands run as real local processes (in a pty with ``tty=1``) with the
"pod filesystem" mapped to a directory (every command runs with it as cwd);
port-forward dials real local TCP ports. It speaks SPDY/3.1 (remotecommand
v1-v4, portforward.k8s.io) and, unless ``websocket=False``, WebSocket
``v5.channel.k8s.io`` and ``SPDY/3.1+portforward.k8s.io`` (SPDY tunnelled in
binary messages). See docs/kubelet-standin.md and /work/shared/protocols.md.
"""

import base64
import fcntl
import hashlib
import json
import os
import shutil
import struct
import termios
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.logger import Logger
from zope.interface import implementer

from teleport_py.spdy import (
    RST_PROTOCOL_ERROR,
    Data,
    FrameEncoder,
    FrameParser,
    GoAway,
    Ping,
    RstStream,
    SpdyError,
    SynReply,
    SynStream,
)
from teleport_py.websocket import (
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameParser as WsFrameParser,
    MessageAssembler,
    WebSocketError,
    encode_close,
    encode_frame,
)
from tests.support.kubeenv import CertificateAuthority

log = Logger()

_ENV = shutil.which("env")

#: The containers of a pod made for ``kubectl attach``: kubectl attaches with
#: a terminal only to a container whose spec says ``tty``.
ATTACHABLE_CONTAINERS = ({"name": "app", "image": "stand-in", "stdin": True},
                         {"name": "term", "image": "stand-in", "stdin": True, "tty": True})

EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
WS_EXEC_PROTOCOL = "v5.channel.k8s.io"
WS_PORT_FORWARD_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: An upgrade request is a few KiB of headers; more is not kubectl.
MAX_REQUEST_HEAD = 64 * 1024
#: kubelet's streamCreationTimeout: the client must open its streams by then.
STREAM_CREATION_TIMEOUT = 30.0
MAX_RESIZE_PENDING = 4096

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
_STREAM_TYPES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}
_WS_CLOSE_CHANNEL = 0xFF


class SessionError(Exception):
    """The one error a session raises on bytes it cannot accept; it ends that session only."""


@attrs.frozen
class Negotiation:
    """What one upgrade request asked for and what the stand-in answered: the wire record tests assert on."""

    kind: str  # exec, attach, portforward
    method: str
    upgrade: str  # the Upgrade header, lowercased
    offered: tuple[str, ...]
    status: int
    protocol: str | None
    user_agent: str


@attrs.frozen
class _Request:
    kind: str
    namespace: str
    pod: str
    query: dict
    headers: dict  # lowercased name -> list of values

    def flag(self, name):
        return self.query.get(name, [""])[0] in ("1", "true")

    def header(self, name):
        values = self.headers.get(name, [])
        return values[0] if values else ""

    def offers(self, name):
        """Comma-separated or repeated header values, in the client's order of preference."""
        return tuple(v.strip() for value in self.headers.get(name, []) for v in value.split(",") if v.strip())


class KubeletStandin:
    """
    Listens with TLS on 127.0.0.1 (self-signed; the apiserver does not verify
    kubelets). ``root`` is the pod's filesystem (cwd of every command);
    ``port_map`` maps pod ports to local ports (default: the same port);
    ``attach_command`` is each container's main process, started the first
    time ``kubectl attach`` needs it and shared by every attach after that.
    """

    def __init__(self, reactor, root, *, websocket=True, port_map=None, attach_command=("sh",)):
        self.reactor = reactor
        self.root = os.fspath(root)
        self.websocket = websocket
        self.port_map = dict(port_map or {})
        self.attach_command = tuple(attach_command)
        self.negotiated: list[Negotiation] = []
        self.port = None
        self._listening = None
        self._connections = set()
        self.containers: dict[tuple[str, str, str], _MainProcess] = {}  # (namespace, pod, container)

    def start(self):
        """Fires with the listening port."""
        credential = CertificateAuthority("kubelet-standin-ca").issue(
            "127.0.0.1", ip_addresses=("127.0.0.1",), server=True
        )
        certificate = PrivateCertificate.loadPEM(credential.cert_pem + credential.key_pem)
        # Go clients offer ALPN h2; without a protocol list of our own the handshake fails.
        options = CertificateOptions(privateKey=certificate.privateKey.original, certificate=certificate.original,
                                     acceptableProtocols=[b"http/1.1"])
        endpoint = SSL4ServerEndpoint(self.reactor, 0, options, interface="127.0.0.1")
        factory = protocol.Factory.forProtocol(lambda: _KubeletConnection(self))

        def listening(port):
            self._listening = port
            self.port = port.getHost().port
            log.info("kubelet stand-in listening port={port} root={root}", port=self.port, root=self.root)
            return self.port

        return endpoint.listen(factory).addCallback(listening)

    def stop(self):
        """Close every connection and kill every main process; fires when all are gone."""
        for connection in list(self._connections):
            connection.transport.abortConnection()
        ended = [main.ended for main in self.containers.values()]
        for main in list(self.containers.values()):
            main.kill()
        return defer.gatherResults([self._listening.stopListening(), *ended])

    def main_process(self, request, tty):
        """The container's main process, started now if it is not running."""
        key = (request.namespace, request.pod, request.query.get("container", [""])[0])
        if key not in self.containers:
            main = _MainProcess(self, key, tty)
            self.spawn(list(self.attach_command), main, tty)
            self.containers[key] = main
        return self.containers[key]

    def spawn(self, argv, process_protocol, tty):
        """A real process in the pod directory, without a pty unless asked for.

        Without a pty the process starts as ``env -C <root> -- <command>``
        (env changes directory, then becomes the command): Twisted uses
        posix_spawn only for a child that needs no cwd of its own, and forking
        this whole Python process instead cost more CPU than anything else
        in an exec (docs/benchmarks.md)."""
        executable = shutil.which(argv[0]) if argv else None
        if executable is None:
            raise FileNotFoundError(f"executable file not found: {argv[:1]}")
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": self.root}
        if tty:
            env["TERM"] = "xterm"
            return self.reactor.spawnProcess(process_protocol, executable, argv, env=env, path=self.root, usePTY=True)
        return self.reactor.spawnProcess(process_protocol, _ENV, [_ENV, "-C", self.root, "--", executable, *argv[1:]],
                                         env=env)


class _KubeletConnection(protocol.Protocol):
    """One HTTPS connection: an upgrade request head, then one session."""

    def __init__(self, standin):
        self._standin = standin
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._request = None
        self._session = None
        self._paused_by = set()

    def connectionMade(self):
        self._standin._connections.add(self)
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason):
        self._standin._connections.discard(self)
        if self._session is not None:
            self._session.connection_lost()

    # The transport's producer interface: pause whatever feeds us output.
    def pauseProducing(self):
        if self._session is not None:
            self._session.pause_output()

    def resumeProducing(self):
        if self._session is not None:
            self._session.resume_output()

    def stopProducing(self):
        pass

    def hold_input(self, reason):
        """A consumer downstream (process stdin, pod socket) is full: stop reading the client."""
        if not self._paused_by:
            self.transport.pauseProducing()
        self._paused_by.add(reason)

    def release_input(self, reason):
        self._paused_by.discard(reason)
        if not self._paused_by and self.transport.connected:
            self.transport.resumeProducing()

    def end_session(self):
        """The session said its last word: close once pending writes are flushed."""
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self._session is not None:
            try:
                self._session.feed(data)
            except SessionError as e:
                log.info("kubelet stand-in session closed on bad input error={error}", error=str(e))
                self.transport.abortConnection()
            return
        self._http.receive_data(data)
        try:
            while True:
                event = self._http.next_event()
                if isinstance(event, h11.Request):
                    self._request = event
                elif isinstance(event, h11.EndOfMessage):
                    # The whole request is in; what follows it belongs to the upgraded protocol.
                    return self._route(self._http.trailing_data[0])
                elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError:
            self._respond(400, "bad request")

    def _respond(self, code, message, headers=()):
        reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(code, "Error")
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "code": code}).encode()
        head = [f"HTTP/1.1 {code} {reason}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close", *headers]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.transport.loseConnection()

    def _switch(self, headers):
        self.transport.write(("\r\n".join(["HTTP/1.1 101 Switching Protocols", *headers]) + "\r\n\r\n").encode())

    def _route(self, leftover):
        request = _parse_request(self._request)
        upgrade = request.header("upgrade").lower() if request else ""
        offered_header = "sec-websocket-protocol" if upgrade == "websocket" else "x-stream-protocol-version"
        offered = request.offers(offered_header) if request else ()
        status, chosen = self._negotiate(request, upgrade, offered)
        self._standin.negotiated.append(Negotiation(
            kind=request.kind if request else "", method=self._request.method.decode("ascii", "replace"),
            upgrade=upgrade, offered=offered, status=status, protocol=chosen,
            user_agent=request.header("user-agent") if request else "",
        ))
        if status == 404:
            return self._respond(404, "no such endpoint")
        if status == 403:
            return self._respond(403, f"no supported protocol in {list(offered)}",
                                 [f"X-Accepted-Stream-Protocol-Versions: {', '.join(EXEC_PROTOCOLS + (PORT_FORWARD_PROTOCOL,))}"])
        if status == 400:
            return self._respond(400, f"upgrade {upgrade!r} with {list(offered)} is not supported here")
        log.info("kubelet stand-in upgraded kind={kind} protocol={protocol} pod={pod}",
                 kind=request.kind, protocol=chosen, pod=request.pod)
        if upgrade == "websocket":
            key = request.header("sec-websocket-key").encode("ascii", "replace")
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode("ascii")
            self._switch(["Upgrade: websocket", "Connection: Upgrade",
                          f"Sec-WebSocket-Accept: {accept}", f"Sec-WebSocket-Protocol: {chosen}"])
            self._session = _WebSocketSession(self, request, chosen)
        else:
            self._switch(["Connection: Upgrade", "Upgrade: SPDY/3.1", f"X-Stream-Protocol-Version: {chosen}"])
            self._session = _SpdySession(self, _handler_for(self, request, chosen), self.transport.write)
        self._session.start()
        if leftover:
            self.dataReceived(leftover)

    def _negotiate(self, request, upgrade, offered):
        """(HTTP status, chosen protocol): 101 on success."""
        if request is None:
            return 404, None
        if upgrade == "spdy/3.1":
            supported = (PORT_FORWARD_PROTOCOL,) if request.kind == "portforward" else EXEC_PROTOCOLS
            chosen = next((p for p in offered if p in supported), None)
            return (101, chosen) if chosen else (403, None)
        if upgrade == "websocket" and self._standin.websocket:
            wanted = WS_PORT_FORWARD_PROTOCOL if request.kind == "portforward" else WS_EXEC_PROTOCOL
            if wanted in offered and request.header("sec-websocket-key"):
                return 101, wanted
        return 400, None

    def dial(self, pod_port, forward_protocol):
        standin = self._standin
        local_port = standin.port_map.get(pod_port, pod_port)
        return connectProtocol(TCP4ClientEndpoint(standin.reactor, "127.0.0.1", local_port), forward_protocol)


async def create_attachable_pod(plane, name, namespace, node):
    """A Running pod with ATTACHABLE_CONTAINERS (``kubeenv.create_running_pod``
    cannot set ``stdin``/``tty``, which are immutable once the pod exists)."""
    containers = [dict(c) for c in ATTACHABLE_CONTAINERS]
    await plane.apply(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                                  "spec": {"nodeName": node, "containers": containers}}))
    running = [{"name": c["name"], "ready": True, "restartCount": 0, "image": "stand-in", "imageID": "",
                "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}} for c in containers]
    status = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                         "containerStatuses": running}}
    result = await plane.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
                                 "-p", json.dumps(status))
    if result.code != 0:
        raise RuntimeError(f"cannot mark pod {name} Running: {result.err}")


def _parse_request(request):
    """The endpoint of a kubelet request path, or None."""
    url = urlsplit(request.target.decode("ascii", "replace"))
    parts = url.path.strip("/").split("/")
    kind = {"exec": "exec", "attach": "attach", "portforward": "portforward", "portForward": "portforward"}.get(parts[0])
    if kind is None or len(parts) != (3 if kind == "portforward" else 4):
        return None
    headers = {}
    for name, value in request.headers:
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    return _Request(kind, parts[1], parts[2], parse_qs(url.query), headers)


def _handler_for(connection, request, chosen):
    if request.kind == "portforward":
        return _PortForward(connection, request)
    return _SpdyExec(connection, request, chosen)


# ---------------------------------------------------------------- SPDY


class _SpdySession:
    """
    The server side of a SPDY connection: replies to every SYN_STREAM at once,
    echoes pings, ignores SETTINGS and WINDOW_UPDATE; stream events go to
    ``handler``. ``write`` carries the encoded bytes (TLS, or WebSocket messages).
    """

    def __init__(self, connection, handler, write):
        self._connection = connection
        self._handler = handler
        self._write = write
        self._parser = FrameParser()
        self._encoder = FrameEncoder()
        self._last_stream_id = 0
        self._closed = False
        handler.spdy = self

    def start(self):
        self._handler.start()

    def feed(self, data):
        try:
            frames = self._parser.feed(data)
        except SpdyError as e:
            raise SessionError(f"bad SPDY: {e}") from e
        for frame in frames:
            if self._closed:
                return
            match frame:
                case SynStream(stream_id, headers, fin):
                    if stream_id <= self._last_stream_id or stream_id % 2 == 0:
                        self.send(RstStream(stream_id, RST_PROTOCOL_ERROR))
                        continue
                    self._last_stream_id = stream_id
                    self.send(SynReply(stream_id, {}))
                    self._handler.stream_opened(stream_id, headers)
                    if fin:
                        self._handler.stream_data(stream_id, b"", True)
                case Data(stream_id, payload, fin):
                    self._handler.stream_data(stream_id, payload, fin)
                case Ping(ping_id) if ping_id % 2 == 1:
                    self.send(Ping(ping_id))
                case RstStream(stream_id, _):
                    self._handler.stream_reset(stream_id)
                case GoAway():
                    self.close()

    def send(self, frame):
        if not self._closed:
            self._write(self._encoder.encode(frame))

    def send_data(self, stream_id, data=b"", fin=False):
        self.send(Data(stream_id, data, fin))

    def close(self):
        """GOAWAY, then end the connection (its pending writes are flushed first)."""
        if not self._closed:
            self.send(GoAway(self._last_stream_id))
            self._closed = True
            self._connection.end_session()

    def pause_output(self):
        self._handler.pause_output()

    def resume_output(self):
        self._handler.resume_output()

    def connection_lost(self):
        self._closed = True
        self._handler.connection_lost()


def _first(headers, name):
    values = headers.get(name, [])
    return values[0] if values else ""


class _SpdyExec:
    """exec/attach over SPDY: waits for the streams the query asked for, then runs the command."""

    def __init__(self, connection, request, protocol_version):
        self._connection = connection
        self._request = request
        self._json_status = protocol_version == "v4.channel.k8s.io"
        tty = request.flag("tty")
        self._expected = {ERROR}
        self._expected |= {STDIN} if request.flag("input") else set()
        self._expected |= {STDOUT} if request.flag("output") else set()
        self._expected |= {STDERR} if request.flag("error") and not tty else set()
        if tty and protocol_version in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            self._expected.add(RESIZE)
        self._streams = {}  # channel -> stream id
        self._channels = {}  # stream id -> channel
        self._command = None
        self._timeout = None
        self.spdy = None

    def start(self):
        self._timeout = self._connection._standin.reactor.callLater(STREAM_CREATION_TIMEOUT, self._streams_timed_out)

    def _streams_timed_out(self):
        log.info("kubelet stand-in: client did not open its streams in time")
        self.spdy.close()

    def stream_opened(self, stream_id, headers):
        channel = _STREAM_TYPES.get(_first(headers, "streamtype"))
        if channel is None or channel in self._streams:
            self.spdy.send(RstStream(stream_id, RST_PROTOCOL_ERROR))
            return
        self._streams[channel] = stream_id
        self._channels[stream_id] = channel
        if self._command is None and self._expected <= self._streams.keys():
            self._timeout.cancel()
            self._command = _command_for(self._connection, self._request, self)
            self._command.start()

    def stream_data(self, stream_id, data, fin):
        channel = self._channels.get(stream_id)
        if self._command is not None:
            self._command.client_data(channel, data, fin)

    def stream_reset(self, stream_id):
        if self._channels.get(stream_id) == STDIN and self._command is not None:
            self._command.client_data(STDIN, b"", True)

    def output(self, channel, data):
        stream_id = self._streams.get(channel)
        if stream_id is not None:
            self.spdy.send_data(stream_id, data)

    def finish(self, status):
        for channel in (STDOUT, STDERR):
            if channel in self._streams:
                self.spdy.send_data(self._streams[channel], fin=True)
        if self._json_status:
            payload = json.dumps(status).encode()
        else:
            payload = b"" if status["status"] == "Success" else status["message"].encode()
        self.spdy.send_data(self._streams[ERROR], payload, fin=True)
        self.spdy.close()

    def pause_output(self):
        if self._command is not None:
            self._command.pause()

    def resume_output(self):
        if self._command is not None:
            self._command.resume()

    def connection_lost(self):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self._command is not None:
            self._command.kill()


# ---------------------------------------------------------------- commands


class _ResizeDecoder:
    """Newline-delimited ``{"Width": w, "Height": h}`` objects, cut anywhere."""

    def __init__(self):
        self._pending = b""
        self._decoder = json.JSONDecoder()

    def feed(self, data):
        self._pending += data
        sizes = []
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if line.strip():
                sizes.append(self._size(line))
        if len(self._pending) > MAX_RESIZE_PENDING:
            raise SessionError("resize event too long")
        return sizes

    def flush(self):
        """A whole object without its newline (WebSocket messages carry one each)."""
        line, self._pending = self._pending, b""
        return [self._size(line)] if line.strip() else []

    @staticmethod
    def _size(line):
        try:
            event = json.loads(line)
            width, height = int(event.get("Width", 0)), int(event.get("Height", 0))
        except (ValueError, TypeError, AttributeError, RecursionError) as e:
            raise SessionError("bad resize event") from e
        if not (0 <= width < 2**16 and 0 <= height < 2**16):
            raise SessionError("resize out of range")
        return width, height


def _exit_status(code):
    """The v4/v5 metav1.Status kubectl reads the exit code from."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


@implementer(IPushProducer)
class _InputGate:
    """Registered on a consumer we write client bytes into: when it is full, stop reading the client."""

    def __init__(self, connection):
        self._connection = connection

    def pauseProducing(self):
        self._connection.hold_input(self)

    def resumeProducing(self):
        self._connection.release_input(self)

    def stopProducing(self):
        self._connection.release_input(self)


class _Command(protocol.ProcessProtocol):
    """One exec/attach: a local process wired to a session's channels (``session.output``/``finish``)."""

    def __init__(self, connection, request, session):
        self._connection = connection
        self._request = request
        self._session = session
        self._tty = request.flag("tty")
        self._resizes = _ResizeDecoder()
        self._ended = False

    def start(self):
        try:
            self._connection._standin.spawn(self._request.query.get("command", []), self, self._tty)
        except OSError as e:
            self._ended = True
            self._session.finish({"metadata": {}, "status": "Failure", "message": str(e), "reason": "InternalError"})

    def connectionMade(self):
        self._stdin_gate = _InputGate(self._connection)
        self.transport.registerProducer(self._stdin_gate, True)
        if not self._request.flag("input") and not self._tty:
            self._close_stdin()

    def _close_stdin(self):
        # A writer with a paused producer would never close: stop being its producer first.
        self.transport.unregisterProducer()
        self._stdin_gate.stopProducing()
        self.transport.closeStdin()

    def client_data(self, channel, data, fin, whole_message=False):
        if self._ended:
            return
        if channel == STDIN:
            if data:
                self.transport.write(data)
            if fin and self._tty:
                # A pty has no separate stdin to close: send EOF as the terminal would.
                self.transport.write(b"\x04")
            elif fin:
                self._close_stdin()
        elif channel == RESIZE:
            sizes = self._resizes.feed(data) + (self._resizes.flush() if whole_message else [])
            for width, height in sizes:
                self._resize(width, height)

    def _resize(self, width, height):
        if self._tty:
            _set_window_size(self.transport, width, height)

    def childDataReceived(self, fd, data):
        self._session.output(STDOUT if fd == 1 else STDERR, data)

    def processEnded(self, reason):
        self._ended = True
        if reason.check(error.ProcessDone):
            code = 0
        elif reason.value.exitCode is not None:
            code = reason.value.exitCode
        else:
            code = 128 + (reason.value.signal or 0)
        self._session.finish(_exit_status(code))

    def pause(self):
        if not self._ended:
            self.transport.pauseProducing()

    def resume(self):
        if not self._ended:
            self.transport.resumeProducing()

    def kill(self):
        if not self._ended:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


def _command_for(connection, request, session):
    """exec runs a new process; attach joins the container's main process."""
    return (_Attachment if request.kind == "attach" else _Command)(connection, request, session)


def _set_window_size(process_transport, width, height):
    fcntl.ioctl(process_transport.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


@implementer(IPushProducer)
class _MainProcess(protocol.ProcessProtocol):
    """A container's long-running main process, as a real kubelet's attach
    sees it: every attached session gets its output, any of them may write
    its stdin, and it outlives them. Output waits while any attached client
    is slow; all attached clients stop being read while its stdin is full."""

    def __init__(self, standin, key, tty):
        self._standin = standin
        self._key = key
        self._tty = tty
        self._attached: list[_Attachment] = []
        self._slow: set[_Attachment] = set()
        self._running = True
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def attach(self, attachment):
        self._attached.append(attachment)

    def detach(self, attachment):
        if attachment in self._attached:
            self._attached.remove(attachment)
            attachment.connection.release_input(self)
        self.output_resumed(attachment)

    def write(self, data):
        if self._running:
            self.transport.write(data)

    def resize(self, width, height):
        if self._running and self._tty:
            _set_window_size(self.transport, width, height)

    def childDataReceived(self, fd, data):
        for attachment in list(self._attached):
            attachment.output(STDOUT if fd == 1 else STDERR, data)

    def output_paused(self, attachment):
        if not self._slow and self._running:
            self.transport.pauseProducing()
        self._slow.add(attachment)

    def output_resumed(self, attachment):
        self._slow.discard(attachment)
        if not self._slow and self._running:
            self.transport.resumeProducing()

    # IPushProducer of the process's stdin
    def pauseProducing(self):
        for attachment in self._attached:
            attachment.connection.hold_input(self)

    def resumeProducing(self):
        for attachment in self._attached:
            attachment.connection.release_input(self)

    stopProducing = resumeProducing

    def processEnded(self, reason):
        """The container stopped: its attach sessions end (a kubelet attach reports
        no exit code), and the next attach starts it again."""
        self._running = False
        if self._standin.containers.get(self._key) is self:
            del self._standin.containers[self._key]
        for attachment in list(self._attached):
            attachment.container_ended()
        self.ended.callback(None)

    def kill(self):
        if self._running:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


class _Attachment:
    """One attach session on a container's main process; closing it detaches,
    it never stops the process (stdin is not ``stdinOnce``)."""

    def __init__(self, connection, request, session):
        self.connection = connection
        self._request = request
        self._session = session
        self._main = None
        self._resizes = _ResizeDecoder()

    def start(self):
        try:
            self._main = self.connection._standin.main_process(self._request, self._request.flag("tty"))
        except OSError as e:
            self._session.finish({"metadata": {}, "status": "Failure", "message": str(e), "reason": "InternalError"})
            return
        self._main.attach(self)

    def client_data(self, channel, data, fin, whole_message=False):
        if self._main is None:
            return
        if channel == STDIN and data:
            self._main.write(data)
        elif channel == RESIZE:
            for width, height in self._resizes.feed(data) + (self._resizes.flush() if whole_message else []):
                self._main.resize(width, height)

    def output(self, channel, data):
        self._session.output(channel, data)

    def container_ended(self):
        self._main = None
        self._session.finish(_exit_status(0))

    def pause(self):
        if self._main is not None:
            self._main.output_paused(self)

    def resume(self):
        if self._main is not None:
            self._main.output_resumed(self)

    def kill(self):
        """The client went away: detach."""
        if self._main is not None:
            self._main.detach(self)
            self._main = None


# ---------------------------------------------------------------- port-forward


class _PortForward:
    """Pairs error+data streams by requestid and relays each data stream to a local TCP port."""

    def __init__(self, connection, request):
        self._connection = connection
        self._request = request
        self._forwards = {}  # requestid -> _Forward
        self._by_stream = {}  # stream id -> (_Forward, streamtype)
        self.spdy = None

    def start(self):
        pass

    def stream_opened(self, stream_id, headers):
        kind, request_id = _first(headers, "streamtype"), _first(headers, "requestid")
        if kind not in ("error", "data"):
            self.spdy.send(RstStream(stream_id, RST_PROTOCOL_ERROR))
            return
        forward = self._forwards.get(request_id)
        if forward is None:
            forward = self._forwards[request_id] = _Forward(self, request_id, _first(headers, "port"))
        forward.streams[kind] = stream_id
        self._by_stream[stream_id] = (forward, kind)
        if forward.streams.keys() == {"error", "data"}:
            forward.dial()

    def stream_data(self, stream_id, data, fin):
        forward, kind = self._by_stream.get(stream_id, (None, None))
        if kind == "data":
            forward.from_client(data, fin)

    def stream_reset(self, stream_id):
        forward, _ = self._by_stream.get(stream_id, (None, None))
        if forward is not None:
            forward.abort()

    def done(self, forward):
        self._forwards.pop(forward.request_id, None)
        for stream_id in forward.streams.values():
            self._by_stream.pop(stream_id, None)

    def pause_output(self):
        for forward in self._forwards.values():
            forward.pause()

    def resume_output(self):
        for forward in self._forwards.values():
            forward.resume()

    def connection_lost(self):
        for forward in list(self._forwards.values()):
            forward.abort()


@implementer(IHalfCloseableProtocol)
class _Forward(protocol.Protocol):
    """One forwarded connection: the pod side is a real local socket."""

    def __init__(self, session, request_id, port):
        self._session = session
        self.request_id = request_id
        self._port = port
        self.streams = {}
        self._pending = []
        self._client_done = False
        self._finished = False

    def dial(self):
        port = int(self._port) if self._port.isdigit() else 0
        if not 0 < port < 65536:
            return self._fail(f"invalid port {self._port!r}")
        gate = _InputGate(self._session._connection)
        gate.pauseProducing()  # hold client bytes until the pod socket exists

        def failed(failure):
            gate.resumeProducing()
            self._fail(f"error forwarding port {port} to pod {self._session._request.pod}: {failure.getErrorMessage()}")

        d = self._session._connection.dial(port, self)
        d.addCallback(lambda _: gate.resumeProducing())
        d.addErrback(failed)

    def connectionMade(self):
        self._gate = _InputGate(self._session._connection)
        self.transport.registerProducer(self._gate, True)
        for data in self._pending:
            self.transport.write(data)
        self._pending = None
        if self._client_done:
            self._half_close()

    def _half_close(self):
        # A socket with a paused producer would never send its FIN: stop being its producer first.
        self.transport.unregisterProducer()
        self._gate.stopProducing()
        self.transport.loseWriteConnection()

    def from_client(self, data, fin):
        if self._pending is not None:
            self._pending.append(data)
            self._client_done = self._client_done or fin
            return
        if data:
            self.transport.write(data)
        if fin:
            self._half_close()

    def dataReceived(self, data):
        self._session.spdy.send_data(self.streams["data"], data)

    def readConnectionLost(self):
        self._session.spdy.send_data(self.streams["data"], fin=True)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self._finish()

    def _fail(self, message):
        log.info("kubelet stand-in port-forward failed error={error}", error=message)
        self._session.spdy.send_data(self.streams["error"], message.encode())
        self._finish()

    def _finish(self):
        if not self._finished:
            self._finished = True
            self._session.spdy.send_data(self.streams["data"], fin=True)
            self._session.spdy.send_data(self.streams["error"], fin=True)
            self._session.done(self)

    def abort(self):
        self._finished = True
        self._session.done(self)
        if self.transport is not None:
            self.transport.abortConnection()

    def pause(self):
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume(self):
        if self.transport is not None:
            self.transport.resumeProducing()


# ---------------------------------------------------------------- WebSocket


class _WebSocketSession:
    """
    Server side of RFC 6455 after our 101: v5 channel messages for exec/attach,
    or a SPDY port-forward byte stream carried in binary messages.
    """

    def __init__(self, connection, request, chosen):
        self._connection = connection
        self._request = request
        self._parser = WsFrameParser(expect_masked=True)
        self._assembler = MessageAssembler()
        self._closing = False
        if chosen == WS_PORT_FORWARD_PROTOCOL:
            self._inner = _SpdySession(connection, _PortForward(connection, request), self.send)
            self._on_message = self._inner.feed
        else:
            self._inner = _WsExec(connection, request, self)
            self._on_message = self._inner.message

    def start(self):
        self._inner.start()

    def feed(self, data):
        try:
            messages = [m for frame in self._parser.feed(data) for m in self._assembler.feed(frame)]
        except WebSocketError as e:
            raise SessionError(f"bad WebSocket: {e}") from e
        for message in messages:
            if self._closing:
                return
            if message.opcode == OP_PING:
                self._connection.transport.write(encode_frame(OP_PONG, message.payload, mask=None))
            elif message.opcode == OP_CLOSE:
                self.close()
            elif message.opcode == OP_BINARY:
                self._on_message(message.payload)
            elif message.opcode != OP_PONG:
                raise SessionError("text messages are not part of these protocols")

    def send(self, payload):
        if not self._closing:
            self._connection.transport.write(encode_frame(OP_BINARY, payload, mask=None))

    def close(self):
        if not self._closing:
            self._connection.transport.write(encode_frame(OP_CLOSE, encode_close(CLOSE_NORMAL), mask=None))
            self._closing = True
            self._connection.end_session()

    def pause_output(self):
        self._inner.pause_output()

    def resume_output(self):
        self._inner.resume_output()

    def connection_lost(self):
        self._closing = True
        self._inner.connection_lost()


class _WsExec:
    """v5.channel.k8s.io: one channel byte + payload per binary message; ``[0xFF, ch]`` closes a channel."""

    def __init__(self, connection, request, websocket):
        self._request = request
        self._websocket = websocket
        self._command = _command_for(connection, request, self)

    def start(self):
        writable = [c for c, flag in ((STDOUT, "output"), (STDERR, "error")) if self._request.flag(flag)]
        self._websocket.send(bytes([min(writable, default=ERROR)]))
        self._command.start()

    def message(self, payload):
        if len(payload) == 2 and payload[0] == _WS_CLOSE_CHANNEL:
            if payload[1] == STDIN:
                self._command.client_data(STDIN, b"", True)
        elif payload and payload[0] in (STDIN, RESIZE):
            self._command.client_data(payload[0], payload[1:], False, whole_message=True)

    def output(self, channel, data):
        self._websocket.send(bytes([channel]) + data)

    def finish(self, status):
        self._websocket.send(bytes([ERROR]) + json.dumps(status).encode())
        self._websocket.close()

    def pause_output(self):
        self._command.pause()

    def resume_output(self):
        self._command.resume()

    def connection_lost(self):
        self._command.kill()
