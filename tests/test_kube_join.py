"""Joining through the proxy's /webapi/join (a twisted.web stand-in over TLS on 127.0.0.1), and heartbeats."""
from __future__ import annotations

import functools
import json
import os
from datetime import timedelta

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from teleport_py.config import parse_config
from teleport_py.identityfile import IdentityFile
from teleport_py.kube.heartbeat import Heartbeat
from teleport_py.kube.join import JoinError, identity_dir, obtain_identity
from teleport_py.pinning import PinError
from teleport_py.pki import (
    PROXY_SERVER_NAMES,
    CertAuthority,
    HostIdentity,
    ca_pin,
    certificate_pem,
    generate_private_key,
    server_tls_options,
)
from teleport_py.resources import KubeServer, resource_from_dict
from tests.support.pki import HOST_CA, NOW, USER_CA, authority, host_pair, public_web_pair
from tests.support.proxy import proxy_creator


def proxy_cert(ca: CertAuthority = HOST_CA, names=PROXY_SERVER_NAMES):
    key = generate_private_key()
    identity = HostIdentity(host_id="proxy-web", nodename="proxy", system_role="proxy", teleport_cluster="example")
    return ca.issue_host_certificate(key.public_key(), identity, NOW, NOW + timedelta(hours=1), dns_names=names), key


WEB_CERT, WEB_KEY = proxy_cert()
#: The root public_web_pair's certificates chain to, put in the platform trust store (SSL_CERT_FILE).
PUBLIC_ROOT = authority("host", "test-public-root")


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class JoinStandIn(resource.Resource):
    """What the proxy relays to Auth's /v1/join, reduced to the contract."""

    isLeaf = True

    def __init__(self, token="secret-token", role="kube"):
        super().__init__()
        self.token, self.role, self.calls = token, role, []

    def render_GET(self, request):
        """/webapi/cas: the cluster's public CA certificates."""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"host": [certificate_pem(HOST_CA.certificate).decode()],
                           "user": [certificate_pem(USER_CA.certificate).decode()]}).encode()

    def render_POST(self, request):
        body = json.loads(request.content.read())
        self.calls.append(body)
        request.setHeader(b"content-type", b"application/json")
        if request.path != b"/webapi/join" or body["token"] != self.token:
            request.setResponseCode(403)
            return json.dumps({"error": {"message": "the join token is invalid"}}).encode()
        identity = HostIdentity(host_id=body["host_id"], nodename=body["nodename"], system_role=self.role,
                                teleport_cluster="example")
        cert = HOST_CA.issue_host_certificate(load_pem_public_key(body["public_key"].encode()), identity, NOW,
                                              NOW + timedelta(hours=1))
        return json.dumps({
            "cert": certificate_pem(cert).decode(),
            "cas": {"host": [certificate_pem(HOST_CA.certificate).decode()],
                    "user": [certificate_pem(USER_CA.certificate).decode()]},
            "cluster_name": "example",
        }).encode()


