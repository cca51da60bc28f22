"""Small client-side helpers shared by the tests that drive real kubectl
sessions: a terminal for kubectl on a pty, and an echo checker; and a
blocking socket read to the end."""

import ssl

from twisted.internet import defer, protocol


class Terminal(protocol.ProcessProtocol):
    """kubectl on a pty, as a user's terminal runs it."""

    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class Collect(protocol.Protocol):
    """Sends ``payload`` and collects the answer until ``expected`` bytes
    (default: as many as were sent, i.e. the whole echo) arrived."""

    def __init__(self, payload, expected=None):
        self._payload = payload
        self._expected = len(payload) if expected is None else expected
        self.received = bytearray()
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self._payload)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self._expected and not self.done.called:
            self.transport.loseConnection()
            self.done.callback(bytes(self.received))

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


def kill_process(transport):
    """SIGKILL a spawned process if it is still there."""
    if transport.pid is not None:
        transport.signalProcess("KILL")


def read_until_closed(sock) -> bytes:
    """Everything a blocking socket (plain or ssl) receives until the peer
    closes it; a reset or a TLS error ends it too (what came first is kept)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data
