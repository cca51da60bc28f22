"""The browser terminal's wire formats, sans-IO: both WebSocket handshakes
of a web exec and the messages a browser may send.

The browser speaks Kubernetes' own exec protocol, ``v5.channel.k8s.io``
(binary messages: a channel byte and its bytes; 0 stdin, 1 stdout, 2
stderr, 3 the exit Status, 4 resize events, ``[255, 0]`` closes stdin), to
the proxy's web port. The proxy checks every message here and sends it on to
the agent as an exec of its own (``web.terminal_relay``), so the agent
authorizes, audits and records it as it does kubectl's. Only stdin, resize
events and the stdin close may come from a browser; a resize is re-encoded
from its parsed numbers, so the agent sees exactly what was checked.

Everything is bounded: a browser message (64 KiB), a resize (4 KiB), the
agent's answer head (16 KiB) and a refusal's body (64 KiB), an agent's
message (1 MiB).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from urllib.parse import quote, urlencode

import attrs
import h11

from teleport_py.websocket import (
    OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, FrameParser, Message, MessageAssembler, WebSocketError, parse_close,
)

SUBPROTOCOL = "v5.channel.k8s.io"
#: What the proxy offers the agent, best first: v4 lacks only the stdin close.
AGENT_SUBPROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_STREAM = 0, 1, 2, 3, 4, 255
MAX_BROWSER_MESSAGE = 64 * 1024
MAX_RESIZE = 4096
MAX_AGENT_MESSAGE = 1024 * 1024
MAX_ANSWER_HEAD = 16 * 1024
MAX_REFUSAL_BODY = 64 * 1024
MAX_COMMAND_ARGS, MAX_COMMAND_BYTES = 64, 8192
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Kubernetes names: a namespace or container is a DNS-1123 label, a pod a subdomain.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class TerminalProtocolError(WebSocketError):
    """Bytes or a handshake the web terminal does not accept; the one error raised here."""


def accept_key(key: str) -> str:
    """RFC 6455's Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode("ascii")


def _tokens(value: bytes | None) -> list[str]:
    return [t.strip().lower() for t in (value or b"").decode("latin-1").split(",") if t.strip()]


def browser_upgrade_key(header) -> str:
    """The Sec-WebSocket-Key of a browser's upgrade request whose headers
    ``header(name)`` gives, once the request is a WebSocket upgrade of
    version 13 offering ``v5.channel.k8s.io``."""
    if "websocket" not in _tokens(header(b"upgrade")) or "upgrade" not in _tokens(header(b"connection")):
        raise TerminalProtocolError("the terminal needs a WebSocket upgrade")
    if (header(b"sec-websocket-version") or b"").strip() != b"13":
        raise TerminalProtocolError("only WebSocket version 13 is spoken")
    if SUBPROTOCOL not in _tokens(header(b"sec-websocket-protocol")):
        raise TerminalProtocolError(f"the terminal speaks the WebSocket subprotocol {SUBPROTOCOL}")
    key = (header(b"sec-websocket-key") or b"").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise TerminalProtocolError("Sec-WebSocket-Key must be 16 bytes in base64") from None
    return key.decode("ascii")


def switching_protocols(key: str) -> bytes:
    """The 101 answering a browser's upgrade."""
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n").encode("ascii")


