"""The Auth service as a Twisted service: storage, CAs, the mTLS API listener,
and the admin identity that tctl uses on the auth host."""
from __future__ import annotations

import ipaddress
import os
import socket
from weakref import WeakKeyDictionary

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from teleport_py.auth.api import AuthAPI, BoundedRequest
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.auth.services.access_requests import EXPIRY_INTERVAL
from teleport_py.auth.storage import open_backend, recordings_dir
from teleport_py.config import Config
from teleport_py.identityfile import IdentityFile
from teleport_py.lifecycle import Listener, RoleService, Step, finish_http
from teleport_py.limits import LimitedTLSFactory, limit_http
from teleport_py.pki import AUTH_SERVER_NAME, generate_private_key, make_private_dirs, server_tls_options

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
    """Storage, CAs, the admin identity's refresh and the API listener, in
    that order (stopped in reverse: the listener drains first, the backend
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
        backend = await open_backend(self.reactor, self.config.storage, data_dir)
        await self.start_child(Step("backend", stop=backend.close))
        self.auth = await AuthServer.initialize(
            self.reactor, backend, self.config.cluster_name, shared_backend=self.config.storage.type == "etcd",
            host_cert_ttl=self.config.auth.host_cert_ttl)
        # tctl on the auth host finds this identity through the data dir (as
        # Teleport's tctl does); rewritten now and regularly so it never
        # expires while auth runs.
        expiry = TimerService(EXPIRY_INTERVAL, self.expire_access_requests)
        expiry.clock, expiry.name = self.reactor, "access request expiry"
        await self.start_child(expiry)
        refresh = TimerService(ADMIN_IDENTITY_REFRESH, self.write_admin_identity)
        refresh.clock, refresh.name = self.reactor, "admin identity"
        await self.start_child(refresh)
        key = generate_private_key()
        names, ips = _server_names(self.config)
        cert = self.auth.authorities.issue_host_identity(
            key.public_key(), f"auth-{self.config.nodename}", self.config.nodename, "auth", names, ips
        )
        tls = server_tls_options(
            cert, key,
            trusted_cas=[self.auth.user_ca.certificate, self.auth.host_ca.certificate],
            require_client_certificate=False,
        )
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
            LimitedTLSFactory(self.reactor, limits, tls, serve),
            setting="auth_service.listen_addr", address=str(listen),
            finish=lambda connection: finish_http(channels.get(connection)),
        ))
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
