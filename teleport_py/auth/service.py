"""The Auth service as a Twisted service: storage, CAs, the mTLS API listener,
and the admin identity that tctl uses on the auth host."""
from __future__ import annotations

import ipaddress
import os
import socket

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Site

from teleport_py.auth.api import AuthAPI, BoundedRequest
from teleport_py.auth.recordings import Recordings
from teleport_py.auth.server import AuthServer
from teleport_py.backend import SQLiteBackend
from teleport_py.config import Config
from teleport_py.identityfile import IdentityFile
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


class AuthService(service.Service):
    """Starts asynchronously; ``ready`` fires with the AuthServer once the API
    listens (the all-in-one runner hands it to an in-process proxy)."""

    log = Logger()
    name = "auth"

    def __init__(self, reactor, config: Config):
        self.reactor = reactor
        self.config = config
        self.ready: Deferred = Deferred()
        self.auth: AuthServer | None = None
        self._port = None
        self._backend = None
        self._refresh = None

    def startService(self):
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    def _failed(self, failure):
        self.log.failure("auth service failed to start", failure)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)
        if self.reactor.running:
            self.reactor.stop()

    async def _start(self) -> AuthServer:
        data_dir = self.config.data_dir
        make_private_dirs(data_dir)
        self._backend = await SQLiteBackend.open(self.reactor, os.path.join(data_dir, "backend.sqlite"))
        self.auth = await AuthServer.initialize(self.reactor, self._backend, self.config.cluster_name)
        self.write_admin_identity()
        self._refresh = LoopingCall(self.write_admin_identity)
        self._refresh.clock = self.reactor
        self._refresh.start(ADMIN_IDENTITY_REFRESH, now=False).addErrback(
            lambda f: self.log.failure("admin identity refresh stopped", f)
        )
        key = generate_private_key()
        names, ips = _server_names(self.config)
        cert = self.auth.issue_host_identity(
            key.public_key(), f"auth-{self.config.nodename}", self.config.nodename, "auth", names, ips
        )
        tls = server_tls_options(
            cert, key,
            trusted_cas=[self.auth.user_ca.certificate, self.auth.host_ca.certificate],
            require_client_certificate=False,
        )
        recordings = Recordings(self.auth, os.path.join(self.config.data_dir, "session_recordings"))
        site = Site(AuthAPI(self.auth, recordings), requestFactory=BoundedRequest, reactor=self.reactor)
        site.displayTracebacks = False
        limits = self.config.connection_limits
        limit_http(site, limits)
        endpoint = serverFromString(self.reactor, self.config.auth.listen_addr.server_endpoint())
        self._port = await endpoint.listen(
            LimitedTLSFactory(self.reactor, limits, tls, lambda tls_transport: site.buildProtocol(tls_transport.getPeer())))
        self.log.info(
            "auth service for cluster {cluster} listening on {address}",
            cluster=self.auth.cluster_name, address=str(self.config.auth.listen_addr),
        )
        return self.auth

    def write_admin_identity(self) -> None:
        """tctl on the auth host finds this identity via the data dir, as
        Teleport's tctl does; it is rewritten regularly so it never expires
        while auth runs."""
        key = generate_private_key()
        cert = self.auth.issue_host_identity(key.public_key(), f"admin-{self.config.nodename}", self.config.nodename, "admin")
        IdentityFile(cert, key, (self.auth.user_ca.certificate,), (self.auth.host_ca.certificate,)).save(
            admin_identity_dir(self.config.data_dir)
        )

    def stopService(self):
        super().stopService()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        d = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self):
        if self._port is not None:
            await self._port.stopListening()
        if self._backend is not None:
            await self._backend.close()
