"""The Proxy service against a real in-process Auth service, over real TLS on
127.0.0.1: web API relays, kube routing to fake agents, agents' auth streams."""
from __future__ import annotations

import json

import h2.config
import h2.connection
import h2.events
from datetime import datetime, timedelta, timezone

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import readBody

from teleport_py.pki import (
    UserIdentity,
    client_tls_options,
    generate_private_key,
    load_certificate_pem,
)
from teleport_py.tunnel import TunnelProtocol
from tests.support.proxy import KUBE_SERVER_NAME, Collect
from tests.support.proxy_service import ADMIN, PASSWORD, InProcessProxy, public_pem


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class FakeAgent:
    """A kube agent as the proxy sees it: a tunnel that announces clusters and echoes kube streams."""

    def __init__(self, auth, host_id: str):
        self.key = generate_private_key()
        self.cert = auth.authorities.issue_host_identity(self.key.public_key(), host_id, "node", "kube", ["localhost"])
        self.host_ca = auth.host_ca.certificate
        self.streams: list[dict] = []
        #: The proxy lists it sent (``discovery`` streams).
        self.discoveries: list[dict] = []

    def _accept(self, kind, metadata):
        if kind == "discovery":
            self.discoveries.append(metadata)
            return Protocol()
        self.streams.append(dict(metadata, kind=kind))
        return Echo()

    async def connect(self, port: int, clusters=("k8s",)):
        self.tunnel = TunnelProtocol(reactor, initiator=True, accept_stream=self._accept)
        options = client_tls_options(
            "127.0.0.1", trusted_cas=[self.host_ca], certificate=self.cert, private_key=self.key,
            alpn=[b"teleport-reversetunnel"],
        )
        await wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port)).connect(
            Factory.forProtocol(lambda: self.tunnel)
        )
        announced = {"clusters": [{"name": c, "labels": {"env": "test"}} for c in clusters]}
        await self.tunnel.open_stream("announce", announced, Protocol())
        return self

    async def disconnect(self):
        # TLS closes only once no producer is registered, and the tunnel registers itself.
        self.tunnel.transport.unregisterProducer()
        self.tunnel.transport.loseConnection()
        await self.tunnel.closed


