"""AuthClient never waits forever on a silent server."""
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, ResponseNeverReceived
from treq.client import HTTPClient

from teleport_py.auth.client import AuthClient


class Silent(Protocol):
    """Accepts the connection and the request, answers nothing."""


class AuthClientTests(TestCase):
    def test_call_times_out(self):
        async def go():
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
            self.addCleanup(port.stopListening)
            client = AuthClient(HTTPClient(Agent(reactor)), f"http://127.0.0.1:{port.getHost().port}", timeout=0.2)
            with self.assertRaises(ResponseNeverReceived):
                await client.ping()

        return defer.Deferred.fromCoroutine(go())
