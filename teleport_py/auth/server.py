"""The Auth service's state: one small service per resource, built over one
backend and sharing one authorizer and one audit log.

``AuthServer`` holds them and nothing else; it is transport-free. The HTTP
API (``api.py``) turns each request into a call on one of them with the
caller's identity, which comes from a verified client certificate and
nothing else, and each such call authorizes its caller itself.

Backend layout (values are JSON unless noted), by the service that keeps it::

    /authorities/{user,host}       CA certificate + private key (PEM)   services.authorities
    /roles/<name>                  role resource                        services.roles
    /users/<name>                  user resource                        services.users
    /passwords/<name>              scrypt hash (text)                   services.users
    /otp_devices/<name>            OTP secret + last step taken         services.otp_devices
    /usertokens/<token>            sign-up token {user, expires}        services.signup_tokens
    /tokens/<token>                join token resource (expires)        services.join_tokens
    /kube_servers/<cluster>/<host> heartbeat (expires with its TTL)     services.kube_servers
    /proxies/<host id>             proxy heartbeat (expires with its TTL) services.proxies
    /web_sessions/<sha256 of id>   web UI session (expires with its cert) services.web_sessions
    /access_requests/<id>          access_request resource              services.access_requests
    /locks/<id>                    lock resource (expires with it)      services.locks
    /events/...                    audit log                            audit (AuditLog)
    /recording_meta/...            session recordings' metadata         recordings
"""
from __future__ import annotations

from teleport_py.auth.audit import AuditLog
from teleport_py.auth.authorizer import Authorizer
from teleport_py.auth.ratelimit import LoginLimiter
from teleport_py.auth.services.access_requests import AccessRequests
from teleport_py.auth.services.audit_events import AuditEvents
from teleport_py.auth.services.authorities import CertificateAuthorities
from teleport_py.config import DEFAULT_HOST_CERT_TTL
from teleport_py.auth.services.cluster_status import ClusterStatus
from teleport_py.auth.services.join_tokens import JoinTokens
from teleport_py.auth.services.kube_servers import KubeServers
from teleport_py.auth.services.locks import Locks
from teleport_py.auth.services.otp_devices import OtpDevices
from teleport_py.auth.services.proxies import Proxies
from teleport_py.auth.services.resources import Resources
from teleport_py.auth.services.roles import Roles
from teleport_py.auth.services.signup_tokens import SignupTokens
from teleport_py.auth.services.user_certificates import UserCertificates
from teleport_py.auth.services.users import Users
from teleport_py.auth.services.web_sessions import WebSessionStore
from teleport_py.auth.shared_ratelimit import SharedLoginLimiter


class AuthServer:
    """Every service of one cluster's Auth, over one backend."""

    def __init__(self, reactor, backend, authorities: CertificateAuthorities, *, shared_backend: bool = False,
                 second_factor: str = "off"):
        """``shared_backend``: other Auth servers use ``backend`` too, so
        login limits keep their state there (``SharedLoginLimiter``).
        ``second_factor``: "off" or "otp" (``auth_service.authentication``)."""
        self.reactor = reactor
        self.backend = backend
        self.authorities = authorities
        self.audit = AuditLog(backend, reactor, authorities.cluster_name)
        self.roles = Roles(backend)
        self.authorizer = Authorizer(self.roles)
        self.users = Users(reactor, backend, self.authorizer, self.roles, SignupTokens(backend, reactor), self.audit,
                           OtpDevices(backend, reactor), second_factor)
        self.kube_servers = KubeServers(reactor, backend, self.authorizer, self.roles, self.users,
                                        authorities.cluster_name)
        self.proxies = Proxies(reactor, backend, self.authorizer)
        self.web_sessions = WebSessionStore(reactor, backend, self.authorizer, authorities)
        limiter = SharedLoginLimiter(reactor, backend) if shared_backend else LoginLimiter(reactor)
        self.locks = Locks(reactor, backend, self.authorizer, self.audit)
        self.access_requests = AccessRequests(
            reactor, backend, self.authorizer, self.roles, self.users, self.locks, self.audit, self.kube_servers,
            authorities.cluster_name)
        self.user_certificates = UserCertificates(
            reactor, self.authorizer, authorities, self.users, self.roles, self.kube_servers, self.access_requests,
            self.locks, self.audit, limiter)
        self.join_tokens = JoinTokens(reactor, backend, self.authorizer, authorities, self.audit)
        self.resources = Resources(backend, self.authorizer, self.roles, self.users, self.kube_servers, self.audit)
        self.events = AuditEvents(self.authorizer, self.audit)
        self.status = ClusterStatus(self.authorizer, authorities, self.users, self.roles, self.kube_servers)

    @classmethod
    async def initialize(cls, reactor, backend, cluster_name: str, *, shared_backend: bool = False,
                         host_cert_ttl: float = DEFAULT_HOST_CERT_TTL, second_factor: str = "off") -> "AuthServer":
        """Load the cluster's CAs (creating them on first start) and write the
        built-in roles that are not there yet."""
        authorities = await CertificateAuthorities.load_or_create(reactor, backend, cluster_name, host_cert_ttl)
        server = cls(reactor, backend, authorities, shared_backend=shared_backend, second_factor=second_factor)
        await server.roles.install_builtin()
        return server

    @property
    def cluster_name(self) -> str:
        return self.authorities.cluster_name

    @property
    def user_ca(self):
        return self.authorities.user_ca

    @property
    def host_ca(self):
        return self.authorities.host_ca
