"""The Proxy service: its host identity, its one public port, and agents' tunnels.

Identity: in the all-in-one, the local AuthServer issues it directly; a
standalone proxy joins with a token, trusting Auth only once the host CA it
fetched matches ``teleport.ca_pin``, and keeps the identity in
``data_dir/proxy`` across restarts. Either way it then talks to Auth over
the same mutual-TLS HTTP API.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from weakref import WeakKeyDictionary

from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleport_py.auth.client import AuthClient, ClusterTLSPolicy
from teleport_py.auth.errors import AuthError
from teleport_py.config import Address, Config
from teleport_py.failover import FailoverEndpoint
from teleport_py.identityfile import IdentityFile
from teleport_py.lifecycle import Listener, RoleService, StartError, Step, finish_http, observe
from teleport_py.pki import (
    PROXY_SERVER_NAMES,
    HostIdentity,
    IdentityError,
    generate_private_key,
    identity_from_certificate,
    load_certificate_pem,
    load_certificates_pem,
    peer_certificate,
    server_tls_options,
)
from teleport_py.pinning import trusted_host_cas
from teleport_py.proxy.discovery import Hangup, ProxyDiscovery, proxy_resource
from teleport_py.proxy.kube import KubeRouter
from teleport_py.limits import LimitedTLSFactory, limit_http
from teleport_py.proxy.listener import ProxyConnectionCreator, Route, dispatch
from teleport_py.quiet import QuietHTTPConnectionPool, factory_for
from teleport_py.renewal import HostCertRenewal
from teleport_py.proxy.kube_search import KubeResourceSearch
from teleport_py.proxy.registry import AgentRegistry, AnnounceError, parse_announcement
from teleport_py.proxy.webapi import WebAPI, WebSite
from teleport_py.tunnel import Splice, StreamRejected, TunnelProtocol
from teleport_py.web.assets import Assets
from teleport_py.web.kube_client import WebKube
from teleport_py.web.sessions import WebSessions
from teleport_py.web.site import WebRoot
from teleport_py.web.ui import WebUI

log = Logger()

#: A stored identity closer than this to expiry is replaced by joining again.
RENEW_BEFORE = timedelta(hours=1)


class ProxyStartError(StartError):
    """The proxy cannot get an identity it can trust (bad pin, no token, ...)."""


def identity_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "proxy")


class AgentTunnels:
    """Serves agents' reverse tunnels (``Route.TUNNEL``): registers them and
    answers the streams they open."""

    def __init__(self, reactor, registry: AgentRegistry, host_ca, auth_endpoint, discovery: ProxyDiscovery):
        self._reactor = reactor
        self._registry = registry
        self._host_ca = host_ca
        self._auth_endpoint = auth_endpoint
        self._discovery = discovery

    def connection(self, tls_transport) -> TunnelProtocol | None:
        try:
            identity = identity_from_certificate(peer_certificate(tls_transport), user_ca=None, host_ca=self._host_ca)
        except IdentityError as e:
            identity, reason = None, str(e)
        else:
            reason = "only kubernetes services may open tunnels"
        if not isinstance(identity, HostIdentity) or identity.system_role != "kube":
            log.warn("tunnel refused peer={peer} reason={reason}", peer=tls_transport.getPeer(), reason=reason)
            return None
        tunnel = TunnelProtocol(
            self._reactor, initiator=False, accept_stream=lambda kind, metadata: self._accept(tunnel, kind, metadata)
        )
        self._registry.add(tunnel, identity)
        return tunnel

    def _accept(self, tunnel: TunnelProtocol, kind: str, metadata: dict):
        if kind == "announce":
            try:
                self._registry.announce(tunnel, parse_announcement(metadata))
            except AnnounceError as e:
                raise StreamRejected(f"invalid announce: {e}") from None
            # The agent learns every proxy of the cluster (after this stream is answered).
            self._reactor.callLater(0, self._discovery.send, tunnel)
            return Hangup()
        if kind == "auth":
            return self._relay_to_auth()
        raise StreamRejected(f"unknown stream kind {kind!r}")

    def _relay_to_auth(self) -> Protocol:
        """Raw bytes to Auth: the agent speaks TLS through us with its own certificate."""
        splice = Splice()

        def unreachable(failure: Failure) -> None:
            log.warn("auth server unreachable for an agent error={error}", error=failure.getErrorMessage())
            # The auth side never connected: closing it like a lost connection
            # aborts the stream, whether or not the stream is connected yet.
            splice.b.connectionLost(failure)

        self._auth_endpoint.connect(factory_for(splice.b)).addErrback(unreachable)
        return splice.a


class ProxyService(RoleService):
    """Its identity first, then (started in this order, stopped in reverse)
    its connections to Auth, agents' tunnels, the public port and the host
    certificate's renewal. Stopping
    first says goodbye (Auth drops our heartbeat, our agents get the proxy
    list without us and close their tunnels to us once their streams through
    them end), then drains the port: no new connections, web API connections close once
    their responses are out, kubectl connections are given until the
    deadline to end; only then are agents' tunnels dropped."""

    role = name = "proxy"

    def __init__(self, reactor, config: Config, local_auth=None):
        super().__init__(reactor, config.shutdown_timeout)
        self.config = config
        self.local_auth = local_auth
        self.registry = AgentRegistry()
        self.listener: Listener | None = None
        self.auth_client: AuthClient | None = None
        #: Browsers' sessions of the web UI (kept by Auth: any proxy honours them).
        self.web_sessions: WebSessions | None = None
        self.identity: IdentityFile | None = None
        self.renewal: HostCertRenewal | None = None
        #: Each routed connection (the TLS protocol) -> (route, its protocol).
        self._routes: WeakKeyDictionary = WeakKeyDictionary()

    @property
    def port(self):
        return self.listener.port if self.listener is not None else None

    async def compose(self) -> None:
        if self.local_auth is not None:
            auth_addresses, self.identity = await self._identity_from_local_auth()
        else:
            auth_addresses, self.identity = await self._joined_identity()
        # Calls to Auth, and agents' tunnels to it, go to whichever Auth server connects.
        auth_endpoint = FailoverEndpoint(self.reactor, [(a.connect_host(), a.port) for a in auth_addresses])
        identity = self.identity
        host = identity_from_certificate(identity.certificate, user_ca=None, host_ca=identity.host_cas[0])
        policy = ClusterTLSPolicy(identity.host_cas, identity.certificate, identity.private_key)
        pool = QuietHTTPConnectionPool(self.reactor, persistent=True)
        await self.start_child(Step("auth connections", stop=pool.closeCachedConnections))
        await self.start_child(Step("agent tunnels", stop=self.registry.disconnect_all))
        self.auth_client = AuthClient.failover(self.reactor, auth_endpoint, policy, pool)
        creator = self._connection_creator()
        renewal = HostCertRenewal(
            self.reactor, identity, request=lambda public_key: self.auth_client.renew_host_certificate(public_key),
            save=self._save_identity, on_renewed=lambda renewed: self._use_identity(renewed, creator, policy, pool))
        kube = KubeRouter(self.registry, identity.user_cas[0])
        public_addr = str(self._public_addr())
        discovery = ProxyDiscovery(
            self.reactor, self.auth_client,
            proxy_resource(host.host_id, self.config.nodename, str(self._tunnel_addr()), public_addr),
            self.registry.all_tunnels)
        tunnels = AgentTunnels(self.reactor, self.registry, identity.host_cas[0], auth_endpoint, discovery)
        assets = await Assets.load(self.reactor)
        api = WebAPI(self.auth_client, cluster_name=host.teleport_cluster, public_addr=public_addr,
                     user_ca=identity.user_cas[0], kube_search=KubeResourceSearch(self.reactor, self.registry),
                     invite_script=assets.script("invite"))
        self.web_sessions = WebSessions(self.reactor, self.auth_client)
        ui = WebUI(self.reactor, self.auth_client, self.web_sessions, assets,
                   user_ca=identity.user_cas[0], cluster_name=host.teleport_cluster, public_addr=public_addr,
                   kube=WebKube(self.reactor, self.registry, identity.user_cas[0]))
        site = WebSite(WebRoot(api, ui), reactor=self.reactor)
        site.displayTracebacks = False
        limits = self.config.connection_limits
        limit_http(site, limits)

        def choose(route: Route, tls_transport):
            if route is Route.KUBE:
                protocol = kube.connection(tls_transport)
            elif route is Route.TUNNEL:
                protocol = tunnels.connection(tls_transport)
            else:
                protocol = site.buildProtocol(tls_transport.getPeer())
            self._routes[tls_transport] = (route, protocol)
            return protocol

        # The first heartbeat leaves before the port listens, so agents mostly find us already
        # listed (an agent that gets a list without us closes our tunnel and dials us again once
        # a list names us).
        await self.start_child(Step("proxy heartbeat", start=discovery.start, stop=discovery.stop))
        listen = self.config.proxy.web_listen_addr
        self.listener = await self.start_child(Listener(
            self.reactor, serverFromString(self.reactor, listen.server_endpoint()),
            LimitedTLSFactory(self.reactor, limits, creator, dispatch(creator, choose)),
            setting="proxy_service.web_listen_addr", address=str(listen),
            finish=self._finish, waited_for=self._is_client,
        ))
        # Stopped before the port drains: Auth drops our record and our agents drop us now.
        await self.start_child(Step("proxy goodbye", stop=lambda: Deferred.fromCoroutine(discovery.goodbye())))
        self.renewal = await self.start_child(renewal)
        log.info(
            "proxy for cluster {cluster} listening on {address} host_id={host_id}",
            cluster=host.teleport_cluster, address=str(listen), host_id=host.host_id,
        )

    def _save_identity(self, identity: IdentityFile):
        """A joined proxy keeps its renewed identity on disk (off the reactor
        thread); the all-in-one's is issued afresh on every start."""
        if self.local_auth is not None:
            return None
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                 identity.save, identity_dir(self.config.data_dir))

    def _use_identity(self, identity: IdentityFile, creator: ProxyConnectionCreator, policy: ClusterTLSPolicy,
                      pool) -> None:
        """New connections (kubectl's, agents' tunnels, to Auth) get the renewed
        certificate; open ones keep theirs."""
        self.identity = identity
        creator.use_host_certificate(identity.certificate, identity.private_key,
                                     web=not self.config.proxy.https_keypairs)
        policy.certificate, policy.private_key = identity.certificate, identity.private_key
        pool.closeCachedConnections()

    def _finish(self, connection) -> None:
        route, protocol = self._routes.get(connection, (None, None))
        if route is Route.WEB:
            finish_http(protocol)

    def _is_client(self, connection) -> bool:
        """Everything but agents' tunnels, which stay up until clients are done."""
        return self._routes.get(connection, (None, None))[0] is not Route.TUNNEL

    def _connection_creator(self) -> ProxyConnectionCreator:
        identity = self.identity
        cert, key = identity.certificate, identity.private_key
        web_cert, web_key = self._https_keypair() or (cert, key)
        return ProxyConnectionCreator.from_options(
            web=server_tls_options(web_cert, web_key, trusted_cas=identity.user_cas, require_client_certificate=False),
            kube=server_tls_options(cert, key, trusted_cas=identity.user_cas, require_client_certificate=True),
            tunnel=server_tls_options(cert, key, trusted_cas=identity.host_cas, require_client_certificate=True),
            cluster_web=server_tls_options(cert, key, trusted_cas=identity.user_cas, require_client_certificate=False),
        )

    def _https_keypair(self):
        """The configured certificate browsers and tsh see on the web API (first pair)."""
        if not self.config.proxy.https_keypairs:
            return None
        key_file, cert_file = self.config.proxy.https_keypairs[0]
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_file, "rb") as f:
            cert = load_certificate_pem(f.read())
        return cert, key

    def _public_addr(self) -> Address:
        if self.config.proxy.public_addr:
            return self.config.proxy.public_addr[0]
        listen = self.config.proxy.web_listen_addr
        return Address(listen.connect_host(), listen.port)

    def _tunnel_addr(self) -> Address:
        """Where agents dial us for a tunnel: ``tunnel_public_addr``, else
        the public address (a load balancer in front of every proxy is fine:
        agents check which proxy they reached), else the address we listen
        on, else our nodename."""
        if self.config.proxy.tunnel_public_addr is not None:
            return self.config.proxy.tunnel_public_addr
        if self.config.proxy.public_addr:
            return self.config.proxy.public_addr[0]
        listen = self.config.proxy.web_listen_addr
        try:
            unspecified = ipaddress.ip_address(listen.host).is_unspecified
        except ValueError:
            unspecified = not listen.host
        return Address(self.config.nodename if unspecified else listen.host, listen.port)

    def _server_names(self) -> tuple[list[str], list]:
        """Names and IPs for the host certificate: kubectl's SNI name plus every name we are reached by."""
        names = {*PROXY_SERVER_NAMES, "localhost", self.config.nodename, socket.gethostname()}
        ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
        for address in (self.config.proxy.web_listen_addr, *self.config.proxy.public_addr):
            try:
                ip = ipaddress.ip_address(address.host)
            except ValueError:
                if address.host:
                    names.add(address.host)
            else:
                if not ip.is_unspecified:
                    ips.add(ip)
        return sorted(n for n in names if n), sorted(ips, key=str)

    def _host_id(self) -> str:
        return f"proxy-{self.config.nodename}"

    async def _identity_from_local_auth(self) -> tuple[Address, IdentityFile]:
        await observe(self.local_auth.ready)
        auth = self.local_auth.auth
        key = generate_private_key()
        names, ips = self._server_names()
        cert = auth.authorities.issue_host_identity(key.public_key(), self._host_id(), self.config.nodename, "proxy", names, ips)
        listen = self.config.auth.listen_addr
        identity = IdentityFile(cert, key, (auth.user_ca.certificate,), (auth.host_ca.certificate,))
        return (Address(listen.connect_host(), listen.port),), identity

    async def _joined_identity(self) -> tuple[tuple[Address, ...], IdentityFile]:
        config = self.config
        if not config.auth_servers:
            raise ProxyStartError("teleport.auth_server is required for a proxy without a local auth service")
        directory = identity_dir(config.data_dir)
        now = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        if IdentityFile.exists(directory):
            stored = IdentityFile.load(directory)
            if stored.expires - RENEW_BEFORE > now:
                log.info("proxy identity loaded from {directory}", directory=directory)
                return config.auth_servers, stored
        if not config.join_token:
            raise ProxyStartError("teleport.join_params.token_name is required to join the cluster")
        failures = []
        for auth_address in config.auth_servers:
            try:
                return config.auth_servers, await self._join(auth_address)
            except ProxyStartError:
                raise
            except Exception as failure:
                # The next Auth server must pass the same CA pin (or platform trust) check, so trying it is as safe.
                log.warn("joining through {address} failed: {error}", address=str(auth_address), error=str(failure))
                failures.append(f"{auth_address}: {failure}")
        raise ProxyStartError("could not join through any of teleport.auth_servers: " + "; ".join(failures))

    async def _join(self, auth_address: Address) -> IdentityFile:
        config = self.config
        directory = identity_dir(config.data_dir)
        host_cas = await trusted_host_cas(self.reactor, f"https://{auth_address}/v1/cas", config.ca_pins)
        client = AuthClient.direct(self.reactor, str(auth_address), trusted_cas=host_cas,
                                   pool=QuietHTTPConnectionPool(self.reactor, persistent=False))
        key = generate_private_key()
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        names, _ = self._server_names()
        host_id = f"proxy-{uuid.uuid4()}"
        try:
            answer = await client.join(config.join_token, "proxy", public_pem, host_id, config.nodename, names)
        except AuthError as e:
            raise ProxyStartError(
                f"the auth server at {auth_address} refused to join us: {e} "
                "(check teleport.join_params.token_name: tctl tokens add --type=proxy)"
            ) from None
        except Exception as e:
            raise ProxyStartError(f"cannot join through the auth server at {auth_address} (teleport.auth_server): {e}") from None
        cert = load_certificate_pem(answer["cert"].encode("ascii"))
        user_cas = tuple(load_certificates_pem("".join(answer["cas"]["user"]).encode("ascii")))
        identity = identity_from_certificate(cert, user_ca=None, host_ca=host_cas[0])
        if not isinstance(identity, HostIdentity) or identity.system_role != "proxy":
            raise ProxyStartError("the auth server issued a certificate that is not a proxy identity")
        stored = IdentityFile(cert, key, user_cas, host_cas)
        stored.save(directory)
        log.info("proxy joined cluster {cluster} as {host_id}", cluster=identity.teleport_cluster, host_id=host_id)
        return stored
