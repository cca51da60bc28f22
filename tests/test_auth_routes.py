"""Who may call which Auth endpoint: the route table in docs/auth-api.md is the
router's, and every route enforces it over real mutual TLS.

The routes come from the router itself (``AuthAPI.routes``), so a route added
without a row in the documented table fails here.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site
from treq.client import HTTPClient

from teleport_py.auth.api import CALLER_KINDS, AuthAPI, BoundedRequest
from teleport_py.auth.client import AuthClient, ClusterTLSPolicy
from teleport_py.auth.errors import AccessDenied, AuthError
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.backend import BackendUnavailableError, MemoryBackend
from teleport_py.pki import AUTH_SERVER_NAME, UserIdentity, generate_private_key, server_tls_options

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "auth-api.md")
#: A value for each ``*`` of a route, so that the allowed calls reach real work.
SAMPLE_ARGS = {"resources/*/*": ("role", "access")}


def documented_table() -> tuple[list[str], dict[str, frozenset]]:
    """The route table of docs/auth-api.md: its caller columns and, per
    ``METHOD /v1/path``, the callers marked ``yes``."""
    columns: list[str] = []
    rows: dict[str, frozenset] = {}
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("|"):
                continue
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if cells[0] == "endpoint":
                columns = cells[1:-1]
            elif columns and cells[0].startswith("`"):
                endpoint = cells[0].strip("`")
                if endpoint in rows:
                    raise AssertionError(f"{endpoint} documented twice")
                rows[endpoint] = frozenset(c for c, mark in zip(columns, cells[1:-1]) if mark == "yes")
    return columns, rows


def endpoint(route) -> str:
    return f"{route.method.decode()} /v1/{route.pattern}"


def concrete_path(pattern: str) -> str:
    values = iter(SAMPLE_ARGS.get(pattern, ()))
    return "/".join(next(values, "x") if part == "*" else part for part in pattern.split("/"))


def refusal(kind: str, route) -> str:
    who = {"none": "a caller without a client certificate", "user": "a user certificate"}.get(
        kind, f"a {kind} service certificate")
    return f"{who} may not call {endpoint(route)}"


class RouteTableTests(TestCase):
    async def _auth(self):
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        auth = await AuthServer.initialize(reactor, backend, "example")
        recordings = Recordings(auth, self.mktemp())
        return auth, AuthAPI(auth, recordings)

    async def test_documented_table_is_the_routers(self):
        _, api = await self._auth()
        columns, rows = documented_table()
        self.assertEqual(columns, list(CALLER_KINDS))
        self.assertEqual(sorted(rows), sorted(endpoint(r) for r in api.routes),
                         "every route needs a row in docs/auth-api.md, and every row a route")
        for route in api.routes:
            self.assertEqual(rows[endpoint(route)], route.callers, endpoint(route))

    async def test_every_route_with_every_kind_of_certificate(self):
        """Over real mutual TLS: no certificate, a user's, and each system
        role's. A caller the table leaves out gets 403 from the router; a
        caller it lists reaches the call itself (which may still refuse, on
        its own grounds, but never with the router's answer)."""
        auth, api = await self._auth()
        _, table = documented_table()
        site = Site(api, requestFactory=BoundedRequest)
        site.displayTracebacks = False
        now = datetime.fromtimestamp(reactor.seconds(), timezone.utc)
        server_key = generate_private_key()
        server_cert = auth.authorities.issue_host_identity(server_key.public_key(), "auth-test", "test", "auth", [AUTH_SERVER_NAME])
        tls = server_tls_options(server_cert, server_key, trusted_cas=[auth.user_ca.certificate, auth.host_ca.certificate],
                                 require_client_certificate=False)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(TLSMemoryBIOFactory(tls, False, site))
        self.addCleanup(port.stopListening)

        def client(certificate=None, key=None) -> AuthClient:
            pool = HTTPConnectionPool(reactor, persistent=True)
            self.addCleanup(pool.closeCachedConnections)
            policy = ClusterTLSPolicy([auth.host_ca.certificate], certificate, key)
            return AuthClient(HTTPClient(Agent(reactor, contextFactory=policy, pool=pool)),
                              f"https://127.0.0.1:{port.getHost().port}")

        clients = {"none": client()}
        key = generate_private_key()
        user = UserIdentity(username="alice", roles=("editor",), teleport_cluster="example",
                            expires=(now + timedelta(hours=1)).replace(microsecond=0))
        clients["user"] = client(auth.user_ca.issue_user_certificate(key.public_key(), user, now), key)
        for role in ("auth", "proxy", "kube", "admin"):
            key = generate_private_key()
            clients[role] = client(auth.authorities.issue_host_identity(key.public_key(), f"{role}-1", "test", role), key)
        self.assertEqual(sorted(clients), sorted(CALLER_KINDS))

        checked = 0
        for route in api.routes:
            method, path = route.method.decode(), concrete_path(route.pattern)
            for kind, caller in clients.items():
                body = None if method in ("GET", "DELETE") else {}
                try:
                    await caller.call(method, path, body)
                    answer: AuthError | None = None
                except AuthError as e:
                    answer = e
                where = f"{kind} -> {endpoint(route)}"
                if kind in table[endpoint(route)]:
                    self.assertFalse(answer is not None and answer.message == refusal(kind, route),
                                     f"{where}: the table allows it, the router refused it")
                else:
                    self.assertIsInstance(answer, AccessDenied, where)
                    self.assertEqual(answer.message, refusal(kind, route), where)
                checked += 1
        self.assertEqual(checked, len(api.routes) * len(CALLER_KINDS))

    async def test_an_agent_cannot_read_the_cluster_status(self):
        """The call itself refuses a kube agent too, not only the router."""
        from teleport_py.pki import HostIdentity

        auth, _ = await self._auth()
        kube = HostIdentity(host_id="agent-1", nodename="n", system_role="kube", teleport_cluster="example")
        with self.assertRaises(AccessDenied):
            await auth.status.read(kube)


class StorageUnavailableTests(TestCase):
    async def test_a_backend_that_cannot_answer_is_503_try_again(self):
        """etcd without a leader (BackendUnavailableError) is a 503 saying
        to try again, which tsh prints as one line; not a 500 'internal error'."""
        backend = MemoryBackend(reactor)
        self.addCleanup(backend.close)
        auth = await AuthServer.initialize(reactor, backend, "example")
        api = AuthAPI(auth, Recordings(auth, self.mktemp()))

        def unavailable(*args, **kwargs):
            raise BackendUnavailableError("etcd: etcdserver: leader changed (code 14)")

        self.patch(backend, "get", unavailable)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(api, requestFactory=BoundedRequest))
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await HTTPClient(Agent(reactor, pool=pool)).post(
            f"http://127.0.0.1:{port.getHost().port}/v1/join",
            json={"token": "t" * 32, "role": "kube", "public_key": "x", "host_id": "h", "nodename": "n"})
        body = json.loads(await response.content())
        self.assertEqual((response.code, body["error"]["kind"]), (503, "unavailable"))
        self.assertEqual(body["error"]["message"], "the auth server's storage is unavailable, try again later")
