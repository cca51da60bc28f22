"""The Auth service as a Twisted service: storage, CAs, the mTLS API listener,
and the admin identity that tctl uses on the auth host."""
from __future__ import annotations

import ipaddress
import os
import socket
from weakref import WeakKeyDictionary

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from teleport_py.auth.api import AuthAPI, BoundedRequest
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.auth.services.common import load_public_key
from teleport_py.auth.services.access_requests import EXPIRY_INTERVAL
from teleport_py.auth.storage import open_backend, recordings_dir
from teleport_py.config import Config
from teleport_py.identityfile import IdentityFile
from teleport_py.lifecycle import Listener, RoleService, Step, finish_http
from teleport_py.limits import LimitedTLSFactory, limit_http
from teleport_py.pki import (
    AUTH_SERVER_NAME,
    HostIdentity,
    certificate_pem,
    generate_private_key,
    make_private_dirs,
    server_tls_options,
    RenewableServerCreator,
)
from teleport_py.renewal import HostCertRenewal

ADMIN_IDENTITY_REFRESH = 12 * 3600.0


def admin_identity_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "admin")


def _server_names(config: Config) -> tuple[list[str], list]:
    names = {AUTH_SERVER_NAME, "localhost", config.nodename, socket.gethostname()}
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    host = config.auth.listen_addr.host
    try:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified:
            ips.add(ip)
    except ValueError:
        if host:
            names.add(host)
    return sorted(n for n in names if n), sorted(ips, key=str)


class AuthService(RoleService):
    """Storage, CAs, the admin identity's refresh, the API listener and its
    certificate's renewal, in that order (stopped in reverse: the listener drains first, the backend
    closes last). ``auth`` is the AuthServer once ``ready`` has fired (the
    all-in-one runner hands it to an in-process proxy)."""

    role = name = "auth"

    def __init__(self, reactor, config: Config):
        super().__init__(reactor, config.shutdown_timeout)
        self.config = config
        self.auth: AuthServer | None = None
        self.listener: Listener | None = None

    async def compose(self) -> None:
        data_dir = self.config.data_dir
        make_private_dirs(data_dir)
        # Closed by the "backend" step below, last, once the API has drained.
        backend = await open_backend(self.reactor, self.config.storage, data_dir, close_on_shutdown=False)
        await self.start_child(Step("backend", stop=backend.close))
        self.auth = await AuthServer.initialize(
            self.reactor, backend, self.config.cluster_name, shared_backend=self.config.storage.type == "etcd",
            host_cert_ttl=self.config.auth.host_cert_ttl, second_factor=self.config.auth.second_factor)
        # tctl on the auth host finds this identity through the data dir (as
        # Teleport's tctl does); rewritten now and regularly so it never
        # expires while auth runs.
        expiry = TimerService(EXPIRY_INTERVAL, self.expire_access_requests)
        expiry.clock, expiry.name = self.reactor, "access request expiry"
        await self.start_child(expiry)
        # Within a third of host_cert_ttl too, should that be short (tests of renewal).
        refresh = TimerService(min(ADMIN_IDENTITY_REFRESH, self.config.auth.host_cert_ttl / 3), self.write_admin_identity)
        refresh.clock, refresh.name = self.reactor, "admin identity"
        await self.start_child(refresh)
        key = generate_private_key()
        names, ips = _server_names(self.config)
        host = HostIdentity(f"auth-{self.config.nodename}", self.config.nodename, "auth", self.auth.cluster_name)
        cert = self.auth.authorities.issue_host_identity(
            key.public_key(), host.host_id, host.nodename, "auth", names, ips
        )
        tls = server_tls_options(
            cert, key,
            trusted_cas=[self.auth.user_ca.certificate, self.auth.host_ca.certificate],
            require_client_certificate=False,
        )
        # Our own certificate is renewed like every host's, issued here directly.
        renewal = HostCertRenewal(
            self.reactor, IdentityFile(cert, key, (self.auth.user_ca.certificate,), (self.auth.host_ca.certificate,)),
            request=lambda public_key: succeed({"cert": certificate_pem(self.auth.authorities.renew_host_identity(
                renewal.identity.certificate, host, load_public_key(public_key))).decode()}),
            on_renewed=lambda renewed: creator.use(renewed.certificate, renewed.private_key))
        creator = RenewableServerCreator(tls)
        recordings = Recordings(self.auth, recordings_dir(self.config.storage, self.config.data_dir))
        api = AuthAPI(self.auth, recordings, client_idle_timeout=self.config.auth.client_idle_timeout,
                      disconnect_expired_cert=self.config.auth.disconnect_expired_cert)
        site = Site(api, requestFactory=BoundedRequest, reactor=self.reactor)
        site.displayTracebacks = False
        site.noisy = False
        limits = self.config.connection_limits
        limit_http(site, limits)
        channels: WeakKeyDictionary = WeakKeyDictionary()  # each TLS connection -> its HTTP channel

        def serve(tls_transport):
            channels[tls_transport] = channel = site.buildProtocol(tls_transport.getPeer())
            return channel

        listen = self.config.auth.listen_addr
        self.listener = await self.start_child(Listener(
            self.reactor, serverFromString(self.reactor, listen.server_endpoint()),
            LimitedTLSFactory(self.reactor, limits, creator, serve),
            setting="auth_service.listen_addr", address=str(listen),
            finish=lambda connection: finish_http(channels.get(connection)),
        ))
        await self.start_child(renewal)
        self.log.info(
            "auth service for cluster {cluster} listening on {address}",
            cluster=self.auth.cluster_name, address=str(listen),
        )

    def expire_access_requests(self) -> Deferred:
        """Write down (and audit) access requests time has expired; a failure
        is logged and the next round tries again (a TimerService would stop)."""
        d = Deferred.fromCoroutine(self.auth.access_requests.expire_due())
        d.addErrback(lambda f: self.log.failure("expiring access requests failed", f))
        return d

    def write_admin_identity(self) -> None:
        key = generate_private_key()
        cert = self.auth.authorities.issue_host_identity(key.public_key(), f"admin-{self.config.nodename}", self.config.nodename, "admin")
        IdentityFile(cert, key, (self.auth.user_ca.certificate,), (self.auth.host_ca.certificate,)).save(
            admin_identity_dir(self.config.data_dir)
        )
