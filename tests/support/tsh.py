"""tsh against a fake proxy: the console script run as a real process, the
proxy's /webapi faked with twisted.web over TLS on 127.0.0.1.

The fake proxy signs with CAs it makes for each test, so tests see exactly
what tsh sends and stores.
"""
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from teleport_py.pki import (
    CertAuthority,
    HostIdentity,
    UserIdentity,
    certificate_pem,
    generate_private_key,
    identity_from_certificate,
    peer_certificate,
    server_tls_options,
)
from teleport_py.tsh.profile import ProfileStore
from tests.support.procs import run

TSH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".venv", "bin", "tsh")
CLUSTER = "example"


def utc_now():
    return datetime.now(timezone.utc).replace(microsecond=0)


class FakeProxyAPI(Resource):
    """Just enough of /webapi for tsh, with the semantics of docs/architecture.md."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        now = utc_now()
        self.user_ca = CertAuthority.generate("user", CLUSTER, now)
        self.host_ca = CertAuthority.generate("host", CLUSTER, now)
        self.passwords = {"alice": "correct horse"}
        self.signup_tokens = {"tok3n": "bob"}
        self.clusters = [
            {"name": "my-cluster", "labels": {"env": "prod", "region": "eu"}},
            {"name": "dev", "labels": {}},
        ]
        self.requests = []
        self.ping_callers = []
        self.reissues = 0
        self.approved_requests = {"req-1", "req-2"}

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        body = json.loads(request.content.read() or b"{}")
        self.requests.append((request.method, request.path, body))
        route = {
            (b"GET", b"/webapi/ping"): self.ping,
            (b"POST", b"/webapi/login"): self.login,
            (b"POST", b"/webapi/signup"): self.signup,
            (b"GET", b"/webapi/kube/clusters"): self.kube_clusters,
            (b"POST", b"/webapi/certs/reissue"): self.reissue,
        }.get((request.method, request.path))
        if route is None:
            return self.error(request, 404, "not found")
        return route(request, body)

    def error(self, request, status, message):
        request.setResponseCode(status)
        return json.dumps({"error": {"kind": "x", "message": message}}).encode()

    def issue(self, username, public_key_pem, ttl, kube_cluster="", not_after=None, access_requests=()):
        now = utc_now()
        expires = now + timedelta(seconds=ttl)
        if not_after is not None:
            expires = min(expires, not_after)
        identity = UserIdentity(username, ["access", "kube-access", *("role-" + r for r in access_requests)],
                                kube_cluster=kube_cluster, access_requests=access_requests,
                                teleport_cluster=CLUSTER, expires=expires)
        public_key = serialization.load_pem_public_key(public_key_pem.encode())
        cert = self.user_ca.issue_user_certificate(public_key, identity, now)
        return json.dumps({
            "cert": certificate_pem(cert).decode(),
            "cas": {"user": [certificate_pem(self.user_ca.certificate).decode()],
                    "host": [certificate_pem(self.host_ca.certificate).decode()]},
            "cluster_name": CLUSTER,
            "username": username,
            "expires": identity.expires.isoformat(),
        }).encode()

    def caller(self, request):
        cert = peer_certificate(request.channel.transport)
        if cert is None:
            return None
        return identity_from_certificate(cert, user_ca=self.user_ca.certificate, host_ca=None)

    def ping(self, request, body):
        self.ping_callers.append(self.caller(request))
        return json.dumps({"cluster_name": CLUSTER, "proxy_public_addr": ""}).encode()

    def login(self, request, body):
        if self.passwords.get(body.get("user")) != body.get("password"):
            return self.error(request, 403, "invalid credentials")
        return self.issue(body["user"], body["public_key"], body.get("ttl") or 12 * 3600)

    def signup(self, request, body):
        user = self.signup_tokens.pop(body.get("token"), None)
        if user is None:
            return self.error(request, 404, "sign-up token not found")
        self.passwords[user] = body["password"]
        return json.dumps({"user": user}).encode()

    def kube_clusters(self, request, body):
        if self.caller(request) is None:
            return self.error(request, 403, "login required")
        return json.dumps({"items": self.clusters}).encode()

    def reissue(self, request, body):
        caller = self.caller(request)
        if caller is None:
            return self.error(request, 403, "login required")
        if body["kube_cluster"] and body["kube_cluster"] not in {c["name"] for c in self.clusters}:
            return self.error(request, 404, "kubernetes cluster %r not found" % body["kube_cluster"])
        # Like Auth: a list sets the elevation (approved requests only), none keeps the caller's.
        access_requests = tuple(sorted(set(body.get("access_requests", caller.access_requests))))
        if not set(access_requests) <= self.approved_requests:
            return self.error(request, 403, "access request not approved")
        self.reissues += 1
        return self.issue(caller.username, body["public_key"], 3600, body["kube_cluster"], caller.expires,
                          access_requests)


class TshTestCase(TestCase):
    timeout = 120

    async def start_proxy(self):
        self.api = FakeProxyAPI()
        key = generate_private_key()
        now = utc_now()
        cert = self.api.host_ca.issue_host_certificate(
            key.public_key(), HostIdentity("proxy", "proxy", "proxy", CLUSTER), now, now + timedelta(days=1),
            dns_names=["localhost", "*.teleport.cluster.local"], ip_addresses=["127.0.0.1"],
        )
        tls = server_tls_options(cert, key, trusted_cas=[self.api.user_ca.certificate], require_client_certificate=False)
        port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(Site(self.api))
        self.addCleanup(port.stopListening)
        self.proxy = "127.0.0.1:%d" % port.getHost().port

    async def _set_up(self):
        await self.start_proxy()
        self.root = Path(self.mktemp()).absolute()
        (self.root / "home").mkdir(parents=True)
        self.home = self.root / "tsh"
        self.kubeconfig = self.root / "kube" / "config"
        self.env = dict(
            os.environ,
            HOME=str(self.root / "home"),
            TELEPORT_HOME=str(self.home),
            KUBECONFIG=os.pathsep.join([str(self.kubeconfig), str(self.root / "other-kubeconfig")]),
            USER="alice",
            LOGNAME="alice",
        )

    def setUp(self):
        return Deferred.fromCoroutine(self._set_up())

    def tsh(self, *args, stdin=b"", env=None):
        return run([TSH, *args], env=env or self.env, stdin=stdin, timeout=60)

    async def login(self, *extra):
        result = await self.tsh("login", "--proxy=" + self.proxy, "--user=alice", "--insecure", *extra,
                                stdin=b"correct horse\n")
        self.assertEqual(result.code, 0, result.err)
        return result

    def store(self):
        return ProfileStore(self.home)