class JoinTests(TestCase):
    async def start(self, stand_in, cert=WEB_CERT, key=WEB_KEY):
        tls = server_tls_options(cert, key, require_client_certificate=False)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TLSMemoryBIOFactory(tls, False, server.Site(stand_in)))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def config(self, port, pin=None):
        self.data_dir = self.data_dir if hasattr(self, "data_dir") else os.path.abspath(self.mktemp())
        pin_line = f"  ca_pin: {pin}\n" if pin else ""
        return parse_config(
            f"teleport:\n  data_dir: {self.data_dir}\n  nodename: agent-node\n  proxy_server: 127.0.0.1:{port}\n"
            f"{pin_line}auth_service: {{enabled: false}}\nproxy_service: {{enabled: false}}\n"
            "kubernetes_service:\n  kubeconfig_file: /nonexistent\n")

    def test_join_once_then_reuse_saved_identity(self):
        async def go():
            stand_in = JoinStandIn()
            config = self.config(await self.start(stand_in), pin=ca_pin(HOST_CA.certificate))
            identity = await obtain_identity(reactor, config, "secret-token")
            (call,) = stand_in.calls
            self.assertEqual((call["role"], call["nodename"]), ("kube", "agent-node"))
            self.assertEqual(identity.host_cas, (HOST_CA.certificate,))
            self.assertEqual(identity.user_cas, (USER_CA.certificate,))
            key_path = os.path.join(identity_dir(self.data_dir), "key.pem")
            self.assertEqual(os.stat(key_path).st_mode & 0o777, 0o600)
            again = await obtain_identity(reactor, config, "secret-token")
            self.assertEqual(len(stand_in.calls), 1)  # never re-joins with a valid identity
            self.assertEqual(again.certificate, identity.certificate)
        return defer.Deferred.fromCoroutine(go())

    def test_wrong_ca_pin_refuses_and_saves_nothing(self):
        async def go():
            other = CertAuthority.generate("host", "example", NOW)
            stand_in = JoinStandIn()
            config = self.config(await self.start(stand_in), pin=ca_pin(other.certificate))
            with self.assertRaises(PinError) as e:
                await obtain_identity(reactor, config, "secret-token")
            self.assertIn("matches no teleport.ca_pin", str(e.exception))
            self.assertEqual(stand_in.calls, [])
            self.assertFalse(IdentityFile.exists(identity_dir(self.data_dir)))
        return defer.Deferred.fromCoroutine(go())

    def trust(self, *roots: CertAuthority) -> None:
        """The platform trust store is ``roots`` (through SSL_CERT_FILE) for this test."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"".join(certificate_pem(root.certificate) for root in roots))
        for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
            self.addCleanup(_restore_env, name, os.environ.get(name))
        os.environ["SSL_CERT_FILE"] = path
        os.environ["SSL_CERT_DIR"] = os.path.dirname(path)  # holds no hashed certificates

    async def start_public(self, stand_in, dns_names=("localhost",), ip_addresses=("127.0.0.1",)):
        """The stand-in with a publicly trusted web certificate (PUBLIC_ROOT) and,
        under the cluster's server name, its host certificate, as the proxy serves them."""
        web_cert, web_key = public_web_pair(dns_names, ip_addresses)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TLSMemoryBIOFactory(proxy_creator(web_cert, web_key), False, server.Site(stand_in)))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def test_no_ca_pin_joins_a_proxy_the_platform_trusts(self):
        """Without teleport.ca_pin the CAs are believed because the connection
        verified against the platform's trust store; the token goes only to the
        host CA's proxy certificate afterwards."""
        async def go():
            self.trust(PUBLIC_ROOT)
            stand_in = JoinStandIn()
            identity = await obtain_identity(reactor, self.config(await self.start_public(stand_in)), "secret-token")
            self.assertEqual(len(stand_in.calls), 1)
            self.assertEqual(identity.host_cas, (HOST_CA.certificate,))
            self.assertTrue(IdentityFile.exists(identity_dir(self.data_dir)))
        return defer.Deferred.fromCoroutine(go())

    def test_no_ca_pin_and_an_untrusted_certificate_refuses_to_join(self):
        """No trust on first use: a certificate the platform does not trust
        (here the cluster's own, and a public one from a root not in the store)."""
        async def go():
            self.trust(authority("host", "test-public-root", copy=1))
            cluster_cert, cluster_key = host_pair("proxy-web", "proxy")  # HOST_CA, for 127.0.0.1
            for start in (functools.partial(self.start, cert=cluster_cert, key=cluster_key), self.start_public):
                stand_in = JoinStandIn()
                config = self.config(await start(stand_in))
                with self.assertRaises(PinError) as e:
                    await obtain_identity(reactor, config, "secret-token")
                self.assertIn("no teleport.ca_pin", str(e.exception))
                self.assertIn("certificate verify failed", str(e.exception))
                self.assertNotIn("\n", str(e.exception))
                self.assertEqual(stand_in.calls, [])
                self.assertFalse(IdentityFile.exists(identity_dir(self.data_dir)))
        return defer.Deferred.fromCoroutine(go())

    def test_no_ca_pin_and_a_hostname_mismatch_refuses_to_join(self):
        """A trusted root's certificate for another name is not the proxy's."""
        async def go():
            self.trust(PUBLIC_ROOT)
            stand_in = JoinStandIn()
            config = self.config(await self.start_public(stand_in, dns_names=("proxy.example.com",), ip_addresses=()))
            with self.assertRaises(PinError) as e:
                await obtain_identity(reactor, config, "secret-token")
            self.assertIn("no teleport.ca_pin", str(e.exception))
            self.assertIn("127.0.0.1", str(e.exception))
            self.assertIn("the certificate is for another host name", str(e.exception))
            self.assertEqual(stand_in.calls, [])
        return defer.Deferred.fromCoroutine(go())

    def test_a_pin_ignores_the_platform_trust_store(self):
        """With a pin, behaviour is as before: a publicly trusted certificate
        does not replace the pin check."""
        async def go():
            self.trust(PUBLIC_ROOT)
            other = CertAuthority.generate("host", "example", NOW)
            stand_in = JoinStandIn()
            config = self.config(await self.start_public(stand_in), pin=ca_pin(other.certificate))
            with self.assertRaises(PinError) as e:
                await obtain_identity(reactor, config, "secret-token")
            self.assertIn("matches no teleport.ca_pin", str(e.exception))
            self.assertEqual(stand_in.calls, [])
        return defer.Deferred.fromCoroutine(go())

    def test_a_ca_answer_that_is_not_200_is_refused(self):
        """The CA certificates count only in a 200 answer, whatever its body."""
        async def go():
            stand_in = JoinStandIn()
            answer = stand_in.render_GET

            def failing(request):
                body = answer(request)
                request.setResponseCode(500)
                return body

            stand_in.render_GET = failing
            config = self.config(await self.start(stand_in), pin=ca_pin(HOST_CA.certificate))
            with self.assertRaises(PinError) as e:
                await obtain_identity(reactor, config, "secret-token")
            self.assertIn("HTTP 500", str(e.exception))
            self.assertEqual(stand_in.calls, [])
        return defer.Deferred.fromCoroutine(go())

    def test_token_is_never_sent_to_an_unproven_proxy(self):
        """A proxy whose certificate is not from the pinned CA (or does not carry
        the proxy's cluster name) never sees the token."""
        async def go():
            impostor_ca = CertAuthority.generate("host", "example", NOW)
            for cert, key in (proxy_cert(impostor_ca), proxy_cert(HOST_CA, names=("localhost",))):
                stand_in = JoinStandIn()
                port = await self.start(stand_in, cert, key)
                config = self.config(port, pin=ca_pin(HOST_CA.certificate))
                with self.assertRaises(JoinError):
                    await obtain_identity(reactor, config, "secret-token")
                self.assertEqual(stand_in.calls, [])
            self.assertFalse(IdentityFile.exists(identity_dir(self.data_dir)))
        return defer.Deferred.fromCoroutine(go())

    def test_refused_token_and_wrong_role(self):
        async def go():
            pin = ca_pin(HOST_CA.certificate)
            config = self.config(await self.start(JoinStandIn()), pin=pin)
            with self.assertRaises(JoinError) as e:
                await obtain_identity(reactor, config, "wrong-token")
            self.assertNotIn("wrong-token", str(e.exception))
            self.assertIn("403", str(e.exception))
            config = self.config(await self.start(JoinStandIn(role="proxy")), pin=pin)
            with self.assertRaises(JoinError):
                await obtain_identity(reactor, config, "secret-token")
            self.assertFalse(IdentityFile.exists(identity_dir(self.data_dir)))
        return defer.Deferred.fromCoroutine(go())

    def test_token_from_a_file(self):
        """token_name may be a path (the Helm chart mounts its Secret there)."""
        async def go():
            with self.assertRaises(JoinError) as e:
                await obtain_identity(reactor, self.config(1, pin=ca_pin(HOST_CA.certificate)), "/nonexistent/token")
            self.assertIn("token_name: cannot read the token file /nonexistent/token", str(e.exception))
            stand_in = JoinStandIn()
            config = self.config(await self.start(stand_in), pin=ca_pin(HOST_CA.certificate))
            path = os.path.abspath(self.mktemp())
            with open(path, "w") as f:
                f.write("secret-token\n")
            await obtain_identity(reactor, config, path)
            self.assertEqual(len(stand_in.calls), 1)
            self.assertEqual(stand_in.calls[0]["token"], "secret-token")
        return defer.Deferred.fromCoroutine(go())

    def test_missing_token(self):
        async def go():
            with self.assertRaises(JoinError):
                await obtain_identity(reactor, self.config(1), "")
        return defer.Deferred.fromCoroutine(go())