class ProxyServiceTests(TestCase):
    timeout = 60

    async def setUp(self):
        running = await InProcessProxy.start(self)
        self.running = running
        self.auth_port, self.proxy_port, self.auth_service, self.proxy = (
            running.auth_port, running.proxy_port, running.auth_service, running.proxy)
        self.auth, self.host_ca, self.pool = running.auth, running.host_ca, running.pool
        self.http, self.url, self.request_json, self.heartbeat = (
            running.http, running.url, running.request_json, running.heartbeat)

    async def alice(self):
        return await self.running.add_user("alice")

    def user_cert(self, kube_cluster="k8s"):
        key = generate_private_key()
        now = datetime.now(timezone.utc).replace(microsecond=0)
        identity = UserIdentity("alice", ("kube-access",), kube_cluster=kube_cluster, teleport_cluster="example",
                                expires=now + timedelta(hours=1))
        return self.auth.user_ca.issue_user_certificate(key.public_key(), identity, now), key

    async def kubectl(self, pair, send=b"GET /api HTTP/1.1\r\nHost: k\r\n\r\n", alpn=(b"http/1.1",)):
        """Connect like kubectl, send, close our side after the first answer, return what came back."""
        cert, key = pair
        options = client_tls_options(KUBE_SERVER_NAME, trusted_cas=[self.host_ca], certificate=cert,
                                     private_key=key, alpn=list(alpn))
        client = Collect(send)
        client.dataReceived = lambda data: (setattr(client, "received", client.received + data),
                                            client.transport.loseConnection())
        await wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)).connect(
            Factory.forProtocol(lambda: client)
        )
        await client.done
        return client

    # -- web API ---------------------------------------------------------------

    async def test_ping(self):
        code, body = await self.request_json("GET", "/webapi/ping")
        self.assertEqual((code, body), (200, {"cluster_name": "example", "proxy_public_addr": f"127.0.0.1:{self.proxy_port}", "second_factor": "off"}))

    async def test_signup_login_reissue_and_kube_clusters(self):
        token = await self.alice()
        code, body = await self.request_json("POST", "/webapi/signup", {"token": token, "password": PASSWORD})
        self.assertEqual((code, body), (200, {"user": "alice"}))
        key = generate_private_key()
        code, body = await self.request_json("POST", "/webapi/login", {"user": "alice", "password": "wrong", "public_key": public_pem(key)})
        self.assertEqual((code, body["error"]["kind"]), (403, "access_denied"))
        code, login = await self.request_json("POST", "/webapi/login", {"user": "alice", "password": PASSWORD, "public_key": public_pem(key)})
        self.assertEqual(code, 200, login)
        cert = load_certificate_pem(login["cert"].encode())

        code, body = await self.request_json("GET", "/webapi/kube/clusters")
        self.assertEqual((code, body["error"]["kind"]), (403, "access_denied"))
        await self.heartbeat()
        code, body = await self.request_json("GET", "/webapi/kube/clusters", cert=cert, key=key)
        self.assertEqual((code, body), (200, {"items": [{"name": "k8s", "labels": {"env": "test"},
                                                          "kubernetes_users": ["alice"],
                                                          "kubernetes_groups": ["system:authenticated", "viewers"]}]}))
        code, body = await self.request_json("GET", "/webapi/whoami", cert=cert, key=key)
        self.assertEqual((code, body["user"]), (200, "alice"))

        new_key = generate_private_key()
        code, body = await self.request_json("POST", "/webapi/certs/reissue", {"public_key": public_pem(new_key), "kube_cluster": "k8s"}, cert=cert, key=key)
        self.assertEqual(code, 200, body)
        self.assertIn("1.3.9999.1.3", repr(load_certificate_pem(body["cert"].encode()).subject))

        events = await self.auth.audit.search(datetime.now(timezone.utc) - timedelta(minutes=5), datetime.now(timezone.utc) + timedelta(minutes=1), ["user.login"], 10)
        self.assertTrue(any(e.get("addr_remote", "").startswith("127.0.0.1:") for e in events), events)

    async def test_invite_form_sets_password(self):
        token = await self.alice()
        response = await self.http().get(self.url(f"/web/invite/{token}"))
        page = (await readBody(response)).decode()
        self.assertEqual(response.code, 200)
        self.assertIn('name="password"', page)
        response = await self.http().post(self.url(f"/web/invite/{token}"), data={"password": PASSWORD, "password_confirm": PASSWORD})
        self.assertEqual(response.code, 200, await readBody(response))
        code, _ = await self.request_json("POST", "/webapi/login", {"user": "alice", "password": PASSWORD, "public_key": public_pem(generate_private_key())})
        self.assertEqual(code, 200)

    async def test_unknown_endpoint_is_json_404(self):
        code, body = await self.request_json("GET", "/webapi/nope")
        self.assertEqual((code, body["error"]["kind"]), (404, "not_found"))

    # -- kube path -------------------------------------------------------------

    async def test_offline_cluster_answers_503_status(self):
        client = await self.kubectl(self.user_cert())
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
        status = json.loads(body)
        self.assertEqual((status["kind"], status["code"]), ("Status", 503))
        self.assertIn('kubernetes cluster "k8s" is offline', status["message"])

    async def kubectl_h2(self, pair):
        """kubectl with HTTP/2, as client-go talks when offered h2: one GET,
        everything read until the proxy hangs up; ``{stream: (status, body)}``."""
        cert, key = pair
        options = client_tls_options(KUBE_SERVER_NAME, trusted_cas=[self.host_ca], certificate=cert,
                                     private_key=key, alpn=[b"h2", b"http/1.1"])
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/api"), (b":scheme", b"https"),
                              (b":authority", b"k")], end_stream=True)
        client = Collect(conn.data_to_send())
        await wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)).connect(
            Factory.forProtocol(lambda: client))
        await client.done
        self.assertEqual(client.alpn, b"h2")
        heads, bodies = {}, {}
        for event in conn.receive_data(client.received):
            if isinstance(event, h2.events.ResponseReceived):
                heads[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
        return {sid: (code, json.loads(bodies[sid])) for sid, code in heads.items()}

    async def test_offline_cluster_answers_503_status_over_http2(self):
        answers = await self.kubectl_h2(self.user_cert())
        code, status = answers[1]
        self.assertEqual((code, status["kind"], status["code"]), (503, "Status", 503))
        self.assertIn('kubernetes cluster "k8s" is offline', status["message"])

    async def test_certificate_without_kube_cluster_answers_403_over_http2(self):
        answers = await self.kubectl_h2(self.user_cert(kube_cluster=""))
        self.assertEqual(answers[1][0], 403)
        self.assertIn("tsh kube login", answers[1][1]["message"])

    async def test_http2_is_relayed_with_its_protocol_named(self):
        agent = await FakeAgent(self.auth, "agent-1").connect(self.proxy_port)
        self.addCleanup(agent.disconnect)
        client = await self.kubectl(self.user_cert(), send=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                    alpn=(b"h2", b"http/1.1"))
        self.assertEqual(client.received, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        [stream] = agent.streams
        self.assertEqual(stream["alpn"], "h2")

    async def test_certificate_without_kube_cluster_answers_403(self):
        client = await self.kubectl(self.user_cert(kube_cluster=""))
        self.assertTrue(client.received.startswith(b"HTTP/1.1 403 "), client.received)

    async def test_routed_to_agent_and_relayed_both_ways(self):
        agent = await FakeAgent(self.auth, "agent-1").connect(self.proxy_port)
        self.addCleanup(agent.disconnect)
        client = await self.kubectl(self.user_cert(), send=b"ping over the tunnel")
        self.assertEqual(client.received, b"ping over the tunnel")
        [stream] = agent.streams
        self.assertEqual((stream["kind"], stream["kube_cluster"], stream["alpn"]), ("kube", "k8s", "http/1.1"))
        self.assertTrue(stream["client_addr"].startswith("127.0.0.1:"))
        self.assertEqual(load_certificate_pem(stream["user_cert"].encode()).subject.rfc4514_string().split(",")[-1], "CN=alice")

    async def test_an_agent_learns_the_proxies_from_their_heartbeats(self):
        """The proxy heartbeats itself to Auth and tells each agent that
        announces itself every live proxy, with the address to dial."""
        agent = await FakeAgent(self.auth, "agent-1").connect(self.proxy_port)
        self.addCleanup(agent.disconnect)
        while not agent.discoveries:
            await _tick()
        host_id = "proxy-proxy-test"
        self.assertEqual(agent.discoveries[-1], {"proxies": [{"name": host_id, "addr": f"127.0.0.1:{self.proxy_port}"}]})
        [stored] = await self.auth.resources.list(ADMIN, "proxy")
        self.assertEqual((stored["kind"], stored["metadata"]["name"], stored["spec"]["tunnel_addr"]),
                         ("proxy", host_id, f"127.0.0.1:{self.proxy_port}"))
        self.assertIn("expires", stored["metadata"])

    async def test_behind_a_load_balancer_the_certificate_names_it_and_agents_are_told_to_dial_it(self):
        """A proxy whose public_addr is a balancer: its host certificate
        carries the balancer's name (tsh and browsers verify it there), and
        its heartbeat gives agents the balancer as its tunnel address."""
        lb = "teleport-lb.example.com:3080"
        port = await self.running.another_proxy(self, public_addr=lb)
        names = self.running.second.identity.certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        self.assertIn("teleport-lb.example.com", names)
        # What tsh does after login: verify the web API against the host CA under the balancer's name.
        options = client_tls_options("teleport-lb.example.com", trusted_cas=[self.host_ca])
        tls = await wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port)).connect(
            Factory.forProtocol(Protocol))
        while tls.transport.getPeerCertificate() is None:
            await _tick()
        tls.transport.loseConnection()
        while True:
            listed = {p["spec"]["hostname"]: p for p in await self.auth.resources.list(ADMIN, "proxy")}
            if "proxy-test-2" in listed:
                break
            await _tick()
        self.assertEqual((listed["proxy-test-2"]["spec"]["tunnel_addr"], listed["proxy-test-2"]["spec"]["public_addr"]),
                         (lb, lb))

    async def listed_proxies(self) -> dict[str, dict]:
        """``tctl get proxies``: host id -> resource."""
        return {p["metadata"]["name"]: p for p in await self.auth.resources.list(ADMIN, "proxy")}

    async def test_tunnel_public_addr_is_what_agents_dial_and_a_clean_stop_says_goodbye(self):
        """proxy_service.tunnel_public_addr goes into the heartbeat (and the
        agents' list) as the tunnel address, public_addr stays what users
        reach. Stopped cleanly, the proxy drops its own record from Auth at
        once and tells its agents the list without it."""
        port = await self.running.another_proxy(self, public_addr="teleport-lb.example.com:443",
                                                tunnel_public_addr="tunnel.example.com:3024")
        second = "proxy-proxy-test-2"
        agent = await FakeAgent(self.auth, "agent-1").connect(port)
        self.addCleanup(agent.disconnect)
        while not agent.discoveries or second not in {p["name"] for p in agent.discoveries[-1]["proxies"]}:
            await _tick()
        told = {p["name"]: p["addr"] for p in agent.discoveries[-1]["proxies"]}
        self.assertEqual(told[second], "tunnel.example.com:3024")
        stored = (await self.listed_proxies())[second]["spec"]
        self.assertEqual((stored["tunnel_addr"], stored["public_addr"]),
                         ("tunnel.example.com:3024", "teleport-lb.example.com:443"))

        await self.running.second.stopService()
        # Gone from Auth now, not 30 s after its last heartbeat; the first proxy is still listed.
        self.assertEqual(sorted(await self.listed_proxies()), ["proxy-proxy-test"])
        while second in {p["name"] for p in agent.discoveries[-1]["proxies"]}:
            await _tick()
        self.assertEqual(agent.discoveries[-1],
                         {"proxies": [{"name": "proxy-proxy-test", "addr": f"127.0.0.1:{self.proxy_port}"}]})

    async def test_several_agents_share_a_cluster_and_disconnect_removes_one(self):
        first = await FakeAgent(self.auth, "agent-1").connect(self.proxy_port)
        second = await FakeAgent(self.auth, "agent-2").connect(self.proxy_port, clusters=("k8s", "other"))
        self.addCleanup(second.disconnect)
        self.assertEqual(len(self.proxy.registry.tunnels("k8s")), 2)
        # Streams stay open while the clients hold them, so least-streams spreads them.
        holders = []
        for _ in range(2):
            cert, key = self.user_cert()
            holder = Collect(b"hold")
            options = client_tls_options(KUBE_SERVER_NAME, trusted_cas=[self.host_ca], certificate=cert, private_key=key)
            await wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)).connect(Factory.forProtocol(lambda: holder))
            holders.append(holder)
            while holder.received != b"hold":
                await _tick()
        self.assertEqual((len(first.streams), len(second.streams)), (1, 1))
        for holder in holders:
            holder.transport.loseConnection()
            await holder.done
        await first.disconnect()
        while len(self.proxy.registry.tunnels("k8s")) != 1:
            await _tick()
        client = await self.kubectl(self.user_cert(), send=b"after")
        self.assertEqual(client.received, b"after")
        self.assertEqual(len(second.streams), 2)

    async def test_announce_with_bad_metadata_is_rejected(self):
        agent = await FakeAgent(self.auth, "agent-1").connect(self.proxy_port)
        self.addCleanup(agent.disconnect)
        from teleport_py.tunnel import StreamRejected

        with self.assertRaises(StreamRejected):
            await agent.tunnel.open_stream("announce", {"clusters": "k8s"}, Protocol())
        with self.assertRaises(StreamRejected):
            await agent.tunnel.open_stream("shell", {}, Protocol())

    async def test_agent_reaches_auth_through_an_auth_stream(self):
        """TLS from the agent to Auth, end to end through the proxy's splice."""
        agent = await FakeAgent(self.auth, "agent-1").connect(self.proxy_port)
        self.addCleanup(agent.disconnect)
        options = client_tls_options(
            "auth.teleport.cluster.local", trusted_cas=[agent.host_ca], certificate=agent.cert, private_key=agent.key
        )
        client = Collect(b"GET /v1/whoami HTTP/1.1\r\nHost: auth\r\nConnection: close\r\n\r\n")
        await wrapClientTLS(options, agent.tunnel.endpoint("auth", {})).connect(Factory.forProtocol(lambda: client))
        await client.done
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b'{"host_id": "agent-1", "system_role": "kube"}', body)  # Auth knew the agent by its certificate

    async def test_user_certificate_cannot_open_a_tunnel(self):
        cert, key = self.user_cert()
        options = client_tls_options("127.0.0.1", trusted_cas=[self.host_ca], certificate=cert, private_key=key,
                                     alpn=[b"teleport-reversetunnel"])
        client = Collect()
        await wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)).connect(Factory.forProtocol(lambda: client))
        await client.done
        self.assertEqual(len(self.proxy.registry), 0)


def _tick():
    d = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