@attrs.frozen
class ExecTarget:
    """What a browser asked to run: checked as the API server would name it."""
    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        if not _LABEL.match(self.namespace):
            raise TerminalProtocolError("namespace: must be a Kubernetes name (a DNS-1123 label)")
        if not _SUBDOMAIN.match(self.pod):
            raise TerminalProtocolError("pod: must be a Kubernetes name (a DNS-1123 subdomain)")
        if self.container and not _LABEL.match(self.container):
            raise TerminalProtocolError("container: must be a Kubernetes name (a DNS-1123 label)")
        if not self.command or len(self.command) > MAX_COMMAND_ARGS or not all(self.command):
            raise TerminalProtocolError(f"command: 1 to {MAX_COMMAND_ARGS} non-empty words")
        if sum(len(a.encode("utf-8", "surrogatepass")) for a in self.command) > MAX_COMMAND_BYTES:
            raise TerminalProtocolError(f"command: at most {MAX_COMMAND_BYTES} bytes")
        if any("\x00" in a for a in self.command):
            raise TerminalProtocolError("command: no NUL characters")

    def path(self) -> str:
        """The exec's request target, as kubectl's ``exec -it`` sends it."""
        query = [("command", a) for a in self.command]
        if self.container:
            query.append(("container", self.container))
        query += [("stdin", "true"), ("stdout", "true"), ("tty", "true")]
        return (f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/{quote(self.pod, safe='')}/exec?"
                + urlencode(query, quote_via=quote))


def exec_request(target: ExecTarget, key: str, host: str = "kubernetes") -> bytes:
    """The proxy's WebSocket upgrade request for ``target`` to the agent."""
    return (f"GET {target.path()} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: teleport_py-web-terminal\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {', '.join(AGENT_SUBPROTOCOLS)}\r\n\r\n"
            ).encode("utf-8")


@attrs.frozen
class Switched:
    protocol: str
    #: Bytes after the 101's head: the first WebSocket frames.
    rest: bytes


@attrs.frozen
class Refused:
    status: int
    message: str


