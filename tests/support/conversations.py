"""kubectl's remote command conversations, byte for byte, for the tests of
everything that observes or relays them: each direction's SPDY frames as our
encoder writes them."""
import json

from teleport_py import spdy
from teleport_py.remotecommand import CLIENT, SERVER

EXIT_3 = json.dumps({
    "metadata": {}, "status": "Failure",
    "message": "command terminated with non-zero exit code: exit status 3",
    "reason": "NonZeroExitCode",
    "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
}).encode()


class Conversation:
    """Records both directions of a SPDY session built with our encoder."""

    def __init__(self) -> None:
        self.encoders = {CLIENT: spdy.FrameEncoder(), SERVER: spdy.FrameEncoder()}
        self.chunks: list[tuple[str, bytes]] = []

    def send(self, direction: str, *frames: spdy.Frame) -> None:
        self.chunks.append((direction, b"".join(
            map(self.encoders[direction].encode, frames))))

    def open(self, stream_id: int, **headers: str) -> None:
        self.send(CLIENT, spdy.SynStream(stream_id, {k: [v] for k, v in headers.items()}))
        self.send(SERVER, spdy.SynReply(stream_id, {}))

    def joined(self, direction: str) -> bytes:
        return b"".join(data for side, data in self.chunks if side == direction)


def spdy_exec_conversation() -> Conversation:
    """kubectl exec -it (TTY) over SPDY v4: error, stdin, stdout, resize."""
    c = Conversation()
    c.open(1, streamtype="error")
    c.open(3, streamtype="stdin")
    c.open(5, streamtype="stdout")
    c.open(7, streamtype="resize")
    c.send(CLIENT, spdy.Data(7, b'{"Width":120,'))
    c.send(CLIENT, spdy.Data(7, b'"Height":40}\n{"Width":80,"Height":24}\n'))
    c.send(CLIENT, spdy.Ping(1))
    c.send(SERVER, spdy.Ping(1), spdy.Data(5, b"$ "))
    c.send(CLIENT, spdy.Data(3, b"exit 3\n"), spdy.Data(3, b"", fin=True))
    c.send(SERVER, spdy.Data(5, b"exit 3\r\n"), spdy.Ping(2))
    c.send(CLIENT, spdy.Ping(2))
    c.send(SERVER, spdy.Data(5, b"", fin=True),
           spdy.Data(1, EXIT_3[:20]), spdy.Data(1, EXIT_3[20:], fin=True),
           spdy.RstStream(1, spdy.RST_CANCEL), spdy.RstStream(3, spdy.RST_CANCEL),
           spdy.RstStream(7, spdy.RST_CANCEL), spdy.GoAway(7))
    c.send(CLIENT, spdy.Data(5, b"", fin=True))  # after the reset: ignored
    return c


def port_forward_conversation() -> Conversation:
    """Two local connections forwarded at once, their streams interleaved;
    the second fails on the pod side."""
    c = Conversation()
    c.open(1, streamtype="error", port="8080", requestid="0")
    c.send(CLIENT, spdy.Data(1, b"", fin=True))
    c.open(3, streamtype="data", port="8080", requestid="0")
    c.open(5, streamtype="error", port="5432", requestid="1")
    c.send(CLIENT, spdy.Data(3, b"GET / HTTP/1.1\r\n\r\n"))
    c.send(CLIENT, spdy.Data(5, b"", fin=True))
    c.open(7, streamtype="data", port="5432", requestid="1")
    c.send(SERVER, spdy.Data(3, b"HTTP/1.1 200 OK\r\n"))
    c.send(CLIENT, spdy.Data(7, b"\x00\x00\x00\x08"))
    c.send(SERVER, spdy.Data(5, b"error forwarding port 5432 to pod abc"),
           spdy.Data(5, b"", fin=True), spdy.Data(3, b"\r\n", fin=True))
    c.send(CLIENT, spdy.Data(3, b"", fin=True), spdy.RstStream(7, spdy.RST_CANCEL))
    c.send(SERVER, spdy.Data(1, b"", fin=True))
    return c
