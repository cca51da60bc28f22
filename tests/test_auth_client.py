"""AuthClient against real sockets: it never waits forever on a silent server,
and recording chunks travel raw (the JSON form older agents send still works)."""
import base64
import json

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel
from treq.client import HTTPClient

from teleport_py.auth.api import MAX_BODY, AuthAPI, BoundedRequest
from teleport_py.auth.client import AuthClient
from teleport_py.auth.errors import AlreadyExists, BadParameter
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from tests.support.recordings import BODY, KUBE, SID, START


class Silent(Protocol):
    """Accepts the connection and the request, answers nothing."""


class AgentCallerAPI(AuthAPI):
    """The API as the kube agent KUBE calls it; TLS, which decides that in
    the service, is tested end to end."""

    def caller(self, request):
        return KUBE


class AuthClientTests(TestCase):
    def test_call_times_out(self):
        async def go():
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
            self.addCleanup(port.stopListening)
            client = AuthClient(HTTPClient(Agent(reactor)), f"http://127.0.0.1:{port.getHost().port}", timeout=0.2)
            with self.assertRaises(ResponseNeverReceived):
                await client.ping()

        return defer.Deferred.fromCoroutine(go())

    async def _agent_client(self) -> tuple[AuthClient, MemoryBackend, Recordings]:
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        auth = await AuthServer.initialize(reactor, backend, "example")
        recordings = Recordings(auth, self.mktemp(), run_blocking=defer.maybeDeferred)
        site = Site(AgentCallerAPI(auth, recordings), requestFactory=BoundedRequest)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        http = HTTPClient(Agent(reactor))
        return AuthClient(http, f"http://127.0.0.1:{port.getHost().port}"), backend, recordings

    def test_recording_chunks_are_raw_resumable_and_bounded(self):
        async def go():
            client, backend, recordings = await self._agent_client()
            self.assertEqual(await client.upload_recording(SID, 0, START, False), len(START))
            self.assertEqual(await client.upload_recording(SID, 0, START, False), len(START))  # a retry
            with self.assertRaises(AlreadyExists) as wrong:
                await client.upload_recording(SID, len(START) + 1, BODY, False)
            self.assertEqual(wrong.exception.details["size"], len(START))
            with self.assertRaises(BadParameter):
                await client.upload_recording(SID, len(START), b"x" * (MAX_BODY + 1), False)
            self.assertEqual(await client.recording_stored(SID), len(START))
            # An agent from before raw chunks: JSON, base64 data.
            legacy = {"offset": len(START), "data": base64.b64encode(BODY).decode(), "final": True}
            self.assertEqual((await client.call("POST", f"recordings/{SID}/chunks", legacy))["size"],
                             len(START) + len(BODY))
            self.assertEqual(recordings.files.read(SID, 0, MAX_BODY), START + BODY)
            meta = json.loads((await backend.get(f"/recording_meta/{SID}")).value)
            self.assertEqual((meta["size"], meta["complete"]), (len(START) + len(BODY), True))

        return defer.Deferred.fromCoroutine(go())

    def test_raw_bodies_only_where_a_handler_takes_them(self):
        async def go():
            client, _, _ = await self._agent_client()
            with self.assertRaises(BadParameter):
                await client.call("POST", "heartbeats/kube", content=b'{"resource": {}}')
            with self.assertRaises(BadParameter):
                await client.call("POST", f"recordings/{SID}/chunks", params={"offset": "zero"}, content=START)

        return defer.Deferred.fromCoroutine(go())

    def test_request_bodies_stay_in_memory_and_bounded(self):
        request = BoundedRequest(DummyChannel())
        request.gotLength(10 * MAX_BODY)  # Twisted would spool this to a temporary file
        for _ in range(3):
            request.handleContentChunk(b"x" * (MAX_BODY // 2 + 7))
        self.assertEqual(request.content.getvalue(), b"x" * (MAX_BODY + 1))