class UpgradeAnswer:
    """The agent's answer to ``exec_request``: ``feed`` returns None until it
    is decided, then a `Switched` (a valid 101 for our key, a protocol we
    offered) or a `Refused` with the Status message a person can read."""

    def __init__(self, key: str) -> None:
        self._accept = accept_key(key).encode("ascii")
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_HEAD)
        # h11 must see our request to expect its answer; the bytes are ours.
        self._h11.send(h11.Request(method="GET", target="/", headers=[
            ("Host", "kubernetes"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
        self._h11.send(h11.EndOfMessage())
        self._refusal: h11.Response | None = None
        self._body = bytearray()

    def feed(self, data: bytes) -> Switched | Refused | None:
        if not data:
            return None  # h11 reads b"" as the connection's end
        try:
            self._h11.receive_data(data)
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return None
                if event is h11.PAUSED:
                    return self._switched(self._h11.trailing_data[0])
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        self._head = event
                    continue
                if isinstance(event, h11.Response):
                    self._refusal = event
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > MAX_REFUSAL_BODY:
                        return self._refused()
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return self._refused()
        except h11.RemoteProtocolError as e:
            raise TerminalProtocolError(f"the agent's answer is not HTTP/1.1: {e}") from None

    def connection_lost(self) -> Refused:
        """The agent closed before deciding."""
        if self._refusal is not None:
            return self._refused()
        return Refused(502, "the Kubernetes service closed the connection before the exec started")

    def _switched(self, rest: bytes) -> Switched:
        headers = {name.lower(): value for name, value in self._head.headers}
        if headers.get(b"sec-websocket-accept", b"").strip() != self._accept:
            raise TerminalProtocolError("the agent's 101 has a wrong Sec-WebSocket-Accept")
        protocol = headers.get(b"sec-websocket-protocol", b"").strip().decode("latin-1")
        if protocol not in AGENT_SUBPROTOCOLS:
            raise TerminalProtocolError(f"the agent chose a subprotocol not offered: {protocol!r}")
        return Switched(protocol, bytes(rest))

    def _refused(self) -> Refused:
        status = self._refusal.status_code if self._refusal is not None else 502
        message = ""
        try:
            body = json.loads(bytes(self._body[:MAX_REFUSAL_BODY]))
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"]
        except ValueError:
            pass
        return Refused(status, message or f"the Kubernetes service answered HTTP {status}")


def parse_resize(payload: bytes) -> tuple[int, int]:
    """(width, height) of one resize event: a JSON object whose ``Width`` and
    ``Height`` (any case, as Go decodes them) are 0 to 65535."""
    if len(payload) > MAX_RESIZE:
        raise TerminalProtocolError("resize event too large")
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise TerminalProtocolError("resize event is not JSON") from None
    if not isinstance(value, dict):
        raise TerminalProtocolError("resize event must be an object")
    fields = {k.lower(): v for k, v in value.items()}
    size = []
    for name in ("width", "height"):
        v = fields.get(name)
        if type(v) is not int or not 0 <= v <= 0xFFFF:
            raise TerminalProtocolError(f"resize event: {name} must be an integer 0-65535")
        size.append(v)
    return size[0], size[1]


def resize_payload(width: int, height: int) -> bytes:
    return bytes([RESIZE]) + json.dumps({"Width": width, "Height": height}).encode("ascii")


class BrowserMessages:
    """The browser's side of a terminal WebSocket: masked frames in,
    messages out, each one the proxy may send on (stdin, a re-encoded resize,
    the stdin close) or a control message (ping, pong, close). Anything else
    raises `TerminalProtocolError`, and the parser stays failed."""

    def __init__(self) -> None:
        self._frames = FrameParser(expect_masked=True, max_payload=MAX_BROWSER_MESSAGE)
        self._messages = MessageAssembler(max_message_size=MAX_BROWSER_MESSAGE)

    def feed(self, data: bytes) -> list[Message]:
        try:
            return [self._checked(message) for message in _messages(self._frames, self._messages, data)]
        except TerminalProtocolError:
            raise
        except WebSocketError as e:
            raise TerminalProtocolError(str(e)) from None

    @staticmethod
    def _checked(message: Message) -> Message:
        if message.opcode in (OP_PING, OP_PONG):
            return message
        if message.opcode == OP_CLOSE:
            parse_close(message.payload)
            return message
        if message.opcode != OP_BINARY or not message.payload:
            raise TerminalProtocolError("the terminal takes binary channel messages only")
        channel = message.payload[0]
        if channel == STDIN:
            return message
        if channel == RESIZE:
            return Message(OP_BINARY, resize_payload(*parse_resize(message.payload[1:])))
        if channel == CLOSE_STREAM and message.payload == bytes([CLOSE_STREAM, STDIN]):
            return message
        raise TerminalProtocolError(f"a browser may not write channel {channel}")


class AgentMessages:
    """The agent's side: unmasked frames in, whole messages out (bounded)."""

    def __init__(self) -> None:
        self._frames = FrameParser(expect_masked=False, max_payload=MAX_AGENT_MESSAGE)
        self._messages = MessageAssembler(max_message_size=MAX_AGENT_MESSAGE)

    def feed(self, data: bytes) -> list[Message]:
        try:
            out = _messages(self._frames, self._messages, data)
            for message in out:
                if message.opcode == OP_CLOSE:
                    parse_close(message.payload)
                elif message.opcode not in (OP_PING, OP_PONG, OP_BINARY):
                    raise TerminalProtocolError("the exec stream carries binary channel messages only")
            return out
        except TerminalProtocolError:
            raise
        except WebSocketError as e:
            raise TerminalProtocolError(str(e)) from None


def _messages(frames: FrameParser, messages: MessageAssembler, data: bytes) -> list[Message]:
    out = []
    for frame in frames.feed(data):
        if frame.rsv:
            raise TerminalProtocolError("no WebSocket extension was negotiated")
        out += messages.feed(frame)
    return out


_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 408: "Timeout",
            503: "ServiceUnavailable"}


def status_message(message: str, code: int) -> bytes:
    """A Failure Status on the error channel: how the browser is told why
    its terminal did not start (or ended), in the form the exec's own exit
    status comes."""
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": message, "reason": _REASONS.get(code, "InternalError"), "code": code}
    return bytes([ERROR]) + json.dumps(status).encode("utf-8")