class HeartbeatTests(SynchronousTestCase):
    def test_heartbeats_every_interval_for_each_cluster_and_survive_failures(self):
        clock = Clock()
        sent = []

        async def send(resource):
            sent.append(resource)
            if len(sent) == 1:
                raise ConnectionError("auth unreachable")

        beat = Heartbeat(clock, send, [("c1", {"env": "dev"}), ("c2", {})], "host-1", "node", interval=30)
        beat.start()
        self.assertEqual(sent, [])  # no tunnel yet: nothing to send through
        clock.advance(10)
        beat.beat_now()  # the tunnel came up
        self.assertEqual([r["metadata"]["name"] for r in sent], ["c1", "c2"])
        clock.advance(29)
        self.assertEqual(len(sent), 2)  # the interval counts from the tunnel's heartbeat
        clock.advance(1)
        self.assertEqual(len(sent), 4)
        server = resource_from_dict(sent[0])
        self.assertIsInstance(server, KubeServer)
        self.assertEqual((server.cluster_name, dict(server.cluster_labels), server.host_id),
                         ("c1", {"env": "dev"}, "host-1"))
        beat.stop()
        clock.advance(60)
        self.assertEqual(len(sent), 4)

    def test_a_tunnel_up_before_the_start_heartbeats_at_the_start(self):
        clock = Clock()
        sent = []

        async def send(resource):
            sent.append(resource)

        beat = Heartbeat(clock, send, [("c1", {})], "host-1", "node", interval=30)
        beat.beat_now()
        self.assertEqual(sent, [])
        beat.start()
        self.assertEqual(len(sent), 1)
        beat.stop()

    def test_goodbye_stops_and_forgets_every_cluster(self):
        clock = Clock()
        sent, gone = [], []

        async def send(resource):
            sent.append(resource)

        async def goodbye(cluster):
            gone.append(cluster)
            if cluster == "c1":
                raise ConnectionError("auth unreachable")  # logged; c2 still gets its goodbye

        beat = Heartbeat(clock, send, [("c1", {}), ("c2", {})], "host-1", "node", interval=30)
        beat.start()
        beat.beat_now()
        self.successResultOf(defer.Deferred.fromCoroutine(beat.goodbye(goodbye)))
        self.assertEqual(gone, ["c1", "c2"])
        clock.advance(60)
        self.assertEqual(len(sent), 2)  # no heartbeat after the goodbye
